"""Slices are first-class: capture-check runs the gates that apply to a window, a window that
misses the run says so, and every time form resolves and is echoed."""

from __future__ import annotations

import orjson

from tests.conftest import assert_one_line_error, run_cli
from pm_arb.clock import wall_iso
from pm_arb.store.shard_files import ShardReader, shard_numbers


def _wall_span(run_dir):
    walls = []
    for s in shard_numbers(run_dir / "capture"):
        with ShardReader(run_dir / "capture", s) as rd:
            if len(rd.idx):
                walls += [rd.idx[0].rx_wall_ns_utc, rd.idx[-1].rx_wall_ns_utc]
    return min(walls), max(walls)


def test_capture_check_on_a_slice_runs_the_window_gates_and_names_the_others(offline_run, tmp_path):
    out = tmp_path / "cut"
    cut = run_cli("capture-slice", "--run-dir", str(offline_run), "--out", str(out), "--from-seq", "5", "--to-seq", "40")
    assert cut.returncode == 0, cut.stderr
    runlog_seqs = [orjson.loads(ln)["seq"] for ln in (out / "runlog.ndjson").read_bytes().splitlines()]
    assert runlog_seqs and runlog_seqs[0] > 0  # the window starts inside the runlog
    assert not any(orjson.loads(ln)["type"] == "run_stop" for ln in (out / "runlog.ndjson").read_bytes().splitlines())
    proc = run_cli("capture-check", "--run-dir", str(out), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = orjson.loads(proc.stdout)
    assert doc["verdict"] == "PASS" and not any("seq jumps" in w for w in doc["warnings"])
    gates = doc["gates"]
    assert gates["clean_stop"]["applies"] is False and gates["clean_stop"]["pass"] is None
    assert gates["fatal"]["applies"] is False
    assert all(gates[g]["applies"] and gates[g]["pass"] for g in ("heartbeat_gaps", "reconnects_midrun", "drops", "crc_mismatch"))
    text = run_cli("capture-check", "--run-dir", str(out)).stdout
    assert "n/a   clean_stop         does not apply to a slice" in text and "FAIL" not in text


def test_a_whole_run_cut_short_still_fails_clean_stop(run_copy):
    """The slice rule must not excuse a real run whose runlog lost its end."""
    lines = (run_copy / "runlog.ndjson").read_bytes().splitlines(keepends=True)
    (run_copy / "runlog.ndjson").write_bytes(b"".join(ln for ln in lines if b'"run_stop"' not in ln))
    proc = run_cli("capture-check", "--run-dir", str(run_copy), "--json")
    assert proc.returncode == 1
    assert orjson.loads(proc.stdout)["gates"]["clean_stop"]["pass"] is False


def test_a_window_that_misses_the_run_says_where_the_run_is(offline_run, tmp_path):
    first, last = _wall_span(offline_run)
    out = tmp_path / "cut"
    proc = run_cli("capture-slice", "--run-dir", str(offline_run), "--out", str(out), "--from-wall", "2001-01-01T00:00:00Z", "--to-wall", "2001-01-02T00:00:00Z")
    line = assert_one_line_error(proc, 1)  # exit 1 like any range that selects no frames
    assert "misses the run" in line and wall_iso(first) in line and wall_iso(last) in line and "shard 0 holds seq 0.." in line
    assert not out.exists()  # nothing was written
    after = run_cli("capture-slice", "--run-dir", str(offline_run), "--out", str(out), "--from-wall", str(last + 1))
    assert "misses the run" in assert_one_line_error(after, 1)
    seqs = run_cli("capture-slice", "--run-dir", str(offline_run), "--out", str(out), "--from-seq", "999999")
    assert "misses the run" in assert_one_line_error(seqs, 1)
    relative = run_cli("capture-slice", "--run-dir", str(offline_run), "--out", str(out), "--from-wall", "+1d")
    assert "misses the run" in assert_one_line_error(relative, 1)


def test_relative_and_time_of_day_windows_resolve_and_are_echoed(offline_run, tmp_path):
    first, last = _wall_span(offline_run)
    proc = run_cli("capture-slice", "--run-dir", str(offline_run), "--out", str(tmp_path / "a"), "--from-wall", "+0s", "--to-wall", "-0s", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = orjson.loads(proc.stdout)
    assert doc["range"]["from_wall_ns_utc"] == first and doc["range"]["to_wall_ns_utc"] == last
    assert doc["range"]["from_wall_input"] == "+0s" and doc["range"]["to_wall_utc"] == wall_iso(last)
    whole = orjson.loads(run_cli("capture-inspect", "--run-dir", str(offline_run), "--json").stdout)
    assert doc["frames"] == sum(s["frames"] for s in whole["shards"])
    # a time of day: the first frame's own HH:MM:SS.ffffff on the run's date
    tod = wall_iso(first)[11:-1]
    proc = run_cli("capture-slice", "--run-dir", str(offline_run), "--out", str(tmp_path / "b"), "--from-wall", tod, "--json")
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(proc.stdout)["range"]["from_wall_ns_utc"] == first // 1000 * 1000


def test_a_slice_holding_the_runs_fatal_event_fails_the_fatal_gate(offline_run, tmp_path):
    from pm_arb.events import types as ev
    from pm_arb.events.codec import LogRecord, encode

    out = tmp_path / "cut"
    assert run_cli("capture-slice", "--run-dir", str(offline_run), "--out", str(out), "--from-seq", "5", "--to-seq", "40").returncode == 0
    last = orjson.loads((out / "runlog.ndjson").read_bytes().splitlines()[-1])
    fatal = LogRecord(last["seq"] + 1, last["mono_ns"] + 1, last["wall_ns_utc"] + 1, ev.Fatal(reason="write_error", message="test"))
    with open(out / "runlog.ndjson", "ab") as fh:
        fh.write(encode(fatal))
    proc = run_cli("capture-check", "--run-dir", str(out), "--json")
    gate = orjson.loads(proc.stdout)["gates"]["fatal"]
    assert proc.returncode == 1 and gate["pass"] is False and gate["applies"] is True
    assert f"runlog seq {last['seq'] + 1}" in gate["figure"]


def test_capture_export_takes_the_same_time_forms(offline_run, tmp_path):
    whole = orjson.loads(run_cli("capture-inspect", "--run-dir", str(offline_run), "--json").stdout)
    proc = run_cli("capture-export", "--run-dir", str(offline_run), "--out", str(tmp_path / "x"), "--tables", "frames",
                   "--from-wall", "+0s", "--to-wall", "-0s", "--json")
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(proc.stdout)["rows"]["frames"] == sum(s["frames"] for s in whole["shards"])
    bad = run_cli("capture-export", "--run-dir", str(offline_run), "--out", str(tmp_path / "y"), "--from-wall", "+10")
    assert "needs a unit" in assert_one_line_error(bad, 2)
