"""Benchmark 4: soak. 30 minutes at 2,000 frames/s over 8 shards and 4,000 tokens.

    uv run python benchmarks/soak.py [--minutes 30] [--rate 2000]

Samples the capture's RSS every 10 s; reads queue depths from its metrics. Flat RSS and queue
depth from start to end, zero drops, zero heartbeat gaps is the pass. Writes
benchmarks/results/soak.json.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from _harness import REPO, Proc, machine, run_report, save, start_sim, table


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--markets", type=int, default=2000)
    ap.add_argument("--shards", type=int, default=8)
    args = ap.parse_args()
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="pm_arb_soak_") as tmp:
        sim, gamma, ws = start_sim(args.markets, args.rate)
        cap = Proc(["capture", "--gamma-base-url", gamma, "--clob-ws-url", ws, "--data-dir", tmp, "--run-id", "soak",
                    "--ws-shards", str(args.shards), "--duration-seconds", str(seconds), "--no-capture-universe-refresh-enable",
                    "--ws-max-tokens-per-shard", "100000", "--gamma-page-limit", "500"])
        samples = []
        t0 = time.monotonic()
        while cap.alive():
            r = rss_mb(cap.p.pid)
            if r is not None:
                samples.append((round(time.monotonic() - t0, 1), round(r, 1)))
            time.sleep(10)
        cost = cap.finish()
        sim_cost = sim.finish(signal.SIGINT)
        run_dir = Path(tmp) / "runs" / "soak"
        rep = run_report(run_dir)
        audit = orjson.loads(subprocess.run([sys.executable, "-m", "pm_arb", "capture-audit", "--run-dir", str(run_dir), "--json"],
                                            capture_output=True, text=True, cwd=REPO).stdout)
        glob = [orjson.loads(x) for x in (run_dir / "metrics" / "global.ndjson").read_bytes().splitlines()]
    steady = [s for s in samples if s[0] >= 60]
    first_min = [r for t, r in steady[:6]]
    last_min = [r for t, r in steady[-6:]]
    q_first = [g["write_q_depth"] for g in glob[60:120]]
    q_last = [g["write_q_depth"] for g in glob[-61:-1]]
    row = {
        "minutes": args.minutes, "rate": args.rate, "frames": rep["frames_applied"],
        "rss_mb_min2": round(sum(first_min) / max(1, len(first_min)), 1), "rss_mb_last_min": round(sum(last_min) / max(1, len(last_min)), 1),
        "write_q_mean_min2": round(sum(q_first) / max(1, len(q_first)), 2), "write_q_mean_last_min": round(sum(q_last) / max(1, len(q_last)), 2),
        "drops": rep["drops"]["dropped_messages_total"], "heartbeat_gaps_over_2s": audit["gaps_over_threshold"], "max_gap_s": audit["max_gap_s"],
        "reconnects": rep["reconnects"]["total"], "p99_ms": rep["ws_rx_to_applied_ms"]["p99"], "max_ms": rep["ws_rx_to_applied_ms"]["max"],
        "capture_cpu_pct": cost["cpu_pct"], "peak_rss_mb": cost["peak_rss_mb"], "sim_cpu_pct": sim_cost["cpu_pct"],
    }
    print(table([row], [(k, k) for k in row]))
    path = save("soak", {"machine": machine(), "row": row, "rss_samples": samples})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
