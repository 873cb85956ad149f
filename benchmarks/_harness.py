"""Shared pieces of the benchmark scripts: a simulator process, a capture process, their costs.

Everything runs as separate processes on loopback, as a user would run it. CPU and peak RSS
of each process come from os.wait4 (the kernel's own accounting for that child).
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "processor": platform.processor() or platform.machine()}


class Proc:
    def __init__(self, args: list[str], program: list[str] | None = None, stdin: int | None = None) -> None:
        """Runs `python -m pm_arb ARGS`, or `python PROGRAM... ARGS` (a benchmark's own script)."""
        self.t0 = time.monotonic()
        cmd = [sys.executable, *(program or ["-m", "pm_arb"]), *args]
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=stdin,
                                  text=True, cwd=REPO, env={k: v for k, v in os.environ.items() if not k.startswith("PM_ARB_")})

    def alive(self) -> bool:
        """Whether the process still runs, without reaping it (wait4 must see it for its costs)."""
        return os.waitid(os.P_PID, self.p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None

    def finish(self, sig: int | None = None, timeout: float = 120) -> dict:
        if sig is not None and self.alive():
            self.p.send_signal(sig)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, ru = os.wait4(self.p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                self.p.kill()
                pid, status, ru = os.wait4(self.p.pid, 0)
                break
            time.sleep(0.05)
        wall = time.monotonic() - self.t0
        self.p.returncode = os.waitstatus_to_exitcode(status)
        err = self.p.stderr.read() if self.p.stderr else ""
        cpu = ru.ru_utime + ru.ru_stime
        return {"exit_code": self.p.returncode, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                "cpu_pct": round(100 * cpu / wall, 1), "peak_rss_mb": round(ru.ru_maxrss / 1024, 1), "stderr_tail": err[-500:]}


def bare_loads_seconds(payloads: list[bytes]) -> float:
    """The baseline the decoding benchmarks are measured against: orjson.loads over every payload."""
    loads = orjson.loads
    t = time.perf_counter()
    for p in payloads:
        try:
            loads(p)
        except orjson.JSONDecodeError:
            pass
    return time.perf_counter() - t


def start_sim(markets: int, rate: float, pool: int = 4096, *extra: str) -> tuple[Proc, str, str]:
    sim = Proc(["sim-exchange", "--markets", str(markets), "--rate", str(rate), "--pool", str(pool), *extra],
               stdin=subprocess.PIPE if extra else None)
    gamma = sim.p.stdout.readline().strip().split("=", 1)[1]
    ws = sim.p.stdout.readline().strip().split("=", 1)[1]
    return sim, gamma, ws


def sim_sent_fps(sim_cost: dict) -> float | None:
    """The simulator's own count of frames sent per second (it prints it when stopped)."""
    import re

    m = re.search(r"\(([\d,]+) frames/s\)", sim_cost.get("stderr_tail", ""))
    return float(m.group(1).replace(",", "")) if m else None


def start_capture(gamma: str, ws: str, data_dir: Path, run_id: str, shards: int, seconds: float, *extra: str) -> Proc:
    return Proc(["capture", "--gamma-base-url", gamma, "--clob-ws-url", ws, "--data-dir", str(data_dir), "--run-id", run_id,
                 "--ws-shards", str(shards), "--duration-seconds", str(seconds), "--no-capture-universe-refresh-enable",
                 "--ws-max-tokens-per-shard", "100000", "--capture-max-markets", "100000", "--gamma-page-limit", "500", *extra])


def run_capture(gamma: str, ws: str, data_dir: Path, run_id: str, shards: int, seconds: float, *extra: str) -> tuple[dict, Path]:
    cost = start_capture(gamma, ws, data_dir, run_id, shards, seconds, *extra).finish(timeout=seconds + 120)
    return cost, data_dir / "runs" / run_id


def run_report(run_dir: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "pm_arb", "capture-latency-report", "--run-dir", str(run_dir), "--json"],
                         capture_output=True, text=True, cwd=REPO)
    return orjson.loads(out.stdout)


def steady_rate(run_dir: Path, skip_s: float = 2.0) -> float:
    """Frames per second applied after the first `skip_s` seconds (connect and initial dumps)."""
    recs = [orjson.loads(x) for x in (run_dir / "metrics" / "global.ndjson").read_bytes().splitlines()]
    if len(recs) < 3:
        return 0.0
    t0 = recs[0]["mono_ns"]
    window = [r for r in recs[:-1] if (r["mono_ns"] - t0) / 1e9 >= skip_s]
    secs = sum(r["interval_s"] for r in window)
    return sum(r["frames"] for r in window) / secs if secs else 0.0


def steady_p99(run_dir: Path, skip_s: float = 3.0) -> float | None:
    """p99 without the start-up burst (initial book dumps for every token) and the stop."""
    from pm_arb.metrics.latency_hist import merge, percentiles

    recs = [orjson.loads(x) for x in (run_dir / "metrics" / "global.ndjson").read_bytes().splitlines()]
    if len(recs) < 3:
        return None
    t0 = recs[0]["mono_ns"]
    hist: dict[int, int] = {}
    for r in recs[:-1]:
        if (r["mono_ns"] - t0) / 1e9 >= skip_s:
            merge(hist, r["ws_rx_to_applied_hist_us"])
    return percentiles(hist, (0.99,))[0.99]


def save(name: str, doc: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    return path


def table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    widths = [max(len(h), *(len(str(r.get(k, ""))) for r in rows)) for k, h in cols]
    lines = ["  ".join(h.rjust(w) for (k, h), w in zip(cols, widths))]
    for r in rows:
        lines.append("  ".join(str(r.get(k, "")).rjust(w) for (k, h), w in zip(cols, widths)))
    return "\n".join(lines)


__all__ = ["Proc", "sim_sent_fps", "start_sim", "start_capture", "run_capture", "run_report", "steady_rate", "steady_p99", "save", "table", "machine", "signal"]
