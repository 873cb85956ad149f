"""Runs by name: `pm_arb runs`, `--run-dir latest|<id>|path`, the sim mode label, next-step commands."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import pytest

from tests.conftest import assert_one_line_error, read_runlog_dicts, run_cli
from pm_arb.commands.next_step import cli_prefix, next_command
from pm_arb.commands.run_dir import resolve_run_dir
from pm_arb.errors import UserError


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> Path:
    """A data dir holding a short --sim run, then an offline run (the latest)."""
    data = tmp_path_factory.mktemp("named") / "data"
    sim = run_cli("capture", "--sim", "--duration-seconds", "2", "--ws-shards", "2", "--run-id", "sim-a", "--data-dir", str(data))
    assert sim.returncode == 0, sim.stderr
    off = run_cli("capture", "--offline", "--offline-speed", "0", "--ws-shards", "2", "--run-id", "off-b", "--data-dir", str(data))
    assert off.returncode == 0, off.stderr
    return data


def test_a_sim_run_is_labelled_sim_in_manifest_runlog_and_runs(two_runs):
    run = two_runs / "runs" / "sim-a"
    assert orjson.loads((run / "manifest.json").read_bytes())["mode"] == "sim"
    assert read_runlog_dicts(run)[0]["mode"] == "sim"
    listed = orjson.loads(run_cli("runs", "--json", "--data-dir", str(two_runs)).stdout)
    assert {r["run_id"]: r["mode"] for r in listed["runs"]} == {"sim-a": "sim", "off-b": "offline"}


def test_runs_lists_every_run_with_figures_and_the_recorded_check_verdict(two_runs):
    env = {"PM_ARB_DATA_DIR": str(two_runs)}
    before = orjson.loads(run_cli("runs", "--json", env=env).stdout)["runs"]
    assert [r["run_id"] for r in before] == ["sim-a", "off-b"]  # oldest first
    off = before[1]
    assert off["frames"] > 0 and off["disk_bytes"] > off["frames"] and off["state"] == "stopped" and off["duration_s"] is not None
    # capture-check by bare id records its verdict in the run dir; `runs` shows it.
    check = run_cli("capture-check", "--run-dir", "off-b", env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert orjson.loads((two_runs / "runs" / "off-b" / "check.json").read_bytes())["verdict"] == "PASS"
    after = {r["run_id"]: r for r in orjson.loads(run_cli("runs", "--json", env=env).stdout)["runs"]}
    assert after["off-b"]["check"]["verdict"] == "PASS" and after["sim-a"]["check"] is None
    text = run_cli("runs", env=env).stdout
    assert "off-b" in text and "PASS" in text and "not checked" in text


def test_latest_and_a_run_id_resolve_for_every_run_reading_command(two_runs):
    env = {"PM_ARB_DATA_DIR": str(two_runs)}
    for cmd in (["capture-verify", "--summary-only"], ["capture-inspect"], ["capture-audit"], ["capture-replay"], ["capture-check"]):
        latest = run_cli(*cmd, "--run-dir", "latest", "--json", env=env)
        assert latest.returncode == 0, (cmd, latest.stderr)
        by_id = run_cli(*cmd, "--run-dir", "off-b", "--json", env=env)
        assert by_id.stdout == latest.stdout or cmd[0] in ("capture-check", "capture-inspect"), cmd
    replay = orjson.loads(run_cli("capture-replay", "--run-dir", "sim-a", "--json", env=env).stdout)
    assert replay["state"]["run_id"] == "sim-a"


def test_unknown_run_is_one_line_naming_what_exists(two_runs, tmp_path):
    proc = run_cli("capture-check", "--run-dir", "sim-x", env={"PM_ARB_DATA_DIR": str(two_runs)})
    line = assert_one_line_error(proc, 2)
    assert "sim-x" in line and "sim-a" in line and "off-b" in line and "pm_arb runs" in line
    empty = run_cli("capture-audit", "--run-dir", "latest", env={"PM_ARB_DATA_DIR": str(tmp_path / "none")})
    assert "no runs under" in assert_one_line_error(empty, 2)


def test_resolver_prefers_an_existing_path_then_latest_by_start_time(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    for name, started in (("zz-old", 1), ("aa-new", 2)):
        (runs / name).mkdir(parents=True)
        (runs / name / "manifest.json").write_bytes(orjson.dumps({"started_wall_ns_utc": started}))
    assert resolve_run_dir("latest", tmp_path) == runs / "aa-new"  # by start time, not by name
    assert resolve_run_dir("zz-old", tmp_path) == runs / "zz-old"
    (tmp_path / "latest").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_run_dir("latest", tmp_path) == Path("latest")  # a real path named like a keyword wins
    with pytest.raises(UserError) as exc:
        resolve_run_dir("runs/missing", tmp_path)
    assert exc.value.exit_code == 2


def test_next_step_command_runs_as_printed(tmp_path):
    assert cli_prefix({"UV": "/usr/bin/uv", "PATH": ""}) == "uv run pm_arb"
    script = tmp_path / "pm_arb"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert cli_prefix({"PATH": str(tmp_path)}) == "pm_arb"
    assert cli_prefix({"PATH": str(tmp_path / "empty")}) == f"{sys.executable} -m pm_arb"
    assert next_command("capture-check", "--run-dir", "data/runs/a b", env={"UV": "x"}) == "uv run pm_arb capture-check --run-dir 'data/runs/a b'"
