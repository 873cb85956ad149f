"""Benchmark 3: how cost grows with shards and tokens, at a fixed offered rate.

    uv run python benchmarks/scale.py [--seconds 10] [--rate 5000] [--shards 1,2,4,8,16] [--markets 50,500,2000]

Tokens = 2 x markets. Prints a table and writes benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import signal
import tempfile
from pathlib import Path

import orjson

from _harness import machine, run_capture, run_report, save, sim_sent_fps, start_sim, steady_rate, table


def shards_opened(run_dir: Path) -> int | None:
    """Connections the run opened at start: --ws-shards, or more when the token cap needs them."""
    for line in (run_dir / "runlog.ndjson").read_bytes().splitlines():
        rec = orjson.loads(line)
        if rec.get("type") == "shards_planned":
            return rec["shards"]
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=5000.0)
    ap.add_argument("--shards", default="1,2,4,8,16")
    ap.add_argument("--markets", default="50,500,2000")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="pm_arb_scale_") as tmp:
        for markets in [int(x) for x in args.markets.split(",")]:
            for shards in [int(x) for x in args.shards.split(",")]:
                sim, gamma, ws = start_sim(markets, args.rate)
                cap, run_dir = run_capture(gamma, ws, Path(tmp), f"m{markets}-s{shards}", shards, args.seconds)
                sim_cost = sim.finish(signal.SIGINT)
                rep = run_report(run_dir)
                lat = rep["ws_rx_to_applied_ms"]
                achieved = steady_rate(run_dir)
                rows.append({
                    "tokens": 2 * markets, "shards": shards, "shards_opened": shards_opened(run_dir),
                    "sim_sent_fps": round(sim_sent_fps(sim_cost) or 0),
                    "achieved_fps": round(achieved), "p50_ms": lat["p50"], "p99_ms": lat["p99"], "max_ms": lat["max"],
                    "drops": rep["drops"]["dropped_messages_total"], "capture_cpu_pct": cap["cpu_pct"],
                    "cpu_us_per_frame": round(cap["cpu_s"] * 1e6 / max(1, rep["frames_applied"]), 1),
                    "capture_rss_mb": cap["peak_rss_mb"], "exit": cap["exit_code"],
                })
                print(table(rows[-1:], [(k, k) for k in rows[-1]]), flush=True)
    print()
    print(table(rows, [(k, k) for k in rows[0]]))
    path = save("scale", {"machine": machine(), "seconds": args.seconds, "rate": args.rate, "rows": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
