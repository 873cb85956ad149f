"""Where a recorder's wake-ups go: per-thread context switches and CPU over a steady window.

    uv run python benchmarks/wakeups.py [--rate 1000] [--seconds 10] [--recorder pm_arb|handwritten]

Starts the simulator at `--rate` (0 = idle, 8 connections open) and one recorder, waits for the
start-up to pass, then reads /proc/<pid>/task/*/status (voluntary/nonvoluntary_ctxt_switches)
and /proc/<pid>/task/*/stat (utime+stime) at the start and end of the window. Threads are
grouped by name (ws-reader-00..07 -> ws-reader-*). Prints per-second figures; --json for a
document. Context switches are the kernel's count of the times each thread slept and was
woken, which is what costs CPU when frames come one at a time.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from _harness import Proc, start_capture, start_sim, table

HANDWRITTEN = [str(Path(__file__).resolve().parent / "handwritten_recorder.py")]
TICKS = os.sysconf("SC_CLK_TCK")


def python_thread_names(pid: int) -> dict[int, str]:
    """Native thread id -> Python thread name, from `py-spy dump` (empty when py-spy cannot run)."""
    try:
        out = subprocess.run(["uvx", "py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {int(m.group(1)): m.group(2) for m in re.finditer(r'^Thread (\d+) \(\w+\): "(.*)"', out, re.M)}


def threads(pid: int, names: dict[int, str]) -> dict[int, dict]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        vol = int(re.search(r"voluntary_ctxt_switches:\s+(\d+)", status).group(1))
        nonvol = int(re.search(r"nonvoluntary_ctxt_switches:\s+(\d+)", status).group(1))
        name = names.get(int(tid)) or re.search(r"Name:\s+(.*)", status).group(1).strip()
        out[int(tid)] = {"name": re.sub(r"-\d+$", "-*", name), "vol": vol, "nonvol": nonvol,
                         "cpu_s": (int(fields[11]) + int(fields[12])) / TICKS}
    return out


def window(pid: int, seconds: float) -> list[dict]:
    names = python_thread_names(pid)
    a = threads(pid, names)
    time.sleep(seconds)
    b = threads(pid, names)
    groups: dict[str, dict] = {}
    for tid, end in b.items():
        start = a.get(tid, {"vol": 0, "nonvol": 0, "cpu_s": 0.0})
        g = groups.setdefault(end["name"], {"thread": end["name"], "n": 0, "vol_per_s": 0.0, "nonvol_per_s": 0.0, "cpu_pct": 0.0})
        g["n"] += 1
        g["vol_per_s"] += (end["vol"] - start["vol"]) / seconds
        g["nonvol_per_s"] += (end["nonvol"] - start["nonvol"]) / seconds
        g["cpu_pct"] += 100 * (end["cpu_s"] - start["cpu_s"]) / seconds
    rows = sorted(groups.values(), key=lambda g: -g["vol_per_s"])
    for g in rows:
        for k in ("vol_per_s", "nonvol_per_s", "cpu_pct"):
            g[k] = round(g[k], 1)
    total = {"thread": "TOTAL", "n": sum(g["n"] for g in rows), **{k: round(sum(g[k] for g in rows), 1) for k in ("vol_per_s", "nonvol_per_s", "cpu_pct")}}
    return rows + [total]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=6.0)
    ap.add_argument("--recorder", choices=("pm_arb", "handwritten"), default="pm_arb")
    ap.add_argument("--markets", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sim, gamma, ws = start_sim(args.markets, args.rate)
    total = args.warmup + args.seconds + 2
    with tempfile.TemporaryDirectory(prefix="pm_arb_wake_") as tmp:
        if args.recorder == "pm_arb":
            rec = start_capture(gamma, ws, Path(tmp), "w", 8, total)
        else:
            rec = Proc(["--gamma-base-url", gamma, "--clob-ws-url", ws, "--shards", "8", "--duration-seconds", str(total), "--out", tmp],
                       program=HANDWRITTEN)
        time.sleep(args.warmup)
        rows = window(rec.p.pid, args.seconds)
        rec.finish(timeout=total + 60)
    sim.finish(signal.SIGINT)
    if args.json:
        sys.stdout.write(orjson.dumps({"rate": args.rate, "recorder": args.recorder, "seconds": args.seconds, "threads": rows}).decode() + "\n")
    else:
        print(f"{args.recorder} at {args.rate:,.0f} frames/s, {args.seconds:g} s window, 1-min load {os.getloadavg()[0]:.2f}")
        print(table(rows, [(k, k) for k in rows[0]]))


if __name__ == "__main__":
    main()
