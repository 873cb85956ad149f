"""Stop signals: one stop sent as several signals (GNU timeout, systemd, uv forwarding) is one
clean stop; only a signal more than FORCE_AFTER_SECONDS after the first exits at once.

The captures are real subprocesses in their own session, so signalling their process group (as
`timeout` does) never reaches pytest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from pm_arb.plant.stop_signals import EXIT_NOW, FORCE_AFTER_SECONDS, SAME_STOP, STOP, StopSignals
from pm_arb.sim.exchange import SimExchange
from tests.conftest import REPO, _STARTED, cli_env, read_runlog_dicts, run_cli, wait_for_line, wait_for_runlog

S = 1_000_000_000


def test_signals_within_the_window_are_one_stop_and_a_later_one_exits():
    stops = StopSignals()
    assert stops.on_signal("SIGINT", 5 * S) == STOP
    assert stops.on_signal("SIGINT", 5 * S + 3_000) == SAME_STOP  # timeout: the group, microseconds later
    assert stops.on_signal("SIGTERM", 5 * S + 40_000_000) == SAME_STOP  # another kind, same stop
    assert stops.on_signal("SIGINT", 5 * S + int(FORCE_AFTER_SECONDS * S) - 1) == SAME_STOP
    assert stops.first == "SIGINT" and stops.same_stop == 3
    assert stops.on_signal("SIGINT", 5 * S + int(FORCE_AFTER_SECONDS * S)) == EXIT_NOW  # a person insists


def start_in_own_group(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pm_arb", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(env), cwd=REPO, start_new_session=True,
    )
    _STARTED.append(proc)
    return proc


def assert_clean_stop(run_dir: Path) -> None:
    runlog = read_runlog_dicts(run_dir)
    assert runlog[-1]["type"] == "run_stop", [r["type"] for r in runlog][-5:]
    check = run_cli("capture-check", "--run-dir", str(run_dir), "--json")
    gates = orjson.loads(check.stdout)["gates"]
    assert gates["clean_stop"]["pass"] is True, gates["clean_stop"]
    assert run_cli("capture-verify", "--run-dir", str(run_dir)).returncode == 0


def send(proc: subprocess.Popen, how: str) -> None:
    if how == "kill_kill":  # a second signal to the process, microseconds later
        os.kill(proc.pid, signal.SIGINT)
        os.kill(proc.pid, signal.SIGINT)
    elif how == "kill_killpg":  # what GNU timeout does: the child, then its process group
        os.kill(proc.pid, signal.SIGINT)
        os.killpg(proc.pid, signal.SIGINT)
    elif how == "term_int":  # systemd's SIGTERM and a Ctrl-C at the same moment
        os.kill(proc.pid, signal.SIGTERM)
        os.kill(proc.pid, signal.SIGINT)


@pytest.mark.parametrize("how", ["kill_kill", "kill_killpg", "term_int"])
def test_two_signals_microseconds_apart_stop_cleanly(data_dir, how):
    proc = start_in_own_group(["capture", "--offline", "--offline-speed", "1", "--ws-shards", "4", "--run-id", how, "--data-dir", str(data_dir)])
    run_dir = data_dir / "runs" / how
    assert wait_for_line(proc) == str(run_dir)
    wait_for_runlog(run_dir, lambda r: r["type"] == "run_confirmed")
    send(proc, how)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "exiting now" not in err and "Traceback" not in err
    assert_clean_stop(run_dir)


def test_timeout_command_stops_cleanly(data_dir):
    """Literally the documented form: `timeout --signal=INT N pm_arb capture`, the console script."""
    script = Path(sys.executable).parent / "pm_arb"
    for k in range(2):
        run_id = f"t{k}"
        proc = subprocess.run(
            ["timeout", "--signal=INT", "2", str(script), "capture", "--offline", "--offline-speed", "1", "--ws-shards", "4",
             "--run-id", run_id, "--data-dir", str(data_dir)],
            capture_output=True, text=True, timeout=60, env=cli_env(), cwd=REPO,
        )
        assert proc.returncode == 124, proc.stderr  # timeout's own code for "the time ran out"
        assert "stopped cleanly" in proc.stderr and "exiting now" not in proc.stderr
        assert_clean_stop(data_dir / "runs" / run_id)


@pytest.fixture
def slow_gamma():
    """A loopback simulator whose first Gamma request takes a while: the capture is in start-up."""
    with SimExchange(markets=4, rate=50) as s:
        yield s


def start_online(sim: SimExchange, data_dir: Path, run_id: str) -> subprocess.Popen:
    proc = start_in_own_group(["capture", "--gamma-base-url", sim.gamma_url, "--clob-ws-url", sim.ws_url, "--run-id", run_id,
                               "--data-dir", str(data_dir), "--ws-shards", "1", "--gamma-request-timeout-seconds", "30"])
    deadline = time.monotonic() + 30
    while not sim.gamma_requests:  # the capture is now waiting for Gamma
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else "no request"
        time.sleep(0.02)
    return proc


def test_a_stop_during_start_up_writes_nothing(slow_gamma, data_dir):
    slow_gamma.gamma_script.append("sleep:1.5")
    proc = start_online(slow_gamma, data_dir, "early")
    send(proc, "kill_killpg")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "SIGINT during start-up" in err and "nothing was written" in err and "Traceback" not in err
    assert not (data_dir / "runs" / "early").exists()


def test_a_later_second_signal_exits_at_once(slow_gamma, data_dir):
    """The escape hatch for a person: a second Ctrl-C after the window exits now, here while
    start-up waits 6 s for Gamma."""
    slow_gamma.gamma_script.append("sleep:6")
    proc = start_online(slow_gamma, data_dir, "stuck")
    send(proc, "kill_killpg")
    time.sleep(FORCE_AFTER_SECONDS + 0.3)  # a person pressing Ctrl-C again, later
    assert proc.poll() is None  # the first stop is still waiting for start-up to end
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130 and time.monotonic() - t0 < 2  # not when Gamma answers, 4 s later
    assert "exiting now without a clean stop" in err
