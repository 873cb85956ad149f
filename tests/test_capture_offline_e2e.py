"""Offline capture as a real subprocess: every fixture frame byte for byte, clean stop on signals."""

from __future__ import annotations

import platform
import signal

import orjson
import pytest

from pm_arb.config import Config
from pm_arb.store.fixtures import frames_by_shard, load_fixture_set
from pm_arb.universe.placement import PlacementRules, place
from pm_arb.universe.select import select_markets
from tests.conftest import assert_one_line_error, records_by_shard, read_runlog_dicts, run_cli, start_cli, stop_with, wait_for_line, wait_for_runlog


def fixture_frames_per_shard(shards: int):
    fx = load_fixture_set(None)
    markets, _ = select_markets(fx.gamma_rows, 2000)
    change = place(None, markets, PlacementRules(cap_tokens=Config().ws_max_tokens_per_shard, min_shards=shards))
    return frames_by_shard(fx, change.placement.shard_of, change.placement.shards)


def test_full_offline_run_has_every_fixture_frame_byte_for_byte(offline_run):
    want = fixture_frames_per_shard(4)
    got = records_by_shard(offline_run)
    assert set(got) == {s for s, fr in want.items() if fr}
    for s, frames in want.items():
        if frames:
            assert [r.payload for r in got[s]] == [f.payload for f in frames]
            assert [r.opcode for r in got[s]] == [f.opcode for f in frames]
    runlog = read_runlog_dicts(offline_run)
    assert [r["seq"] for r in runlog] == list(range(len(runlog)))
    assert runlog[0]["type"] == "run_start" and runlog[-1]["type"] == "run_stop"
    manifest = orjson.loads((offline_run / "manifest.json").read_bytes())
    assert manifest["run_id"] == "fixture-run" and manifest["mode"] == "offline"
    assert manifest["config"]["ws_shards"] == 4 and manifest["universe"]["markets_count"] == 24
    # the config that ran, not the one asked for: a replay never refreshes and waits for the writer
    assert manifest["config"]["capture_universe_refresh_enable"] is False
    assert manifest["offline_overrides"] == {"write_q_full_wait_ms": 3_600_000.0, "capture_universe_refresh_enable": False}
    from pm_arb.config import load_config
    load_config({k: str(v) for k, v in manifest["config"].items()}, {})  # every recorded value is a valid setting
    assert {"pykka", "websocket-client", "orjson", "xxhash"} <= set(manifest["versions"])
    mk = manifest["universe"]["markets"][0]
    assert {"question", "condition_id", "yes_token", "no_token", "shard"} <= set(mk)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_cleanly_and_what_was_received_is_all_there(data_dir, sig):
    proc = start_cli("capture", "--offline", "--offline-speed", "1", "--ws-shards", "4", "--run-id", "sig", "--data-dir", str(data_dir))
    run_dir = data_dir / "runs" / "sig"
    assert wait_for_line(proc) == str(run_dir)
    wait_for_runlog(run_dir, lambda r: r["type"] == "run_confirmed")
    code, _, err = stop_with(proc, sig)
    assert code == 0, err
    assert "Traceback" not in err
    runlog = read_runlog_dicts(run_dir)
    assert [r["seq"] for r in runlog] == list(range(len(runlog)))
    stop = [r for r in runlog if r["type"] == "stop_requested"]
    assert stop and stop[0]["reason"] == sig.name and runlog[-1]["type"] == "run_stop"
    assert run_cli("capture-verify", "--run-dir", str(run_dir)).returncode == 0
    want = fixture_frames_per_shard(4)
    got = records_by_shard(run_dir)
    total = 0
    for s, recs in got.items():
        assert [r.payload for r in recs] == [f.payload for f in want[s][: len(recs)]]  # an exact prefix, in order
        total += len(recs)
    assert 0 < total < sum(len(v) for v in want.values())


def test_existing_run_id_is_refused_and_nothing_overwritten(offline_run):
    before = (offline_run / "runlog.ndjson").read_bytes()
    proc = run_cli("capture", "--offline", "--run-id", offline_run.name, "--data-dir", str(offline_run.parent.parent))
    line = assert_one_line_error(proc, 2)
    assert "already exists" in line and "choose another --run-id" in line
    assert (offline_run / "runlog.ndjson").read_bytes() == before


def test_capture_json_is_one_document_on_stdout(data_dir):
    proc = run_cli("capture", "--offline", "--offline-speed", "0", "--ws-shards", "2", "--run-id", "j", "--data-dir", str(data_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = orjson.loads(proc.stdout)
    assert doc["run_dir"] == str(data_dir / "runs" / "j") and doc["exit_code"] == 0 and doc["phase"] == "stopped"
    assert doc["frames"] == 3071 and doc["dropped_messages_total"] == 0 and doc["fatal_reason"] is None
    # the run summary reports the busiest shard against the mean (ADR/0007)
    manifest = orjson.loads((data_dir / "runs" / "j" / "manifest.json").read_bytes())
    loads = list(manifest["universe"]["shard_token_counts"].values())
    assert doc["shards_open"] == 2 and doc["balance"]["busiest_tokens"] == max(loads) and doc["balance"]["mean_tokens"] == 24.0
    assert f"busiest {max(loads)} tokens vs mean 24" in proc.stderr


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's; elsewhere the allocator is left alone")
def test_capture_tunes_glibc_malloc_unless_the_environment_already_does(data_dir, offline_run):
    """The settings that kept a 12-minute 8k frames/s capture at 42 MB flat (ADR/0006) are
    applied and recorded in the manifest; one the user exported wins and is recorded as such."""
    manifest = orjson.loads((offline_run / "manifest.json").read_bytes())
    assert manifest["malloc"] == {"MALLOC_ARENA_MAX": 2, "MALLOC_MMAP_THRESHOLD_": 131072, "MALLOC_TRIM_THRESHOLD_": 131072}
    proc = run_cli("capture", "--offline", "--offline-speed", "0", "--ws-shards", "1", "--run-id", "m", "--data-dir", str(data_dir),
                   env={"MALLOC_ARENA_MAX": "4"})
    assert proc.returncode == 0, proc.stderr
    manifest = orjson.loads((data_dir / "runs" / "m" / "manifest.json").read_bytes())
    assert manifest["malloc"]["MALLOC_ARENA_MAX"] == "from environment: 4"
    assert manifest["malloc"]["MALLOC_MMAP_THRESHOLD_"] == 131072


def test_gil_switch_interval_holds_during_the_run_and_is_restored_after(tmp_path):
    import dataclasses
    import sys
    import threading

    from pm_arb.plant.run_capture import run_capture

    before = sys.getswitchinterval()
    config = dataclasses.replace(Config(), offline=True, offline_speed=1.0, ws_shards=1, data_dir=str(tmp_path), gil_switch_interval_ms=2.5)
    seen: list[float] = []
    done = threading.Event()

    def watch():
        while not done.wait(0.01):
            seen.append(sys.getswitchinterval())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        code, _run_dir, _last = run_capture(config, "gil", "offline", duration_s=1.0, status=False)
    finally:
        done.set()
        watcher.join()
    assert code == 0
    assert 0.0025 in seen  # what the capture ran with
    assert sys.getswitchinterval() == before
