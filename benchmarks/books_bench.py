"""Book audit speed: frames/s of the capture-books fold against a bare orjson.loads loop over
the same payloads, in the same process, rounds interleaved.

    uv run python benchmarks/books_bench.py [--run-dir D] [--rounds 5]

Without --run-dir it first records one: `capture --sim` for 30 s at 5,000 frames/s, 400
markets (800 tokens), 8 shards. Frames are read into memory once, so both loops see the same
payload objects and neither pays for disk; a third figure is the whole command, end to end
(reading the files, checksums, merge by receive time) for the same run. Writes
benchmarks/results/books_bench.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import REPO, bare_loads_seconds, machine, save

from pm_arb.book.rebuild import BookFold, Connect
from pm_arb.commands.books import _runlog_markers
from pm_arb.reader import open_run


def record(tmp: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pm_arb", "capture", "--sim", "--sim-rate", "5000", "--sim-markets", "400",
                    "--duration-seconds", "30", "--data-dir", str(tmp), "--run-id", "books"], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)
    return tmp / "runs" / "books"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pm_arb_books_") as tmp:
        run_dir = args.run_dir or record(Path(tmp))
        frames = [(r.shard, r.seq, r.rx_mono_ns, r.rx_wall_ns_utc, r.flags, r.payload) for r in open_run(run_dir).frames()]
        markers, _ = _runlog_markers(run_dir, False)
        connects = [m for m in markers if isinstance(m, Connect)]
        payloads = [f[5] for f in frames]
        bare, audit = [], []
        for _ in range(args.rounds):
            bare.append(bare_loads_seconds(payloads))
            t = time.perf_counter()
            fold = BookFold()
            for c in connects:
                fold.connect(c)
            feed = fold.frame
            for f in frames:
                feed(*f)
            result = fold.result()
            audit.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pm_arb", "capture-books", "--run-dir", str(run_dir), "--json"], cwd=REPO,
                       stdout=subprocess.DEVNULL, check=False)
        command_s = time.perf_counter() - t
    n = len(frames)
    row = {
        "frames": n, "messages": result["totals"]["messages"], "changes": result["totals"]["changes"],
        "incidents": result["totals"]["incidents"],
        "bare_loads_fps": round(n / min(bare)), "audit_fps": round(n / min(audit)),
        "ratio_audit_to_bare": round(min(bare) / min(audit), 3),
        "command_end_to_end_fps": round(n / command_s), "command_s": round(command_s, 2),
    }
    for k, v in row.items():
        print(f"{k:24s} {v}")
    print(f"wrote {save('books_bench', {'machine': machine(), 'rounds': args.rounds, 'row': row})}")


if __name__ == "__main__":
    main()
