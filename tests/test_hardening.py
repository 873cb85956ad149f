"""Issue 13's hostile cases, as a class each: live runs, loss the idx vouches for, every idx
byte, a failing repair, damaged file headers. Real files and CLI subprocesses throughout."""

from __future__ import annotations

import os
import shutil
import subprocess

import orjson
import pytest

from pm_arb.commands.slice_run import slice_run
from pm_arb.commands.verify import verify_run
from pm_arb.store.frames_format import FILE_HEADER_SIZE, IDX_ENTRY_SIZE, RECORD_OVERHEAD
from pm_arb.store.shard_files import frames_path, idx_path, load_idx
from tests.conftest import assert_one_line_error, records_by_shard, run_cli, start_cli, stop_with, wait_for_line, wait_for_runlog

SHARD = 1  # a shard of the shared offline run with hundreds of records


def idx_entries(path):
    return load_idx(path)[0]


def verify_json(run_dir, *extra):
    proc = run_cli("capture-verify", "--run-dir", str(run_dir), "--json", *extra)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, orjson.loads(proc.stdout)


def shard_row(doc, shard=SHARD):
    return next(r for r in doc["shards"] if r["shard"] == shard)


# --- a live run: repair refuses, verify says so ---------------------------------------------


def test_repair_refuses_a_run_a_capture_holds_and_verify_says_it_is_live(run_copy):
    """A capture mid-batch: the frames of the batch are half written, its idx entries not yet."""
    capture = run_copy / "capture"
    frames, idx = frames_path(capture, SHARD), idx_path(capture, SHARD)
    entries = idx_entries(idx)
    os.truncate(idx, FILE_HEADER_SIZE + (len(entries) - 3) * IDX_ENTRY_SIZE)  # the idx lags, as while writing
    with open(frames, "ab") as fh:
        fh.write(b"FRM1\x10\x00")  # the start of the next record
    frames_before, idx_before = frames.read_bytes(), idx.read_bytes()
    from pm_arb.store import run_lock

    fd = run_lock.hold_for_capture(run_copy)  # what `capture` holds for its whole run
    try:
        proc = run_cli("capture-verify", "--run-dir", str(run_copy), "--repair")
        line = assert_one_line_error(proc, 2)
        assert "is live: a capture is writing it" in line and "nothing was changed" in line
        assert frames.read_bytes() == frames_before and idx.read_bytes() == idx_before
        assert not list(capture.glob("*.rebuild"))
        code, doc = verify_json(run_copy)
        assert code == 0 and doc["verdict"] == "PASS" and doc["live"] is True, doc["totals"]
        assert doc["totals"]["torn_tail_bytes"] == 0 and doc["totals"]["growing_tail_bytes"] == 6
        assert doc["totals"]["frames_not_yet_indexed"] == 3 and doc["totals"]["idx_mismatch"] == 0
        assert doc["runlog_check"] == {"checked": False, "reason": "the run is live: a capture is still writing it"}
        text = run_cli("capture-verify", "--run-dir", str(run_copy)).stdout
        assert "note: the run is live (a capture is writing it): its growing tail (6 B, 3 frames not yet in the idx)" in text
    finally:
        run_lock.release(fd)
    # Once the capture is gone, the same bytes are a crash's leftovers, and repair may fix them.
    code, doc = verify_json(run_copy)
    assert code == 1 and doc["live"] is False and doc["totals"]["torn_tail_bytes"] == 6
    code, doc = verify_json(run_copy, "--repair")
    assert code == 0 and doc["verdict"] == "PASS", doc["totals"]


def test_repair_during_a_real_capture_is_refused_and_the_run_stays_clean(data_dir):
    proc = start_cli("capture", "--offline", "--offline-speed", "1", "--run-id", "live", "--data-dir", str(data_dir), "--ws-shards", "2")
    run_dir = data_dir / "runs" / "live"
    assert wait_for_line(proc) == str(run_dir)
    wait_for_runlog(run_dir, lambda r: r["type"] == "heartbeat" and r.get("frames_total", 0) > 0)
    repair = run_cli("capture-verify", "--run-dir", str(run_dir), "--repair")
    assert "is live" in assert_one_line_error(repair, 2)
    live = run_cli("capture-verify", "--run-dir", str(run_dir))
    assert live.returncode == 0 and "note: the run is live" in live.stdout, live.stdout
    code, _, err = stop_with(proc)
    assert code == 0, err
    check = run_cli("capture-check", "--run-dir", str(run_dir))
    assert check.returncode == 0, check.stdout
    assert verify_json(run_dir)[1]["live"] is False


# --- a record the idx vouches for is loss, never a torn tail -----------------------------------


def _cut_positions():
    # inside the last record's header, its checksum, its payload; one byte short of its end
    return [5, 40, -1]


@pytest.mark.parametrize("cut", _cut_positions())
def test_file_cut_inside_a_record_the_idx_lists_is_loss_and_repair_keeps_it(run_copy, cut):
    capture = run_copy / "capture"
    frames = frames_path(capture, SHARD)
    last = idx_entries(idx_path(capture, SHARD))[-1]
    end = last.offset + RECORD_OVERHEAD + last.payload_len
    os.truncate(frames, end - 1 if cut == -1 else last.offset + cut)
    size = frames.stat().st_size
    code, doc = verify_json(run_copy)
    row = shard_row(doc)
    assert code == 1 and row["torn_tail_bytes"] == 0 and row["crc_mismatch"] == 1
    crc = next(d for d in row["defects"] if d["kind"] == "crc_mismatch")
    assert crc["seq"] == last.seq and "loss, not a crash tear" in crc["reason"]
    code, doc = verify_json(run_copy, "--repair")
    assert code == 1 and frames.stat().st_size == size  # evidence stays
    assert doc["repairs"][SHARD]["torn_tail_bytes_truncated"] == 0
    # ... and so does the idx entry that vouches for it, so a second repair says the same.
    code, doc = verify_json(run_copy, "--repair")
    assert code == 1 and shard_row(doc)["crc_mismatch"] == 1 and shard_row(doc)["torn_tail_bytes"] == 0
    assert frames.stat().st_size == size


def test_zeroed_and_cut_records_the_idx_lists_are_loss_anywhere_before_its_end(run_copy):
    """Power loss that zeroes written records, or a cut several records before the idx's end."""
    capture = run_copy / "capture"
    frames = frames_path(capture, SHARD)
    entries = idx_entries(idx_path(capture, SHARD))
    data = bytearray(frames.read_bytes())
    zero_from = entries[-2].offset
    data[zero_from:] = bytes(len(data) - zero_from)
    frames.write_bytes(data)
    code, doc = verify_json(run_copy)
    assert code == 1 and shard_row(doc)["torn_tail_bytes"] == 0 and shard_row(doc)["crc_mismatch"] == 1
    size = frames.stat().st_size
    verify_json(run_copy, "--repair")
    assert frames.stat().st_size == size
    os.truncate(frames, entries[-10].offset + 7)
    code, doc = verify_json(run_copy)
    assert code == 1 and shard_row(doc)["torn_tail_bytes"] == 0
    assert shard_row(doc)["crc_mismatch"] == 1 and shard_row(doc)["idx_mismatch"] == 9  # entries past the end
    verify_json(run_copy, "--repair")
    assert frames.stat().st_size == entries[-10].offset + 7


# --- every idx byte is checked -------------------------------------------------------------------


def test_every_flipped_idx_byte_fails_verify_and_repair_rebuilds_it(run_copy):
    """Each of an entry's 40 bytes, in the first, a middle and the last entry (in-process: 120 cases)."""
    idx = idx_path(run_copy / "capture", SHARD)
    original = idx.read_bytes()
    entries = idx_entries(idx)
    for k in (0, 7, len(entries) - 1):
        for byte in range(IDX_ENTRY_SIZE):
            data = bytearray(original)
            data[FILE_HEADER_SIZE + k * IDX_ENTRY_SIZE + byte] ^= 0x20
            idx.write_bytes(data)
            doc = verify_run(run_copy, show_progress=False)
            assert not doc["ok"] and doc["totals"]["idx_mismatch"] >= 1, (k, byte, doc["totals"])
            assert doc["totals"]["torn_tail_bytes"] == 0 and doc["totals"]["crc_mismatch"] == 0, (k, byte)
            if byte in (14, 15):  # the reserved bytes
                d = next(d for d in shard_row(doc)["defects"] if d["kind"] == "idx_mismatch")
                assert d["fields"] == "reserved" and d["seq"] == entries[k].seq
            if byte in (0, 7, 14, 15, 16, 39):  # offset, reserved, seq, wall: derived data, rebuilt from the frames
                doc = verify_run(run_copy, repair=True, show_progress=False)
                assert doc["ok"] and idx.read_bytes() == original, (k, byte, doc["totals"])
    idx.write_bytes(original)


def test_flipped_reserved_idx_byte_fails_the_cli_verify(run_copy):
    idx = idx_path(run_copy / "capture", SHARD)
    data = bytearray(idx.read_bytes())
    data[FILE_HEADER_SIZE + 3 * IDX_ENTRY_SIZE + 15] ^= 0x01
    idx.write_bytes(data)
    proc = run_cli("capture-verify", "--run-dir", str(run_copy))
    assert proc.returncode == 1 and "kind=idx_mismatch, seq=3" in proc.stdout and "fields=reserved" in proc.stdout


# --- a repair that fails part-way ----------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """Mount a real tmpfs of the given size (root only); unmounted at the end."""
    mounted = []

    def mount(size: str):
        mnt = tmp_path / f"fs{len(mounted)}"
        mnt.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or 'not root'})")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(path):
    """Write until the filesystem refuses: 64 KiB blocks, then single bytes for the last page."""
    with open(path / "filler", "wb", buffering=0) as fh:
        for block in (65536, 1):
            try:
                while True:
                    fh.write(b"\0" * block)
            except OSError:
                pass


def test_repair_on_a_full_disk_names_the_file_cleans_up_and_truncates_nothing(offline_run, small_fs):
    full_tmpfs = small_fs("4m")
    run = full_tmpfs / "run"
    shutil.copytree(offline_run, run)
    capture = run / "capture"
    frames, idx = frames_path(capture, SHARD), idx_path(capture, SHARD)
    entries = idx_entries(idx)
    os.truncate(frames, entries[-1].offset + 20)  # a crash mid-record: a torn tail ...
    os.truncate(idx, FILE_HEADER_SIZE + (len(entries) - 30) * IDX_ENTRY_SIZE)  # ... and a lagging idx
    frames_before, idx_before = frames.read_bytes(), idx.read_bytes()
    fill(full_tmpfs)
    proc = run_cli("capture-verify", "--run-dir", str(run), "--repair")
    line = assert_one_line_error(proc, 1)
    assert f"cannot write {capture / 'shard_01.idx.rebuild'}: No space left on device" in line
    assert "run `pm_arb capture-verify --repair` again" in line and "as they were" in line
    assert not list(capture.glob("*.rebuild"))
    assert frames.read_bytes() == frames_before and idx.read_bytes() == idx_before
    (full_tmpfs / "filler").unlink()
    code, doc = verify_json(run, "--repair")
    assert doc["repairs"][SHARD]["torn_tail_bytes_truncated"] == 20 and doc["repairs"][SHARD]["idx_entries_rebuilt"] == 29
    t = doc["totals"]
    # What is left is the one frame the crash cut, which the runlog says was written.
    assert (t["torn_tail_bytes"], t["idx_mismatch"], t["crc_mismatch"], t["frames_missing"]) == (0, 0, 0, 1), t


# --- a damaged file header does not hide the records behind it ----------------------------------


def test_one_flipped_header_byte_is_reported_and_every_record_still_checked(offline_run, run_copy, tmp_path):
    """Each of the 16 header bytes of the frames file and of the idx (in-process: 32 cases)."""
    n = len(records_by_shard(offline_run)[SHARD])
    capture = run_copy / "capture"
    for which in ("frames", "idx"):
        path = frames_path(capture, SHARD) if which == "frames" else idx_path(capture, SHARD)
        original = path.read_bytes()
        for byte in range(FILE_HEADER_SIZE):
            data = bytearray(original)
            data[byte] ^= 0x04
            path.write_bytes(data)
            doc = verify_run(run_copy, show_progress=False)
            row = shard_row(doc)
            assert not doc["ok"] and row["header_damage"] == 1 and row["file_error"] is None, (which, byte, row)
            assert row["frames"] == n and row["crc_mismatch"] == 0 and row["idx_mismatch"] == 0, (which, byte, row)
            assert f"shard_01.{which} has a damaged header" in row["defects"][0]["reason"]
            out = tmp_path / f"cut-{which}-{byte}"
            result = slice_run(run_copy, out, from_seq=0, shards=[SHARD], show_progress=False)
            assert result["frames"] == n and verify_run(out, show_progress=False)["ok"]
            assert bool(result["warnings"]) == (which == "frames")
        path.write_bytes(original)


def test_damaged_frames_header_through_the_cli(offline_run, run_copy, tmp_path):
    frames = frames_path(run_copy / "capture", SHARD)
    data = bytearray(frames.read_bytes())
    data[11] ^= 0x01  # the shard number
    frames.write_bytes(data)
    n = len(records_by_shard(offline_run)[SHARD])
    proc = run_cli("capture-verify", "--run-dir", str(run_copy))
    assert proc.returncode == 1 and "header_damage=1" in proc.stdout
    assert "shard_01.frames has a damaged header (shard 257, expected 1; checksum mismatch)" in proc.stdout
    assert f"{n:,} frames" in next(ln for ln in proc.stdout.splitlines() if ln.startswith("shard 01"))
    out = tmp_path / "cut"
    sl = run_cli("capture-slice", "--run-dir", str(run_copy), "--out", str(out), "--from-seq", "0", "--shard", str(SHARD))
    assert sl.returncode == 0, sl.stderr
    assert "warning: shard_01.frames has a damaged header" in sl.stderr and f"shard 01: {n:,} frames" in sl.stdout
    assert run_cli("capture-verify", "--run-dir", str(out)).returncode == 0
    check = run_cli("capture-check", "--run-dir", str(run_copy))
    assert check.returncode == 1 and "header_damage=1" in check.stdout


# --- capture-slice: validate first, all or nothing, never an empty bundle -------------------------


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (["--to-seq", "99999999999999999999999"], 2, "Invalid value for '--to-seq'"),
        (["--from-seq", str(2**64)], 2, "Invalid value for '--from-seq'"),
        (["--to-wall", "999999999999999999999999999"], 2, "receive times are signed 64-bit ns"),
        (["--from-wall", "-999999999999999999999999999"], 2, "receive times are signed 64-bit ns"),
        (["--to-wall", "9999-12-31T23:59:59Z"], 2, "years 1677 to 2262"),
        (["--from-seq", "0", "--shard", "77"], 2, "no shard 77 in"),
        (["--from-seq", "0", "--shard", "99999999"], 2, "Invalid value for '--shard'"),
        (["--from-seq", "999999"], 1, "the range selects no frames (shard 0 holds seq 0.."),
        (["--from-wall", "1970-01-01T00:00:01Z", "--to-wall", "1970-01-01T00:00:02Z"], 1, "the range selects no frames"),
    ],
)
def test_slice_that_cannot_or_does_not_select_anything_writes_nothing(offline_run, tmp_path, args, code, fragment):
    out = tmp_path / "deeper" / "cut"
    proc = run_cli("capture-slice", "--run-dir", str(offline_run), "--out", str(out), *args)
    line = assert_one_line_error(proc, code)
    assert fragment in line, line
    assert not (tmp_path / "deeper").exists(), list((tmp_path / "deeper").rglob("*"))
    if code == 1:  # it got as far as writing: the same --out works at once
        proc = run_cli("capture-slice", "--run-dir", str(offline_run), "--out", str(out), "--from-seq", "0", "--to-seq", "5")
        assert proc.returncode == 0, proc.stderr


def test_slice_that_fails_part_way_leaves_no_partial_bundle(offline_run, small_fs):
    """A slice onto a filesystem too small for it: ENOSPC in the middle of copying frames."""
    fs = small_fs("1m")
    out = fs / "cut"
    out.mkdir()  # an empty --out is allowed, and must stay empty on failure
    proc = run_cli("capture-slice", "--run-dir", str(offline_run), "--out", str(out), "--from-seq", "0")
    assert "No space left on device" in assert_one_line_error(proc, 1)
    assert out.is_dir() and not list(out.iterdir())
    assert sorted(p.name for p in fs.iterdir()) == ["cut"]  # no staging dir left beside it
    proc = run_cli("capture-slice", "--run-dir", str(offline_run), "--out", str(out), "--from-seq", "0", "--to-seq", "20")
    assert proc.returncode == 0, proc.stderr
    assert run_cli("capture-verify", "--run-dir", str(out)).returncode == 0


# --- every number has bounds, and no option takes nan or infinity --------------------------------


def _number_fields():
    from pm_arb.config import FIELDS

    return {n: f.metadata for n, f in FIELDS.items() if f.metadata["check"] not in ("bool", "path", "str", "http-url", "ws-url")}


def test_every_number_setting_has_an_upper_bound_enforced_for_flags_and_env():
    from pm_arb.config import ConfigError, env_name, load_config

    fields = _number_fields()
    assert "ws_shards" in fields and len(fields) >= 30
    for name, meta in fields.items():
        most = meta["most"] if meta["check"] != "pct" else 100
        assert most is not None, f"{name} has no upper bound"
        too_big = str(int(most) + 1) if meta["check"].startswith("int") else repr(most * 1.5)
        for flags, env in (({name: too_big}, {}), ({}, {env_name(name): too_big})):
            with pytest.raises(ConfigError) as err:
                load_config(flags, env)
            assert "expected" in err.value.message and err.value.exit_code == 2
        load_config({name: str(int(most)) if meta["check"].startswith("int") else str(most)}, {})  # the bound itself is fine


def test_non_finite_values_are_refused_by_every_float_setting():
    from pm_arb.config import ConfigError, env_name, load_config

    floats = [n for n, meta in _number_fields().items() if not meta["check"].startswith("int")]
    assert len(floats) >= 15
    for name in floats:
        for raw in ("nan", "NaN", "inf", "-inf", "Infinity", "1e309"):
            for flags, env in (({name: raw}, {}), ({}, {env_name(name): raw})):
                with pytest.raises(ConfigError):
                    load_config(flags, env)


def _cli_params():
    import click

    from pm_arb.cli import cli

    for cmd_name, cmd in cli.commands.items():
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.is_flag:
                yield cmd_name, param


def test_every_float_option_refuses_nan_and_infinity_and_every_count_option_has_a_maximum():
    import click

    floats = 0
    for cmd_name, param in _cli_params():
        if isinstance(param.type, click.FloatRange) or param.type is click.FLOAT:
            floats += 1
            for raw in ("nan", "inf", "-inf"):
                with pytest.raises(click.BadParameter):
                    param.type.convert(raw, param, None)
        if isinstance(param.type, click.IntRange) and param.name not in ("until_seq",):
            assert param.type.max is not None, f"{cmd_name} --{param.name} has no maximum"
    assert floats >= 4


@pytest.mark.parametrize(
    "args, env, fragment",
    [
        (["capture", "--offline", "--ws-shards", "100000000"], {}, "--ws-shards (flag): expected an integer from 1 to 256"),
        (["capture", "--offline", "--ws-shards", "100000"], {}, "--ws-shards (flag): expected an integer from 1 to 256"),
        (["capture", "--offline"], {"PM_ARB_WS_SHARDS": "100000"}, "PM_ARB_WS_SHARDS (environment): expected an integer from 1 to 256"),
        (["capture", "--offline"], {"PM_ARB_WRITE_Q_CAPACITY": "9" * 5000}, "PM_ARB_WRITE_Q_CAPACITY (environment)"),
        (["capture", "--offline", "--offline-speed", "inf"], {}, "--offline-speed (flag): expected a finite number"),
        (["capture", "--offline"], {"PM_ARB_WS_PING_INTERVAL_SECONDS": "nan"}, "PM_ARB_WS_PING_INTERVAL_SECONDS (environment)"),
        (["capture", "--offline", "--duration-seconds", "nan"], {}, "'nan' is not a finite number"),
        (["capture", "--sim", "--sim-rate", "inf"], {}, "Invalid value for '--sim-rate'"),
        (["capture", "--sim", "--sim-rate", "nan"], {}, "'nan' is not a finite number"),
        (["capture", "--sim", "--sim-markets", "100000000"], {}, "Invalid value for '--sim-markets'"),
        (["capture-audit", "--run-dir", ".", "--gap-threshold-seconds", "nan"], {}, "'nan' is not a finite number"),
        (["capture-audit", "--run-dir", ".", "--gap-threshold-seconds", "inf"], {}, "Invalid value for '--gap-threshold-seconds'"),
        (["sim-exchange", "--rate", "nan"], {}, "'nan' is not a finite number"),
        (["capture-bench", "--shards", "100000"], {}, "Invalid value for '--shards'"),
    ],
)
def test_out_of_range_and_non_finite_inputs_exit_2_at_once(args, env, fragment, data_dir):
    proc = run_cli(*args, env={"PM_ARB_DATA_DIR": str(data_dir), **env}, timeout=30)
    line = assert_one_line_error(proc, 2)
    assert fragment in line, line
    assert not (data_dir / "runs").exists() or not any((data_dir / "runs").iterdir())


# --- an empty runlog is treated like a missing one, by every command that reads it ---------------


RUNLOG_READERS = ["capture-audit", "capture-latency-report", "capture-check", "capture-replay"]


@pytest.mark.parametrize(
    "cmd, content",
    [(cmd, b"") for cmd in RUNLOG_READERS] + [("capture-replay", b"\n\n  \n"), ("capture-audit", b'{"type":"run_start","seq":')],
    ids=[*RUNLOG_READERS, "blank lines", "only a torn line"],
)
def test_a_runlog_without_records_is_an_error_like_a_missing_one(run_copy, cmd, content):
    (run_copy / "runlog.ndjson").write_bytes(content)
    args = ["--skip-bad-lines"] if content.strip() else []
    line = assert_one_line_error(run_cli(cmd, "--run-dir", str(run_copy), *args), 2)
    assert "runlog.ndjson is empty" in line or "runlog.ndjson has no readable record" in line, line
    assert "nothing to fold" in line


def test_verify_notes_an_empty_runlog_as_it_does_a_missing_one(run_copy):
    capture = run_copy / "capture"
    entries = idx_entries(idx_path(capture, SHARD))
    os.truncate(frames_path(capture, SHARD), entries[-5].offset)  # frames cut between records ...
    os.truncate(idx_path(capture, SHARD), FILE_HEADER_SIZE + (len(entries) - 5) * IDX_ENTRY_SIZE)
    (run_copy / "runlog.ndjson").write_bytes(b"")  # ... and the runlog that would tell emptied
    proc = run_cli("capture-verify", "--run-dir", str(run_copy))
    assert proc.returncode == 0, proc.stdout
    assert "note: files not checked against the runlog's frame counts:" in proc.stdout
    assert "runlog.ndjson is empty" in proc.stdout
    code, doc = verify_json(run_copy)
    assert doc["runlog_check"]["checked"] is False and "is empty" in doc["runlog_check"]["reason"]


# --- default run ids never collide ------------------------------------------------------------


def test_default_run_ids_are_unique_in_one_instant_and_sort_by_time():
    import re
    from datetime import datetime, timedelta, timezone

    from freezegun import freeze_time

    from pm_arb.plant.run_capture import RUN_ID_RE, default_run_id

    t = datetime(2026, 11, 25, 13, 0, 0, 123456, tzinfo=timezone.utc)
    with freeze_time(t):
        ids = [default_run_id() for _ in range(3)]
    assert len(set(ids)) == 3
    assert all(RUN_ID_RE.match(i) for i in ids)
    assert re.fullmatch(rf"20261125T130000\.123Z-{os.getpid()}", ids[0]), ids[0]
    later = default_run_id(t + timedelta(milliseconds=1))
    assert sorted([later, *ids]) == [*ids, later]


def test_two_captures_started_together_without_a_run_id_both_run(data_dir):
    args = ("capture", "--offline", "--offline-speed", "0", "--ws-shards", "1", "--data-dir", str(data_dir))
    procs = [start_cli(*args) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1] for o in outs]
    dirs = {o[0].splitlines()[0] for o in outs}
    assert len(dirs) == 3 and all(os.path.isdir(d) for d in dirs)


# --- odd names and a full disk for the files the commands write -----------------------------------


def test_shard_files_with_names_no_writer_makes_are_ignored(run_copy):
    for name in ("shard_\u00b2.frames", "shard_\u0661.frames", "shard_99999999999999999999999.frames", "shard_.frames"):
        (run_copy / "capture" / name).write_bytes(b"junk")
    (run_copy / "metrics" / "shard_\u00b2.ndjson").write_bytes(b"{}\n")
    for cmd in ("capture-verify", "capture-inspect", "capture-check", "capture-latency-report"):
        proc = run_cli(cmd, "--run-dir", str(run_copy))
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (cmd, proc.stdout[-500:], proc.stderr)


@pytest.mark.parametrize("value", ["\u00b2", "\u0661\u0662", "+", "-", " "])
def test_slice_time_that_is_not_ascii_digits_is_a_usage_error(offline_run, tmp_path, value):
    proc = run_cli("capture-slice", "--run-dir", str(offline_run), "--out", str(tmp_path / "s"), "--from-wall", value)
    if value.strip():
        assert "expected ISO-8601" in assert_one_line_error(proc, 2)
    else:
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert not (tmp_path / "s").exists()


def test_a_report_that_cannot_be_written_leaves_no_half_file(offline_run, small_fs):
    fs = small_fs("2m")
    run = fs / "run"
    shutil.copytree(offline_run, run, ignore=shutil.ignore_patterns("*.frames", "*.idx", "latency_report*"))
    fill(fs)
    proc = run_cli("capture-latency-report", "--run-dir", str(run), "--no-verify")
    assert "No space left on device" in assert_one_line_error(proc, 1)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith((".", "latency"))) in ([], ["latency_report.json"])
    if (run / "latency_report.json").exists():
        orjson.loads((run / "latency_report.json").read_bytes())  # whole, never half


def test_a_record_with_nonzero_reserved_bytes_fails_verify_even_with_a_valid_checksum(run_copy):
    import xxhash

    from pm_arb.store.frames_format import CHECKSUM, RECORD_HEADER, RECORD_HEADER_SIZE

    frames = frames_path(run_copy / "capture", SHARD)
    e = idx_entries(idx_path(run_copy / "capture", SHARD))[4]
    data = bytearray(frames.read_bytes())
    fields = list(RECORD_HEADER.unpack_from(data, e.offset))
    fields[-1] = 0x0100
    header = RECORD_HEADER.pack(*fields)
    payload = bytes(data[e.offset + RECORD_OVERHEAD : e.offset + RECORD_OVERHEAD + e.payload_len])
    data[e.offset : e.offset + RECORD_HEADER_SIZE] = header
    data[e.offset + RECORD_HEADER_SIZE : e.offset + RECORD_OVERHEAD] = CHECKSUM.pack(xxhash.xxh3_64_intdigest(header + payload))
    frames.write_bytes(data)
    code, doc = verify_json(run_copy)
    crc = next(d for d in shard_row(doc)["defects"] if d["kind"] == "crc_mismatch")
    assert code == 1 and crc["seq"] == 4 and crc["reason"] == "reserved bytes not zero"
