"""Benchmark 4: pm_arb against the recorder a user would write, on one simulator, in one run.

    uv run python benchmarks/vs_handwritten.py [--seconds 20] [--rates idle,1000,5000,30000,max] [--rounds 1]

One `pm_arb sim-exchange` process (2,000 markets = 4,000 tokens, pooled messages) serves every
cell; its rate is changed between cells on its stdin (`--rate-from-stdin`). Each cell runs
pm_arb's capture, then benchmarks/handwritten_recorder.py (the order alternates by round), 8
connections each, for `--seconds`. CPU is the kernel's account of each recorder process (wait4,
start-up and Gamma discovery included), so other load on the machine slows but does not bill
them. With several rounds every figure is the median over rounds. Prints a table and writes
benchmarks/results/vs_handwritten.json; `ratio` is pm_arb CPU / hand-written CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import orjson
from pm_arb.commands.cli_params import MAX_RATE
from _harness import Proc, machine, run_report, save, start_capture, start_sim, steady_p99, table

HANDWRITTEN = [str(Path(__file__).resolve().parent / "handwritten_recorder.py")]
FLAT_OUT = MAX_RATE  # the most sim-exchange accepts; it then sends as fast as it can


def parse_rate(text: str) -> float:
    return {"idle": 0.0, "max": float(FLAT_OUT)}[text] if text in ("idle", "max") else float(text)


def rate_label(rate: float) -> str:
    return "idle" if rate == 0 else "flat out" if rate >= FLAT_OUT else f"{rate:,.0f}"


class Simulator:
    """The one simulator process; `sent_since_last()` is the frames it sent since the previous call."""

    def __init__(self, markets: int) -> None:
        self.proc, self.gamma, self.ws = start_sim(markets, 0.0, 4096, "--rate-from-stdin")
        self._sent = 0

    def set_rate(self, rate: float) -> int:
        self.proc.p.stdin.write(f"{rate}\n")
        self.proc.p.stdin.flush()
        sent = int(self.proc.p.stdout.readline().strip().split("=", 1)[1])
        delta, self._sent = sent - self._sent, sent
        return delta

    def close(self) -> dict:
        self.proc.p.stdin.close()
        return self.proc.finish(__import__("signal").SIGINT)


def cell_pm_arb(sim: Simulator, tmp: Path, run_id: str, shards: int, seconds: float) -> dict:
    cap = start_capture(sim.gamma, sim.ws, tmp, run_id, shards, seconds, "--json")
    cost = cap.finish(timeout=seconds + 120)
    run_dir = tmp / "runs" / run_id
    summary = orjson.loads(cap.p.stdout.read() or b"{}")
    rep = run_report(run_dir)
    return {"cpu_s": cost["cpu_s"], "wall_s": cost["wall_s"], "frames": summary.get("frames") or 0, "exit": cost["exit_code"],
            "drops": rep["drops"]["dropped_messages_total"], "p99_ms": rep["ws_rx_to_applied_ms"]["p99"],
            "steady_p99_ms": steady_p99(run_dir), "rss_mb": cost["peak_rss_mb"], "stderr_tail": cost["stderr_tail"][-300:]}


def cell_handwritten(sim: Simulator, tmp: Path, run_id: str, shards: int, seconds: float) -> dict:
    rec = Proc(["--gamma-base-url", sim.gamma, "--clob-ws-url", sim.ws, "--shards", str(shards), "--duration-seconds", str(seconds),
                "--out", str(tmp / run_id)], program=HANDWRITTEN)
    cost = rec.finish(timeout=seconds + 120)
    out = orjson.loads((rec.p.stdout.read() or "{}").strip().splitlines()[-1] if rec.p.stdout else "{}")
    return {"cpu_s": cost["cpu_s"], "wall_s": cost["wall_s"], "frames": out.get("frames", 0), "exit": cost["exit_code"],
            "rss_mb": cost["peak_rss_mb"], "stderr_tail": cost["stderr_tail"][-300:]}


def load_now() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rates", default="idle,1000,5000,30000,max", help="idle, frames/s, or max (flat out)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--markets", type=int, default=2000)
    ap.add_argument("--shards", type=int, default=8)
    args = ap.parse_args()
    rates = [parse_rate(r.strip()) for r in args.rates.split(",")]
    cells: dict[float, dict[str, list[dict]]] = {r: {"pm_arb": [], "handwritten": []} for r in rates}
    sim = Simulator(args.markets)
    loads = []
    try:
        with tempfile.TemporaryDirectory(prefix="pm_arb_vs_") as tmp:
            for rnd in range(args.rounds):
                order = ("pm_arb", "handwritten") if rnd % 2 == 0 else ("handwritten", "pm_arb")
                for rate in rates:
                    for who in order:
                        sim.set_rate(rate)
                        loads.append(load_now())
                        run = cell_pm_arb if who == "pm_arb" else cell_handwritten
                        res = run(sim, Path(tmp), f"{who}-{rnd}-{int(rate)}", args.shards, args.seconds)
                        res["sim_sent"] = sim.set_rate(0.0)
                        res["load1"] = loads[-1]
                        res["seconds"] = args.seconds
                        if res["exit"] == 0:
                            del res["stderr_tail"]
                        cells[rate][who].append(res)
                        print(f"round {rnd + 1} {rate_label(rate):>8} {who:<11} " + " ".join(f"{k}={v}" for k, v in res.items()), flush=True)
                        if res["exit"] != 0:
                            raise SystemExit(f"{who} failed at {rate_label(rate)}: fix it and re-run")
    finally:
        sim_cost = sim.close()
    rows = [summarize(rate, cells[rate]) for rate in rates]
    cols = [("rate", "offered frames/s"), ("hw_rx_fps", "hand-written rx/s"), ("hw_cpu_s", "hand-written CPU s"),
            ("pm_rx_fps", "pm_arb rx/s"), ("pm_cpu_s", "pm_arb CPU s"), ("ratio", "CPU ratio"), ("ratio_per_frame", "per frame"), ("pm_drops", "drops"),
            ("pm_p99_ms", "p99 ms"), ("pm_steady_p99_ms", "steady p99 ms"), ("load1", "load")]
    print()
    print(table(rows, cols))
    path = save("vs_handwritten", {"machine": machine(), "seconds": args.seconds, "rounds": args.rounds, "markets": args.markets,
                                   "shards": args.shards, "loadavg_1m_per_cell": loads, "sim_cpu_s": sim_cost["cpu_s"],
                                   "rows": rows, "cells": {rate_label(r): c for r, c in cells.items()}})
    print(f"\nCPU: kernel accounting (wait4) per process, start-up included; medians over {args.rounds} round(s); "
          f"1-minute load average during the cells: {min(loads)}-{max(loads)} on {os.cpu_count()} CPUs")
    print(f"wrote {path}")


def summarize(rate: float, c: dict[str, list[dict]]) -> dict:
    def med(who: str, key: str):
        vals = [r[key] for r in c[who] if r.get(key) is not None]
        return round(statistics.median(vals), 3) if vals else None

    def fps(who: str):  # over the requested duration: both recorders count it from their first connect
        vals = [r["frames"] / r["seconds"] for r in c[who]]
        return round(statistics.median(vals)) if vals else None

    ratios = [p["cpu_s"] / h["cpu_s"] for p, h in zip(c["pm_arb"], c["handwritten"]) if h["cpu_s"]]
    # Per frame too: the two may receive different counts in the same seconds (pm_arb staggers
    # its connections' openings, issue 12), and a recorder that gets fewer frames spends less.
    per_frame = [(p["cpu_s"] / p["frames"]) / (h["cpu_s"] / h["frames"])
                 for p, h in zip(c["pm_arb"], c["handwritten"]) if p["frames"] and h["frames"] and h["cpu_s"]]
    return {"rate": rate_label(rate), "hw_rx_fps": fps("handwritten"), "hw_cpu_s": med("handwritten", "cpu_s"),
            "pm_rx_fps": fps("pm_arb"), "pm_cpu_s": med("pm_arb", "cpu_s"), "ratio": round(statistics.median(ratios), 2) if ratios else None,
            "ratio_per_frame": round(statistics.median(per_frame), 2) if per_frame and rate > 0 else None,
            "pm_drops": med("pm_arb", "drops"), "pm_p99_ms": med("pm_arb", "p99_ms"), "pm_steady_p99_ms": med("pm_arb", "steady_p99_ms"),
            "sim_sent_fps": round(statistics.median([r["sim_sent"] / r["seconds"] for w in c for r in c[w]])),
            "load1": max(r["load1"] for w in c for r in c[w])}


if __name__ == "__main__":
    main()
