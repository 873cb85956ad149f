"""Book audit speed: frames/s of capture-books against a bare single-threaded orjson.loads loop
over the same payloads, measured in the same run, rounds interleaved.

    uv run python benchmarks/books_bench.py [--run-dir D] [--rounds 3] [--seconds 30] [--rate 5000]

Without --run-dir it first records one: `capture --sim` for --seconds at --rate frames/s, 400
markets (800 tokens), 8 shards. Each round measures, in this order:
- the baseline: orjson.loads over every payload (in memory, this process);
- the fold alone: one BookFold fed the same in-memory frames (this process, one core);
- the command end to end, `pm_arb capture-books --json`, as a subprocess: one process
  (--workers 1) and one per core (the default): reading the files, checksums, merge by receive
  time, folding, the report. Wall clock (the figure the target is about) and CPU seconds of
  the process tree (os.wait4), with the 1-minute load average at the start of the round;
- the interpreter start-up and imports of the command alone (`import pm_arb.commands.books`),
  a fixed cost the command pays on any run size.
Ratios divide each round's baseline seconds by the measured seconds (higher is faster; the
target, issue 15, is >= 1x for the command). Writes benchmarks/results/books_bench.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import REPO, Proc, bare_loads_seconds, machine, save

from pm_arb.book.rebuild import BookFold
from pm_arb.commands.books import _runlog_markers
from pm_arb.reader import open_run


def record(tmp: Path, seconds: float, rate: float) -> Path:
    subprocess.run([sys.executable, "-m", "pm_arb", "capture", "--sim", "--sim-rate", str(rate), "--sim-markets", "400",
                    "--duration-seconds", str(seconds), "--data-dir", str(tmp), "--run-id", "books"], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)
    return tmp / "runs" / "books"


def fold_seconds(frames: list[tuple], markers: list) -> tuple[float, dict]:
    t = time.perf_counter()
    fold = BookFold()
    connect, assign = fold.connect, fold.assign
    k = 0
    for f in frames:
        while k < len(markers) and markers[k].mono_ns <= f[2]:
            m = markers[k]
            connect(m) if hasattr(m, "shard") else assign(m)
            k += 1
        fold.frame(*f)
    result = fold.result()
    return time.perf_counter() - t, result


def command(run_dir: Path, *args: str) -> dict:
    cost = Proc(["capture-books", "--run-dir", str(run_dir), "--json", *args]).finish(timeout=3600)
    assert cost["exit_code"] in (0, 1), cost["stderr_tail"]
    return cost


def startup_seconds() -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import pm_arb.cli, pm_arb.commands.books"], check=True, cwd=REPO)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=30, help="length of the recorded run (without --run-dir)")
    ap.add_argument("--rate", type=float, default=5000, help="frames/s of the recorded run (without --run-dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pm_arb_books_") as tmp:
        run_dir = args.run_dir or record(Path(tmp), args.seconds, args.rate)
        frames = [(r.shard, r.seq, r.rx_mono_ns, r.rx_wall_ns_utc, r.flags, r.payload) for r in open_run(run_dir).frames()]
        markers, _ = _runlog_markers(run_dir, False)
        payloads = [f[5] for f in frames]
        n = len(frames)
        rounds = []
        for i in range(args.rounds):
            load = os.getloadavg()[0]
            bare = bare_loads_seconds(payloads)
            fold_s, result = fold_seconds(frames, markers)
            one = command(run_dir, "--workers", "1")
            every = command(run_dir)
            start = startup_seconds()
            rounds.append({"load_1min": round(load, 2), "bare_s": round(bare, 3), "fold_s": round(fold_s, 3),
                           "command_1_worker": {"wall_s": one["wall_s"], "cpu_s": one["cpu_s"]},
                           "command_all_cores": {"wall_s": every["wall_s"], "cpu_s": every["cpu_s"]},
                           "startup_s": round(start, 3),
                           "ratio_fold": round(bare / fold_s, 3), "ratio_command_1_worker": round(bare / one["wall_s"], 3),
                           "ratio_command_all_cores": round(bare / every["wall_s"], 3)})
            r = rounds[-1]
            print(f"round {i + 1} (load {load:.2f}): bare {n / bare:,.0f} frames/s; fold alone {r['ratio_fold']}x; "
                  f"command 1 worker {r['ratio_command_1_worker']}x ({one['wall_s']} s wall, {one['cpu_s']} s CPU); "
                  f"all cores {r['ratio_command_all_cores']}x ({every['wall_s']} s wall, {every['cpu_s']} s CPU); "
                  f"start-up {start:.2f} s", flush=True)
    row = {
        "frames": n, "messages": result["totals"]["messages"], "changes": result["totals"]["changes"],
        "incidents": result["totals"]["incidents"], "cpus": os.cpu_count(),
        "bare_loads_fps": round(n / statistics.median(r["bare_s"] for r in rounds)),
        **{k: round(statistics.median(r[k] for r in rounds), 3) for k in ("ratio_fold", "ratio_command_1_worker", "ratio_command_all_cores")},
        "command_all_cores_fps": round(n / statistics.median(r["command_all_cores"]["wall_s"] for r in rounds)),
        "command_all_cores_cpu_us_per_frame": round(1e6 * statistics.median(r["command_all_cores"]["cpu_s"] for r in rounds) / n, 2),
        "startup_s": round(statistics.median(r["startup_s"] for r in rounds), 3),
    }
    for k, v in row.items():
        print(f"{k:36s} {v}")
    print(f"wrote {save('books_bench', {'machine': machine(), 'run_dir': str(run_dir), 'rounds': rounds, 'row': row})}")


if __name__ == "__main__":
    main()
