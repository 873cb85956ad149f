"""Real faults against real processes: what pm_arb loses (nothing it received) and what it records."""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import orjson
import pykka
import pytest

from pm_arb.actors import messages as m
from pm_arb.actors.gauge import DepthGauge
from pm_arb.actors.writer import WriterActor
from pm_arb.clock import ManualClock
from pm_arb.commands.verify import verify_run
from pm_arb.config import Config
from pm_arb.sim.exchange import SimExchange
from tests.conftest import Probe, assert_one_line_error, read_runlog_dicts, records_by_shard, run_cli, start_cli, stop_with, wait_for_line, wait_for_runlog
from tests.test_capture_online import FAST, events, start_capture

CHURN_SECONDS = float(os.environ.get("PM_ARB_TEST_CHURN_SECONDS", "60"))


def per_shard_tokens(run_dir: Path) -> dict[int, set[str]]:
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    out: dict[int, set[str]] = {}
    for mk in manifest["universe"]["markets"]:
        out.setdefault(mk["shard"], set()).update((mk["yes_token"], mk["no_token"]))
    return out


def captured_payloads(run_dir: Path) -> dict[int, list[bytes]]:
    return {s: [r.payload for r in recs] for s, recs in records_by_shard(run_dir).items()}


def test_server_closing_every_connection_every_few_seconds_loses_nothing(data_dir):
    """Fault 1: for a minute, the server closes every connection every 3 s."""
    with SimExchange(markets=40, rate=600, record_sent=True) as sim:
        proc, run_dir = start_capture(sim, data_dir, "churn", "--no-capture-universe-refresh-enable", "--ws-ping-interval-seconds", "30")
        wait_for_runlog(run_dir, lambda r: r["type"] == "run_confirmed")
        rounds = 0
        end = time.monotonic() + CHURN_SECONDS
        while time.monotonic() < end:
            time.sleep(3)
            rounds += 1
            sim.close_all_connections(1012, "service restart")
        wait_for_runlog(run_dir, lambda r: len(events(run_dir, "shard_connected")) >= 4 * (rounds + 1))
        sim.send_data = False
        time.sleep(0.5)
        code, _, err = stop_with(proc)
        assert code == 0, err
        sent = {s: [p for conn in sim.sent_payloads(toks) for p in conn] for s, toks in per_shard_tokens(run_dir).items()}
    assert run_cli("capture-verify", "--run-dir", str(run_dir)).returncode == 0
    got = captured_payloads(run_dir)
    for s, payloads in sent.items():
        assert got[s] == payloads, f"shard {s}: captured {len(got[s])} of {len(payloads)} sent"
    closes = [r for r in events(run_dir, "shard_disconnected") if r["cause"] == "server_close"]
    assert len(closes) >= 4 * rounds and all("1012" in r["detail"] for r in closes)
    assert len([r for r in events(run_dir, "shard_reconnect") if not r["planned"]]) == len(closes)


def test_garbage_from_the_server_is_recorded_as_received_and_counted(data_dir):
    """Fault 3: invalid UTF-8, a binary frame, a 5 MiB frame, invalid JSON."""
    big = b'{"event_type":"book","pad":"' + b"x" * (5 * 1024 * 1024) + b'"}'
    garbage = [(b"\xff\xfe\x80 not utf-8", False), (b"\x00\x01binary\x02", True), (big, False), (b'{"event_type": "book", "asset_id": ', False),
               (b'{"asset_id":"7132","event_type":"pri', False)]
    with SimExchange(markets=20, rate=200, record_sent=True) as sim:
        proc, run_dir = start_capture(sim, data_dir, "garbage", "--no-capture-universe-refresh-enable")
        wait_for_runlog(run_dir, lambda r: r["type"] == "run_confirmed")
        for payload, binary in garbage:
            assert sim.send_to_all(payload, binary=binary) == 4
        wait_for_runlog(run_dir, lambda r: r["type"] == "heartbeat" and all(v.get("not_json_frames", 0) >= 3 for v in r["shards"].values()) and len(r["shards"]) == 4)
        sim.send_data = False
        time.sleep(0.5)
        code, _, err = stop_with(proc)
        assert code == 0, err
    assert run_cli("capture-verify", "--run-dir", str(run_dir)).returncode == 0
    for recs in records_by_shard(run_dir).values():
        by_payload = {r.payload: r for r in recs}
        for payload, binary in garbage:
            rec = by_payload[payload]  # stored byte for byte
            assert rec.opcode == (2 if binary else 1)
        assert by_payload[garbage[0][0]].flags == 2 and by_payload[garbage[1][0]].flags == 2
        assert by_payload[big].flags == 0 and by_payload[garbage[3][0]].flags == 2 and by_payload[garbage[4][0]].flags == 2
    # The heartbeat's count and the records' flag agree: one rule decides both (ADR/0007).
    last_hb = [r for r in read_runlog_dicts(run_dir) if r["type"] == "heartbeat"][-1]
    for s, recs in records_by_shard(run_dir).items():
        assert last_hb["shards"][str(s)]["not_json_frames"] == sum(1 for r in recs if r.flags & 2) == 4
    assert not [r for r in events(run_dir, "shard_disconnected") if not r["planned"]]  # the capture went on


def test_sigkill_mid_run_then_verify_and_repair(data_dir):
    """Fault 4: every record before a torn tail verifies; repair truncates it and rebuilds the idx."""
    with SimExchange(markets=40, rate=3000) as sim:
        proc, run_dir = start_capture(sim, data_dir, "killed", "--no-capture-universe-refresh-enable", "--batch-max-frames", "8")
        wait_for_runlog(run_dir, lambda r: r["type"] == "heartbeat" and r["frames_total"] > 2000)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    before = verify_run(run_dir, show_progress=False)
    assert before["totals"]["crc_mismatch"] == 0 and before["totals"]["frames"] > 1000
    runlog = (run_dir / "runlog.ndjson").read_bytes()
    if not runlog.endswith(b"\n"):
        runlog_torn = True
    else:  # the kill landed between lines; make the tear that a kill mid-line leaves
        runlog_torn = False
        (run_dir / "runlog.ndjson").write_bytes(runlog + b'{"type":"heartbeat","seq":')
    proc = run_cli("capture-verify", "--run-dir", str(run_dir), "--repair", "--json")
    doc = orjson.loads(proc.stdout)
    assert proc.returncode == 0 and doc["ok"], doc["totals"]
    assert doc["totals"]["frames"] == before["totals"]["frames"]
    audit = run_cli("capture-audit", "--run-dir", str(run_dir))
    assert "torn last line (a crash cut it short), ignored" in audit.stdout and "Traceback" not in audit.stderr
    # Killed from outside: no fatal.json, no run_stop. The files hold every frame the heartbeats
    # say was written, and the check still fails the run, saying where it ends.
    check = run_cli("capture-check", "--run-dir", str(run_dir))
    assert check.returncode == 1 and "PASS  crc_mismatch" in check.stdout and "PASS  fatal" in check.stdout
    assert "FAIL  clean_stop         no run_stop: the runlog ends at seq" in check.stdout
    replay = orjson.loads(run_cli("capture-replay", "--run-dir", str(run_dir), "--json").stdout)
    assert replay["state"]["phase"] == "running" and replay["warnings"], runlog_torn


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or 'not root'}); the injected ENOSPC test covers the writer path")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_goes_fatal_cleanly(small_tmpfs, tmp_path):
    """Fault 5: a real full filesystem (6 MiB tmpfs)."""
    data = small_tmpfs / "data"
    with SimExchange(markets=40, rate=20000) as sim:
        proc, run_dir = start_capture(sim, data, "full", "--no-capture-universe-refresh-enable")
        code = proc.wait(timeout=60)
        err = proc.stderr.read()
    assert code == 1, err
    assert "FATAL (disk_full)" in err and "Traceback" not in err
    fatal = orjson.loads((run_dir / "fatal.json").read_bytes())
    assert fatal["reason"] == "disk_full" and "No space left on device" in fatal["message"]
    assert [r for r in read_runlog_dicts(run_dir) if r["type"] == "fatal"][0]["reason"] == "disk_full"
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    first = verify_run(copy, show_progress=False)
    assert first["totals"]["crc_mismatch"] == 0 and first["totals"]["frames"] > 1000
    assert verify_run(copy, repair=True, show_progress=False)["ok"]


def test_injected_enospc_at_the_writer_makes_the_run_fatal(tmp_path):
    """Fault 5, without privileges: the writer's append raises ENOSPC."""
    clock = ManualClock()
    config = Config(ws_shards=1)

    class FullDiskWriter(WriterActor):
        def _writer_for(self, shard):
            w = super()._writer_for(shard)

            def full(frames):
                raise OSError(errno.ENOSPC, "No space left on device")

            w.append_batch = full
            return w

    sup = Probe.start()
    gauge = DepthGauge()
    writer = FullDiskWriter.start(tmp_path, config, clock, {0: gauge})
    writer.ask(m.AttachWriterPeers(sup, None))
    gauge.add(2)
    writer.tell(m.AppendFrames(0, [(1, 1, 0, 1, b"a"), (2, 2, 0, 1, b"b")]))
    gauge.add(1)
    writer.tell(m.AppendFrames(0, [(3, 3, 0, 1, b"c")]))
    summary = writer.ask(m.CloseWriter())
    try:
        (cond,) = [x for x in sup.ask("got") if isinstance(x, m.FatalCondition)]
        assert cond.reason == "disk_full" and "errno 28" in cond.message
        assert summary["failed"] == "disk_full" and summary["frames_lost_after_failure"] == 1 and gauge.depth == 0
        assert not (tmp_path / ".reserve").exists()
    finally:
        pykka.ActorRegistry.stop_all()


def test_a_failed_fsync_is_fatal_and_never_retried(tmp_path):
    """After an fsync error the kernel may have dropped dirty pages: the run must stop, not retry.
    fsync on a pipe fails for real (EINVAL), on the writer's syncer thread."""
    from pm_arb.actors.writer import SyncFailed, Syncer

    got = []
    r, w = os.pipe()
    try:
        syncer = Syncer(got.append)
        syncer.request([w])
        syncer._thread.join(timeout=10)  # the syncer ends itself after reporting the failure
        assert len(got) == 1 and isinstance(got[0], SyncFailed) and got[0].error.errno == errno.EINVAL
    finally:
        os.close(r)
        os.close(w)

    sup = Probe.start()
    writer = WriterActor.start(tmp_path, Config(ws_shards=1), ManualClock(), {0: DepthGauge()})
    try:
        writer.ask(m.AttachWriterPeers(sup, None))
        writer.tell(got[0])
        writer.tell(SyncFailed(OSError(errno.EIO, "Input/output error")))  # a second failure is not reported again
        summary = writer.ask(m.CloseWriter())
        conds = [x for x in sup.ask("got") if isinstance(x, m.FatalCondition)]
        assert [c.reason for c in conds] == ["fsync_error"] and "no retry" in conds[0].message
        assert summary["failed"] == "fsync_error"
    finally:
        pykka.ActorRegistry.stop_all()


def test_gamma_timeouts_are_retried_bounded_and_reported():
    """Fault 6: a Gamma that hangs; the never-ending pagination and 500s are in test_capture_online."""
    with SimExchange(markets=5, rate=0) as sim:
        sim.gamma_script.extend(["sleep:2", "sleep:2", "sleep:2"])
        t0 = time.monotonic()
        proc = run_cli("discover", "--gamma-base-url", sim.gamma_url, "--gamma-request-timeout-seconds", "0.3",
                       "--gamma-max-retries", "2", "--gamma-retry-backoff-seconds", "0.01")
        assert time.monotonic() - t0 < 20
        assert "timed out after 0.3 s (after 2 retries)" in assert_one_line_error(proc, 1)


@pytest.fixture
def readonly_dir(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], capture_output=True)
    if res.returncode != 0:
        os.chmod(d, 0o500)  # not root: permissions are enough
    yield d
    subprocess.run(["umount", "-l", str(d)], capture_output=True)
    os.chmod(d, 0o700)


def test_unwritable_data_dir_is_exit_2(readonly_dir):
    """Fault 7."""
    proc = run_cli("capture", "--offline", "--data-dir", str(readonly_dir))
    line = assert_one_line_error(proc, 2)
    assert "choose another --data-dir" in line


def test_run_dir_that_is_a_file_and_data_dir_through_a_file(data_dir):
    """Fault 7: nothing is overwritten."""
    (data_dir / "runs").mkdir()
    (data_dir / "runs" / "taken").write_text("precious")
    proc = run_cli("capture", "--offline", "--run-id", "taken", "--data-dir", str(data_dir))
    assert "already exists (a file)" in assert_one_line_error(proc, 2)
    assert (data_dir / "runs" / "taken").read_text() == "precious"
    blocker = data_dir / "blocker"
    blocker.write_text("x")
    proc = run_cli("capture", "--offline", "--data-dir", str(blocker / "deeper"))
    assert "choose another --data-dir" in assert_one_line_error(proc, 2)
    assert blocker.read_text() == "x"


def test_two_captures_racing_for_one_run_id(data_dir):
    """Fault 7: the second one is refused; the first one's files are intact."""
    first = start_cli("capture", "--offline", "--offline-speed", "1", "--run-id", "same", "--data-dir", str(data_dir), "--ws-shards", "2")
    run_dir = data_dir / "runs" / "same"
    assert wait_for_line(first) == str(run_dir)
    second = run_cli("capture", "--offline", "--run-id", "same", "--data-dir", str(data_dir))
    assert "already exists" in assert_one_line_error(second, 2)
    code, _, err = stop_with(first)
    assert code == 0, err
    assert run_cli("capture-verify", "--run-dir", str(run_dir)).returncode == 0


def test_fuzzed_frames_files_never_crash_verify_and_always_show_a_defect(offline_run, tmp_path):
    """Byte flips and truncations of a real frames file, fixed seed: a defect every time, no crash."""
    src = offline_run / "capture" / "shard_01.frames"
    original = src.read_bytes()
    rng = random.Random(20261124)
    run = tmp_path / "fuzz"
    shutil.copytree(offline_run, run)
    target = run / "capture" / "shard_01.frames"
    cases = 0
    for case in range(300):
        data = bytearray(original)
        if case % 3 == 0:
            data = data[: rng.randrange(0, len(data))]
        else:
            for _ in range(rng.choice((1, 1, 1, 2, 5))):
                data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        if bytes(data) == original:
            continue
        target.write_bytes(bytes(data))
        result = verify_run(run, show_progress=False)
        assert not result["ok"], f"case {case}: damage not reported"
        t = result["totals"]
        assert t["crc_mismatch"] + t["seq_gaps"] + t["idx_mismatch"] + t["torn_tail_bytes"] + t["file_errors"] > 0
        cases += 1
    assert cases >= 290
