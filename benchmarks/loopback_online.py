"""Benchmark 2: the simulator (own process) sending to 8 shards with 4,000 tokens.

    uv run python benchmarks/loopback_online.py [--seconds 20] [--rates 1000,5000,20000,30000,0]

Rate 0 means flat out. Prints a table and writes benchmarks/results/loopback_online.json.
"""

from __future__ import annotations

import argparse
import signal
import tempfile
from pathlib import Path

from pm_arb.commands.cli_params import MAX_RATE  # flat out: the most sim-exchange accepts
from _harness import machine, run_capture, run_report, save, sim_sent_fps, start_sim, steady_rate, table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rates", default="1000,5000,20000,30000,0")
    ap.add_argument("--markets", type=int, default=2000)
    ap.add_argument("--shards", type=int, default=8)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="pm_arb_bench_") as tmp:
        for rate in [float(r) for r in args.rates.split(",")]:
            sim, gamma, ws = start_sim(args.markets, rate if rate > 0 else MAX_RATE)
            cap, run_dir = run_capture(gamma, ws, Path(tmp), f"r{int(rate)}", args.shards, args.seconds)
            sim_cost = sim.finish(signal.SIGINT)
            rep = run_report(run_dir)
            lat = rep["ws_rx_to_applied_ms"]
            achieved = steady_rate(run_dir)
            rows.append({
                "rate": "flat out" if rate == 0 else int(rate),
                "sim_sent_fps": round(sim_sent_fps(sim_cost) or 0),
                "achieved_fps": round(achieved),
                "p50_ms": lat["p50"], "p99_ms": lat["p99"], "max_ms": lat["max"],
                "drops": rep["drops"]["dropped_messages_total"], "reconnects": rep["reconnects"]["total"],
                "capture_cpu_pct": cap["cpu_pct"], "capture_rss_mb": cap["peak_rss_mb"],
                "sim_cpu_pct": sim_cost["cpu_pct"], "exit": cap["exit_code"],
                "write_q_max": rep["queue_depth"]["write_q_depth"]["max"], "parse_q_max": rep["queue_depth"]["parse_q_depth"]["max"],
                # the report's steady state (start-up excluded by ADR/0005's rule), as a user sees it
                "steady_p99_ms": rep["ws_rx_to_applied_ms_steady"]["p99"],
            })
            print(table(rows[-1:], [(k, k) for k in rows[-1]]), flush=True)
    cols = [(k, k) for k in rows[0]]
    print()
    print(table(rows, cols))
    path = save("loopback_online", {"machine": machine(), "seconds": args.seconds, "markets": args.markets, "shards": args.shards, "rows": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
