"""Shared helpers: the CLI as a real subprocess, temporary data dirs, a loopback simulator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pykka
import pytest

from pm_arb.store.shard_files import ShardReader, shard_numbers

REPO = Path(__file__).resolve().parent.parent


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PM_ARB_")}
    env.update(extra or {})
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pm_arb", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(env),
        cwd=cwd or REPO,
    )


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def reap_started_processes():
    """A test that fails half-way must not leave a capture running: kill what it started."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pm_arb", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(env),
        cwd=REPO,
    )
    _STARTED.append(proc)
    return proc


def start_sim_exchange(*args: str) -> tuple[subprocess.Popen, str, str]:
    """`pm_arb sim-exchange` as a subprocess (reaped by the autouse fixture) and the two base
    URLs it prints (Gamma, then the market WebSocket)."""
    proc = start_cli("sim-exchange", *args)
    gamma = proc.stdout.readline().strip().split("=", 1)[1]
    ws = proc.stdout.readline().strip().split("=", 1)[1]
    return proc, gamma, ws


def wait_for_line(proc: subprocess.Popen, timeout: float = 30) -> str:
    """The first stdout line of a capture: its run dir."""
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline()
    if not line and time.monotonic() > deadline:
        raise AssertionError("no output from capture")
    return line.strip()


def wait_for_runlog(run_dir: Path, predicate, timeout: float = 30) -> list[dict]:
    """Poll the runlog (written by another process) until a record satisfies predicate."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recs = read_runlog_dicts(run_dir)
        if any(predicate(r) for r in recs):
            return recs
        time.sleep(0.05)
    raise AssertionError(f"runlog of {run_dir} never matched; last types: {[r['type'] for r in read_runlog_dicts(run_dir)][-10:]}")


def read_runlog_dicts(run_dir: Path) -> list[dict]:
    p = run_dir / "runlog.ndjson"
    if not p.exists():
        return []
    out = []
    for line in p.read_bytes().splitlines():
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            pass
    return out


def stop_with(proc: subprocess.Popen, sig=signal.SIGINT, timeout: float = 60) -> tuple[int, str, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert lines, "expected an error line on stderr"
    return lines[-1]


@pytest.fixture(scope="session")
def offline_run(tmp_path_factory) -> Path:
    """One real offline capture of the bundled fixtures (4 shards), shared read-only by tests."""
    data = tmp_path_factory.mktemp("offline") / "data"
    proc = run_cli("capture", "--offline", "--offline-speed", "0", "--ws-shards", "4", "--run-id", "fixture-run", "--data-dir", str(data))
    assert proc.returncode == 0, proc.stderr
    return data / "runs" / "fixture-run"


def export(run_dir: Path, out: Path, *args: str) -> dict:
    """`capture-export --json` as a subprocess; its summary."""
    proc = run_cli("capture-export", "--run-dir", str(run_dir), "--out", str(out), "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout)


@pytest.fixture(scope="session")
def offline_export(offline_run, tmp_path_factory) -> tuple[Path, dict]:
    """The offline run exported once (every table, Parquet), shared read-only by tests."""
    out = tmp_path_factory.mktemp("export") / "pq"
    return out, export(offline_run, out)


@pytest.fixture
def run_copy(offline_run, tmp_path) -> Path:
    """A private copy of the offline run, for tests that damage it."""
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(offline_run, dst)
    return dst


def records_by_shard(run_dir: Path) -> dict:
    """Every valid record of a run's capture, per shard."""
    out = {}
    for s in shard_numbers(run_dir / "capture"):
        with ShardReader(run_dir / "capture", s) as rd:
            out[s] = list(rd)
    return out


class Probe(pykka.ThreadingActor):
    """Records what it is told; answers "got" with the record. With a supervisor, it replies
    ShardStopped to StopShard, standing in for a shard."""

    def __init__(self, shard: int = -1, supervisor=None) -> None:
        super().__init__()
        self.got: list = []
        self.shard = shard
        self.supervisor = supervisor

    def on_receive(self, msg):
        from pm_arb.actors import messages as m

        if msg == "got":
            return list(self.got)
        self.got.append(msg)
        if isinstance(msg, m.StopShard) and self.supervisor is not None:
            self.supervisor.tell(m.ShardStopped(self.shard))
        return None


def drop_fixture_change(src: Path, dst: Path) -> str:
    """A copy of the bundled fixtures with one top-moving price_change lost; returns its token."""
    import shutil

    shutil.copytree(src, dst)
    lines = (dst / "frames.ndjson").read_bytes().splitlines()
    last_top: dict[str, tuple] = {}
    for k, line in enumerate(lines):
        text = orjson.loads(line)["text"]
        doc = orjson.loads(text) if text and text.startswith("{") else None
        if not doc or doc.get("event_type") != "price_change" or len(doc["price_changes"]) != 1:
            continue
        it = doc["price_changes"][0]
        top = (it["best_bid"], it["best_ask"])
        if k > len(lines) // 3 and it["asset_id"] in last_top and last_top[it["asset_id"]] != top:
            (dst / "frames.ndjson").write_bytes(b"\n".join(lines[:k] + lines[k + 1:]) + b"\n")
            return it["asset_id"]
        last_top[it["asset_id"]] = top
    raise AssertionError("no top-moving change in the fixtures")
