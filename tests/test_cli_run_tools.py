"""capture-verify, capture-inspect and capture-slice as subprocesses on a real capture."""

from __future__ import annotations

import orjson
import pytest

from pm_arb.store.frames_format import FILE_HEADER_SIZE, IDX_ENTRY_SIZE
from pm_arb.store.shard_files import frames_path, idx_path, load_idx
from tests.conftest import assert_one_line_error, records_by_shard, run_cli


def test_verify_clean_run_text_and_json(offline_run):
    proc = run_cli("capture-verify", "--run-dir", str(offline_run))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("OK: 4 shards, 3,075 frames")
    proc = run_cli("capture-verify", "--run-dir", str(offline_run), "--json", "--summary-only")
    doc = orjson.loads(proc.stdout)
    assert doc["ok"] is True and "shards" not in doc
    assert doc["totals"] == {"shards": 4, "frames": 3075, "bytes": doc["totals"]["bytes"], "crc_mismatch": 0, "seq_gaps": 0,
                             "idx_mismatch": 0, "torn_tail_bytes": 0, "frames_missing": 0, "header_damage": 0, "file_errors": 0}
    assert doc["runlog_check"] == {"checked": True, "reason": None}


def _run_stop(run_dir):
    lines = [orjson.loads(x) for x in (run_dir / "runlog.ndjson").read_bytes().splitlines()]
    return next(x for x in lines if x["type"] == "run_stop")


def test_run_stop_records_what_the_writer_wrote_per_shard(offline_run):
    written = _run_stop(offline_run)["frames_written"]
    on_disk = {str(s): len(recs) for s, recs in records_by_shard(offline_run).items()}
    assert written == on_disk and sum(written.values()) == 3075


def test_verify_finds_frames_cut_at_a_record_boundary(run_copy):
    """A file cut exactly between records scans clean; only the runlog can tell frames are gone."""
    capture = run_copy / "capture"
    shard = max(records_by_shard(run_copy).items(), key=lambda kv: len(kv[1]))[0]
    idx_entries = load_idx(idx_path(capture, shard))[0]
    keep = len(idx_entries) - 40
    with open(frames_path(capture, shard), "r+b") as fh:
        fh.truncate(idx_entries[keep].offset)
    with open(idx_path(capture, shard), "r+b") as fh:
        fh.truncate(FILE_HEADER_SIZE + keep * IDX_ENTRY_SIZE)
    proc = run_cli("capture-verify", "--run-dir", str(run_copy), "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = orjson.loads(proc.stdout)
    row = next(r for r in doc["shards"] if r["shard"] == shard)
    assert (row["crc_mismatch"], row["seq_gaps"], row["idx_mismatch"], row["torn_tail_bytes"]) == (0, 0, 0, 0)
    assert row["frames_missing"] == 40 and doc["totals"]["frames_missing"] == 40
    assert row["defects"][-1]["kind"] == "frames_missing" and row["defects"][-1]["source"] == "run_stop"
    check = run_cli("capture-check", "--run-dir", str(run_copy))
    assert check.returncode == 1 and "frames_missing=40" in check.stdout
    # --repair cannot invent frames: the shortfall stays reported.
    assert run_cli("capture-verify", "--run-dir", str(run_copy), "--repair").returncode == 1


def test_verify_reports_a_deleted_shard_the_runlog_says_was_written(run_copy):
    (run_copy / "capture" / "shard_02.frames").unlink()
    (run_copy / "capture" / "shard_02.idx").unlink()
    proc = run_cli("capture-verify", "--run-dir", str(run_copy))
    assert proc.returncode == 1
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("shard 02"))
    n = _run_stop(run_copy)["frames_written"]["2"]
    assert line == f"shard 02: ERROR shard_02.frames is missing; the runlog (run_stop, seq {_run_stop(run_copy)['seq']}) says at least {n:,} frames were written to it"
    assert f"frames_missing={n} header_damage=0 file_errors=1" in proc.stdout and "hint: the runlog says more frames" in proc.stdout


def test_latency_report_warns_when_metrics_lines_are_lost(offline_run, run_copy):
    clean = orjson.loads(run_cli("capture-latency-report", "--run-dir", str(offline_run), "--no-verify", "--json").stdout)
    assert clean["metrics_coverage"]["complete"] is True and not clean["warnings"]
    glob = run_copy / "metrics" / "global.ndjson"
    # This run has one metrics interval; a run whose later lines were lost looks like this one,
    # whose cumulative count stops short.
    lines = [orjson.loads(x) for x in glob.read_bytes().splitlines()]
    lines[-1]["frames_total"] = 1000
    glob.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    doc = orjson.loads(run_cli("capture-latency-report", "--run-dir", str(run_copy), "--no-verify", "--json").stdout)
    cov = doc["metrics_coverage"]
    assert (cov["complete"], cov["frames_written"], cov["frames_in_metrics"]) == (False, 3075, 1000)
    assert doc["warnings"] == [f"metrics cover {cov['frames_in_metrics']:,} of the 3,075 frames run_stop says were written: "
                               "the latency and queue figures describe part of the run (metrics lines lost or truncated)"]
    glob.unlink()
    text = run_cli("capture-latency-report", "--run-dir", str(run_copy), "--no-verify").stdout
    assert "warning: metrics/global.ndjson is missing or empty: no latency, queue-depth or loop-lag figures; " \
           "the runlog says 3,075 frames were written" in text


def test_verify_of_a_slice_says_the_runlog_check_does_not_apply(offline_run, tmp_path):
    out = tmp_path / "slice"
    assert run_cli("capture-slice", "--run-dir", str(offline_run), "--out", str(out), "--from-seq", "5", "--to-seq", "20").returncode == 0
    proc = run_cli("capture-verify", "--run-dir", str(out), "--json")
    assert proc.returncode == 0, proc.stdout
    assert orjson.loads(proc.stdout)["runlog_check"] == {"checked": False, "reason": "a slice holds part of its source run's frames"}


def test_verify_reports_corruption_and_repairs_torn_tail(run_copy):
    frames = run_copy / "capture" / "shard_01.frames"
    data = bytearray(frames.read_bytes())
    data[200] ^= 0x01
    frames.write_bytes(data + b"\x46\x52\x4d\x31\x10")  # a flipped byte, then a torn record start
    proc = run_cli("capture-verify", "--run-dir", str(run_copy), "--json")
    assert proc.returncode == 1
    doc = orjson.loads(proc.stdout)
    assert doc["totals"]["crc_mismatch"] == 1 and doc["totals"]["torn_tail_bytes"] == 5
    proc = run_cli("capture-verify", "--run-dir", str(run_copy), "--repair")
    assert proc.returncode == 1  # the corrupted record stays (evidence), only the torn tail goes
    assert "torn_tail_bytes_truncated=5" in proc.stdout
    doc = orjson.loads(run_cli("capture-verify", "--run-dir", str(run_copy), "--json").stdout)
    assert doc["totals"]["torn_tail_bytes"] == 0 and doc["totals"]["crc_mismatch"] == 1


@pytest.mark.parametrize("cmd", ["capture-verify", "capture-inspect", "capture-audit", "capture-latency-report", "capture-check", "capture-replay"])
def test_missing_run_dir_is_exit_2_one_line(cmd, tmp_path):
    proc = run_cli(cmd, "--run-dir", str(tmp_path / "nope"))
    line = assert_one_line_error(proc, 2)
    assert "does not exist" in line and "pm_arb capture" in line


def test_verify_without_frames_gives_troubleshooting_hint(tmp_path):
    proc = run_cli("capture-verify", "--run-dir", str(tmp_path))
    line = assert_one_line_error(proc, 2)
    assert "confirm the run dir path" in line and "capture/*.frames" in line


def test_inspect_lists_files_shards_and_metrics(offline_run):
    proc = run_cli("capture-inspect", "--run-dir", str(offline_run), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = orjson.loads(proc.stdout)
    paths = {f["path"] for f in doc["files"]}
    assert {"manifest.json", "runlog.ndjson", "capture/shard_00.frames", "capture/shard_00.idx", "metrics/global.ndjson"} <= paths
    assert doc["frames_total"] == 3075 and len(doc["shards"]) == 4
    assert all(s["first_rx_wall_ns_utc"] <= s["last_rx_wall_ns_utc"] for s in doc["shards"])
    assert doc["metrics_tail"]["global.ndjson"][-1]["frames_total"] == 3075
    text = run_cli("capture-inspect", "--run-dir", str(offline_run)).stdout
    assert "frames total: 3,075" in text and "metrics/global.ndjson" in text


def test_slice_by_seq_both_ends(offline_run, tmp_path):
    out = tmp_path / "slice"
    proc = run_cli("capture-slice", "--run-dir", str(offline_run), "--out", str(out), "--from-seq", "10", "--to-seq", "99", "--json")
    assert proc.returncode == 0, proc.stderr
    src, got = records_by_shard(offline_run), records_by_shard(out)
    for s, recs in src.items():
        want = [r for r in recs if 10 <= r.seq <= 99]
        assert [(r.seq, r.rx_mono_ns, r.rx_wall_ns_utc, r.flags, r.payload) for r in got[s]] == [
            (r.seq, r.rx_mono_ns, r.rx_wall_ns_utc, r.flags, r.payload) for r in want
        ]
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    assert manifest["slice_of"]["run_id"] == "fixture-run" and manifest["slice_of"]["range"] == {"from_seq": 10, "to_seq": 99}
    assert run_cli("capture-verify", "--run-dir", str(out)).returncode == 0


def test_slice_by_wall_time_both_ends(offline_run, tmp_path):
    recs = [r for rs in records_by_shard(offline_run).values() for r in rs]
    walls = sorted(r.rx_wall_ns_utc for r in recs)
    lo, hi = walls[len(walls) // 4], walls[3 * len(walls) // 4]
    out = tmp_path / "slice"
    proc = run_cli("capture-slice", "--run-dir", str(offline_run), "--out", str(out), "--from-wall", str(lo), "--to-wall", str(hi))
    assert proc.returncode == 0, proc.stderr
    got = [r for rs in records_by_shard(out).values() for r in rs]
    assert sorted(r.payload for r in got) == sorted(r.payload for r in recs if lo <= r.rx_wall_ns_utc <= hi)
    assert run_cli("capture-verify", "--run-dir", str(out)).returncode == 0
    runlog = [orjson.loads(x) for x in (out / "runlog.ndjson").read_bytes().splitlines()]
    assert all(lo <= r["wall_ns_utc"] <= hi for r in runlog)


def test_slice_accepts_iso_times(offline_run, tmp_path):
    out = tmp_path / "slice"
    proc = run_cli("capture-slice", "--run-dir", str(offline_run), "--out", str(out), "--from-wall", "2000-01-01T00:00:00Z", "--to-wall", "2100-01-01T00:00:00")
    assert proc.returncode == 0, proc.stderr
    assert "wrote 3,075 frames" in proc.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--from-seq", "5", "--from-wall", "1"], "choose one range"),
        ([], "choose one range"),
        (["--from-wall", "yesterday"], "expected ISO-8601"),
        (["--from-seq", "9", "--to-seq", "3"], "the range is empty"),
    ],
)
def test_slice_bad_arguments(offline_run, tmp_path, args, fragment):
    proc = run_cli("capture-slice", "--run-dir", str(offline_run), "--out", str(tmp_path / "s"), *args)
    assert fragment in assert_one_line_error(proc, 2)


def test_slice_refuses_non_empty_out(offline_run, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = run_cli("capture-slice", "--run-dir", str(offline_run), "--out", str(out), "--from-seq", "0")
    assert "not an empty directory" in assert_one_line_error(proc, 2)
    assert (out / "keep.txt").read_text() == "mine"
