"""Hostile run bundles from outside: records of the wrong shape, damaged indexes and manifests,
odd arguments. Every read command answers with one line and exit 1 or 2, never a traceback,
and never reports less damage than there is. Real files and CLI subprocesses throughout."""

from __future__ import annotations

import os
import struct

import orjson
import pytest

from pm_arb.reader import DamagedRecordError, open_run
from pm_arb.store.frames_format import FILE_HEADER_SIZE, IDX_ENTRY_SIZE, RECORD_OVERHEAD
from tests.conftest import assert_one_line_error, records_by_shard, run_cli
from tests.test_reader import _batch_rows


def rewrite_runlog(run_dir, type_name, change) -> int:
    """Apply change(record) to the first runlog record of that type; its 1-based line number."""
    path = run_dir / "runlog.ndjson"
    lines = path.read_bytes().splitlines(keepends=True)
    for i, line in enumerate(lines):
        rec = orjson.loads(line)
        if rec["type"] == type_name:
            change(rec)
            lines[i] = orjson.dumps(rec) + b"\n"
            path.write_bytes(b"".join(lines))
            return i + 1
    raise AssertionError(f"no {type_name} in {path}")


def _counters_as_text(rec):
    rec["shards"] = {"0": {"frames": "12", "connected": True}}


# (record type, change, field named, a command that read it unchecked and crashed)
WRONG_SHAPES = {
    "heartbeat counters as text": ("heartbeat", _counters_as_text, "shards", "capture-replay"),
    "run_stop count under a shard key that is no number": (
        "run_stop", lambda r: r.__setitem__("frames_written", {"abc": 5}), "frames_written", "capture-check"),
    "universe_assigned shard_tokens not an object": (
        "universe_assigned", lambda r: r.__setitem__("shard_tokens", "nope"), "shard_tokens", "capture-books"),
    "market_assigned token as a number": (
        "market_assigned", lambda r: r.__setitem__("yes_token", 5), "yes_token", "capture-replay"),
}


@pytest.mark.parametrize("kind", sorted(WRONG_SHAPES))
def test_a_runlog_record_of_the_wrong_shape_is_a_bad_line_named_by_number(run_copy, kind):
    type_name, change, field_name, cmd = WRONG_SHAPES[kind]
    line_no = rewrite_runlog(run_copy, type_name, change)
    line = assert_one_line_error(run_cli(cmd, "--run-dir", str(run_copy)), 1)
    assert f"runlog.ndjson:{line_no}: {type_name} line's field '{field_name}'" in line and "--skip-bad-lines" in line, line
    proc = run_cli(cmd, "--run-dir", str(run_copy), "--skip-bad-lines", "--json")
    assert "Traceback" not in proc.stderr and proc.returncode in (0, 1), proc.stderr
    assert f"runlog.ndjson:{line_no}: skipped: {type_name} line's field '{field_name}'" in proc.stdout, proc.stdout


def rewrite_manifest(run_dir, change) -> None:
    path = run_dir / "manifest.json"
    doc = orjson.loads(path.read_bytes())
    change(doc)
    path.write_bytes(orjson.dumps(doc))


def _first_market(doc):
    return doc["universe"]["markets"][0]


# A manifest that is JSON but not what capture writes: (change, what the error names)
MANIFEST_SHAPES = {
    "universe a string": (lambda d: d.__setitem__("universe", "x"), "'universe'"),
    "universe null": (lambda d: d.__setitem__("universe", None), "'universe'"),
    "markets an object": (lambda d: d["universe"].__setitem__("markets", {"a": 1}), "'universe.markets'"),
    "a market a number": (lambda d: d["universe"]["markets"].__setitem__(0, 7), "'universe.markets[0]'"),
    "a market token a number": (lambda d: _first_market(d).__setitem__("yes_token", 12), "'universe.markets[0].yes_token'"),
    "a market shard as text": (lambda d: _first_market(d).__setitem__("shard", "2"), "'universe.markets[0].shard'"),
    "shard_token_counts a list": (lambda d: d["universe"].__setitem__("shard_token_counts", [1]), "'universe.shard_token_counts'"),
    "start time as text": (lambda d: d.__setitem__("started_wall_ns_utc", "yesterday"), "'started_wall_ns_utc'"),
    "config a list": (lambda d: d.__setitem__("config", []), "'config'"),
    "slice_of a string": (lambda d: d.__setitem__("slice_of", "x"), "'slice_of'"),
}


def _manifest_a_directory(run_dir):
    (run_dir / "manifest.json").unlink()
    (run_dir / "manifest.json").mkdir()


@pytest.mark.parametrize("kind", sorted(MANIFEST_SHAPES) + ["a directory"])
def test_a_manifest_of_the_wrong_shape_is_named_by_every_reader(run_copy, kind):
    """The manifest is read by one function; what it returns is what capture wrote, or an error
    naming the field, so no reader crashes on it or quietly reads a smaller universe."""
    if kind == "a directory":
        _manifest_a_directory(run_copy)
        named = "is not a file"
    else:
        change, named = MANIFEST_SHAPES[kind]
        rewrite_manifest(run_copy, change)
    for cmd in ("capture-inspect", "capture-export"):
        extra = ["--out", str(run_copy.parent / "out")] if cmd == "capture-export" else []
        line = assert_one_line_error(run_cli(cmd, "--run-dir", str(run_copy), *extra), 1)
        assert "manifest.json" in line and named in line, line
    # The frames do not depend on the manifest: verify still checks them, and says what it could not.
    proc = run_cli("capture-verify", "--run-dir", str(run_copy))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, (proc.stdout, proc.stderr)
    assert "note: files not checked against the runlog's frame counts: " in proc.stdout and named in proc.stdout, proc.stdout


# --- the reader against a damaged idx: the frames file decides ------------------------------

IDX_SHARD = 1  # hundreds of records in the shared offline run


def _idx(run_dir):
    return run_dir / "capture" / f"shard_{IDX_SHARD:02d}.idx"


def _set_idx(run_dir, entry: int, field: str, value: int) -> None:
    """Overwrite one field of one idx entry (entry -1: the last)."""
    path = _idx(run_dir)
    data = bytearray(path.read_bytes())
    count = (len(data) - FILE_HEADER_SIZE) // IDX_ENTRY_SIZE
    at = FILE_HEADER_SIZE + (entry % count) * IDX_ENTRY_SIZE
    fmt, rel = {"offset": ("<Q", 0), "payload_len": ("<I", 8), "seq": ("<Q", 16), "rx_mono_ns": ("<q", 24),
                "rx_wall_ns_utc": ("<q", 32)}[field]
    struct.pack_into(fmt, data, at + rel, value)
    path.write_bytes(bytes(data))


def _append_idx(run_dir, data: bytes) -> None:
    with open(_idx(run_dir), "ab") as fh:
        fh.write(data)


IDX_DAMAGE = {
    "an offset past the end of the file": lambda d: _set_idx(d, 4, "offset", 10**9),
    "the last offset past the end": lambda d: _set_idx(d, -1, "offset", 10**9),
    "an offset pointing backwards": lambda d: _set_idx(d, 6, "offset", FILE_HEADER_SIZE),
    "an offset inside the next record": lambda d: _set_idx(d, 3, "offset", 0x0001_0000),
    "a huge payload length": lambda d: _set_idx(d, 6, "payload_len", 0xFFFF_FFFF),
    "the last payload length one more": lambda d: _set_idx(d, -1, "payload_len", 1 + struct.unpack_from(
        "<I", _idx(d).read_bytes(), len(_idx(d).read_bytes()) - IDX_ENTRY_SIZE + 8)[0]),
    "a seq from nowhere": lambda d: _set_idx(d, 3, "seq", 65_283),
    "a receive time far in the future": lambda d: _set_idx(d, 200, "rx_wall_ns_utc", 2**63 - 1),
    "a receive time far in the past": lambda d: _set_idx(d, 200, "rx_wall_ns_utc", -(2**63)),
    "the last entry twice": lambda d: _append_idx(d, _idx(d).read_bytes()[-IDX_ENTRY_SIZE:]),
    "garbage entries after the last": lambda d: _append_idx(d, bytes(range(7, 7 + 3 * IDX_ENTRY_SIZE))),
}


def _window(frames, lo_frac: float, hi_frac: float) -> tuple[int, int]:
    walls = sorted(f.rx_wall_ns_utc for f in frames)
    return walls[int(lo_frac * (len(walls) - 1))], walls[int(hi_frac * (len(walls) - 1))]


@pytest.mark.parametrize("kind", sorted(IDX_DAMAGE))
def test_a_damaged_idx_loses_no_frame_and_invents_none(offline_run, run_copy, kind):
    """The idx is a copy of what the frames file holds (ADR/0001): where they disagree the frames
    decide. Every intact record is read once, with its own seq and times, whole or in a time
    window, by frames() and frame_batches(); no intact record is called damaged."""
    intact = [f for f in open_run(offline_run).frames(shards=[IDX_SHARD])]
    IDX_DAMAGE[kind](run_copy)
    run = open_run(run_copy)
    for lo_frac, hi_frac in ((0.0, 1.0), (0.3, 0.7), (0.45, 0.46), (0.9, 1.0)):
        start, end = _window(intact, lo_frac, hi_frac)
        expected = [f for f in intact if start <= f.rx_wall_ns_utc <= end]
        seen: list = []
        assert list(run.frames(shards=[IDX_SHARD], start=start, end=end)) == expected, (lo_frac, hi_frac)
        assert _batch_rows(run, shards=[IDX_SHARD], start=start, end=end, on_damage=seen.append) == [tuple(f) for f in expected]
        assert seen == []


TRUNCATIONS = {
    "at a record boundary": lambda offsets, lens: offsets[40],
    "inside a record header": lambda offsets, lens: offsets[40] + 10,
    "inside a checksum": lambda offsets, lens: offsets[40] + RECORD_OVERHEAD - 3,
    "inside a payload": lambda offsets, lens: offsets[40] + RECORD_OVERHEAD + lens[40] // 2,
    "before the last record": lambda offsets, lens: offsets[-1],
}


@pytest.mark.parametrize("kind", sorted(TRUNCATIONS))
def test_a_frames_file_cut_short_is_reported_at_the_first_lost_seq(offline_run, run_copy, kind):
    """The idx vouches for records the file no longer holds: the read names the first lost seq,
    and every record before the cut is still read."""
    intact = [f for f in open_run(offline_run).frames(shards=[IDX_SHARD])]
    recs = records_by_shard(offline_run)[IDX_SHARD]
    cut = TRUNCATIONS[kind]([r.offset for r in recs], [len(r.payload) for r in recs])
    os.truncate(run_copy / "capture" / f"shard_{IDX_SHARD:02d}.frames", cut)
    first_lost = next(r.seq for r in recs if r.offset + RECORD_OVERHEAD + len(r.payload) > cut)
    run = open_run(run_copy)
    with pytest.raises(DamagedRecordError) as err:
        list(run.frames(shards=[IDX_SHARD]))
    assert (err.value.damage.shard, err.value.damage.seq) == (IDX_SHARD, first_lost)
    for read in (lambda **kw: [tuple(f) for f in run.frames(shards=[IDX_SHARD], **kw)],
                 lambda **kw: _batch_rows(run, shards=[IDX_SHARD], **kw)):
        seen: list = []
        assert read(on_damage=seen.append) == [tuple(f) for f in intact if f.seq < first_lost]
        assert [(d.shard, d.seq) for d in seen] == [(IDX_SHARD, first_lost)]


def test_export_of_a_run_whose_idx_has_garbage_entries_holds_every_frame(offline_run, run_copy, tmp_path):
    IDX_DAMAGE["garbage entries after the last"](run_copy)
    proc = run_cli("capture-export", "--run-dir", str(run_copy), "--out", str(tmp_path / "x"), "--tables", "frames", "--json")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    frames = sum(1 for _ in open_run(offline_run).frames())
    assert orjson.loads(proc.stdout)["rows"]["frames"] == frames


# --- outputs never land inside the run they read ----------------------------------------------

OUT_INSIDE = {
    "capture-slice": ["--from-seq", "0"],
    "capture-export": ["--tables", "markets"],
}


@pytest.mark.parametrize("where", ["inner", "capture/shard_09.frames", "."])
@pytest.mark.parametrize("cmd", sorted(OUT_INSIDE))
def test_an_out_dir_inside_the_run_is_refused_and_the_run_is_left_as_it_was(run_copy, cmd, where):
    """A slice or export written into the run it reads changes that run's bundle: a directory
    named like a shard's frames file made a clean run fail verify and every reader."""
    before = sorted(str(p.relative_to(run_copy)) for p in run_copy.rglob("*"))
    out = run_copy / where
    line = assert_one_line_error(run_cli(cmd, "--run-dir", str(run_copy), "--out", str(out), *OUT_INSIDE[cmd]), 2)
    assert "inside the run dir" in line and "nothing was written" in line, line
    assert sorted(str(p.relative_to(run_copy)) for p in run_copy.rglob("*")) == before


@pytest.mark.parametrize("value", ["", ",", " , "])
def test_export_tables_given_but_empty_is_refused_not_read_as_every_table(offline_run, tmp_path, value):
    out = tmp_path / "x"
    line = assert_one_line_error(run_cli("capture-export", "--run-dir", str(offline_run), "--out", str(out), "--tables", value), 2)
    assert "--tables was given but names no table" in line, line
    assert not out.exists()


@pytest.mark.parametrize("kind", ["loop", "dangling"])
def test_a_run_dir_symlink_that_leads_nowhere_is_named_as_such(tmp_path, kind):
    link = tmp_path / "run"
    if kind == "loop":
        (tmp_path / "other").symlink_to(link)
        link.symlink_to(tmp_path / "other")
    else:
        link.symlink_to(tmp_path / "gone")
    line = assert_one_line_error(run_cli("capture-verify", "--run-dir", str(link), env={"PM_ARB_DATA_DIR": str(tmp_path)}), 2)
    assert "is a symbolic link that leads to no directory" in line, line


def test_verify_says_when_the_runlog_counts_it_checked_against_skipped_a_line(run_copy):
    """A damaged run_stop line holds the writer's exact counts: verify falls back on the
    heartbeats' lower bounds, and says which line it could not read instead of passing quietly."""
    line_no = rewrite_runlog(run_copy, "run_stop", lambda r: r.__setitem__("frames_written", "lost"))
    proc = run_cli("capture-verify", "--run-dir", str(run_copy))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"1 unreadable line(s) of runlog.ndjson (line {line_no}: run_stop line's field 'frames_written'" in proc.stdout, proc.stdout
    doc = orjson.loads(run_cli("capture-verify", "--run-dir", str(run_copy), "--json").stdout)
    assert [s["line_no"] for s in doc["runlog_check"]["skipped_lines"]] == [line_no]


def append_frames(run_dir, shard: int, payloads: list[bytes]) -> int:
    """Append JSON-flagged text frames after the shard's last record, as the writer does; the
    first new seq."""
    from pm_arb.store.shard_files import ShardFileWriter

    last = records_by_shard(run_dir)[shard][-1]
    writer = ShardFileWriter(run_dir / "capture", shard)
    try:
        return writer.append_batch([(last.rx_mono_ns + k + 1, last.rx_wall_ns_utc + k + 1, 0, 1, p)
                                    for k, p in enumerate(payloads)])
    finally:
        writer.close()


@pytest.mark.parametrize("asset_id", [b"5", b"[1]", b"{}", b"null", b"true"])
def test_a_message_whose_token_id_is_not_a_string_is_malformed_not_a_token(run_copy, asset_id):
    """The book audit's tokens come from the frames: an asset_id that is a number (or any other
    non-string) is a malformed message listed by shard and seq, and never a token in the report
    (an int token crashed its rendering)."""
    change = b'{"event_type":"price_change","market":"0x1","timestamp":"1","price_changes":[{"asset_id":' + asset_id + \
        b',"price":"0.5","size":"1","side":"BUY","best_bid":"0.5","best_ask":"0.6"}]}'
    book = b'{"event_type":"book","market":"0x1","timestamp":"1","asset_id":' + asset_id + b',"bids":[],"asks":[]}'
    seq = append_frames(run_copy, 0, [change, book])
    proc = run_cli("capture-books", "--run-dir", str(run_copy), "--workers", "1")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, (proc.stdout, proc.stderr)
    for s in (seq, seq + 1):
        assert f"malformed message at shard 0 seq {s}:" in proc.stdout, proc.stdout
    doc = orjson.loads(run_cli("capture-books", "--run-dir", str(run_copy), "--workers", "1", "--json").stdout)
    assert doc["totals"]["tokens_checked"] == len(open_run(run_copy).tokens), doc["totals"]
    assert [(m["shard"], m["seq"]) for m in doc["malformed"]] == [(0, seq), (0, seq + 1)], doc["malformed"]


@pytest.mark.parametrize("repeated", [0, 7, -1])
def test_an_idx_that_lists_a_record_twice_fails_verify_and_repair_rebuilds_it(run_copy, repeated):
    """An idx with one entry more than the frames have records (an entry written twice) passed
    verify: its offsets were all known ones."""
    idx = _idx(run_copy)
    data = idx.read_bytes()
    count = (len(data) - FILE_HEADER_SIZE) // IDX_ENTRY_SIZE
    at = FILE_HEADER_SIZE + (repeated % count) * IDX_ENTRY_SIZE
    idx.write_bytes(data[:at + IDX_ENTRY_SIZE] + data[at:])
    _assert_verify_names_then_repair_rebuilds(run_copy, idx, data, "idx_extra_entries")


def test_reads_of_a_run_whose_shard_file_is_gone_say_so(run_copy, tmp_path):
    """The runlog says frames were written to shard 0; its files were deleted. The loss audit
    and the export read the other shards, and say which shard's frames they could not read,
    instead of a clean PASS over what is left."""
    for p in (run_copy / "capture").glob("shard_00.*"):
        p.unlink()
    books = orjson.loads(run_cli("capture-books", "--run-dir", str(run_copy), "--workers", "1", "--json").stdout)
    summary = orjson.loads(run_cli("capture-export", "--run-dir", str(run_copy), "--out", str(tmp_path / "x"),
                                   "--tables", "frames", "--json").stdout)
    cut = orjson.loads(run_cli("capture-slice", "--run-dir", str(run_copy), "--out", str(tmp_path / "s"),
                               "--from-seq", "0", "--json").stdout)
    for warnings in (books["warnings"], summary["warnings"], cut["warnings"]):
        assert any(w.startswith("shard 00: the runlog says at least ") and "shard_00.frames is missing" in w for w in warnings), warnings


def test_a_report_that_cannot_be_written_names_the_report_not_a_temp_file(run_copy):
    (run_copy / "latency_report.json").unlink(missing_ok=True)  # other tests report on the shared run it copies
    (run_copy / "latency_report.json").mkdir()
    line = assert_one_line_error(run_cli("capture-latency-report", "--run-dir", str(run_copy), "--no-books"), 1)
    assert f"({run_copy / 'latency_report.json'})" in line and ".tmp-" not in line, line


@pytest.mark.parametrize("field, value", [("dropped", "3"), ("frames_total", [1]), ("ws_rx_to_applied_ms", "24 ms"),
                                          ("ws_rx_to_applied_hist_us", {"x": 1}), ("mono_ns", True)])
def test_a_metrics_line_with_a_figure_of_another_type_is_an_unreadable_line(run_copy, field, value):
    """The reports do arithmetic on the metrics' figures: a line holding text (or a list, or an
    object that is no histogram) where a number goes is skipped and counted, like a line that
    is not JSON, instead of a traceback in the latency report, the check and inspect."""
    path = run_copy / "metrics" / "global.ndjson"
    last = orjson.loads(path.read_bytes().splitlines()[-1])
    with open(path, "ab") as fh:
        fh.write(orjson.dumps({**last, field: value}) + b"\n")
    proc = run_cli("capture-latency-report", "--run-dir", str(run_copy), "--no-books", "--no-verify")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "metrics: 1 unreadable line(s) skipped" in proc.stdout + proc.stderr, proc.stdout
    proc = run_cli("capture-inspect", "--run-dir", str(run_copy))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


def test_a_run_dir_whose_name_is_not_utf8_is_reported_in_json_with_escapes(offline_run, tmp_path):
    """A path of bytes that are not UTF-8 reaches Python with lone surrogates, which orjson
    refuses: every --json report, the export summary and a slice's manifest crashed on it."""
    import shutil

    odd = os.fsdecode(os.fsencode(str(tmp_path)) + b"/run-\xff\xfe")
    shutil.copytree(offline_run, odd)
    for args in (["capture-verify"], ["capture-check", "--no-books"], ["capture-books", "--workers", "1"],
                 ["capture-export", "--out", str(tmp_path / "x"), "--tables", "markets"],
                 ["capture-slice", "--out", os.fsdecode(os.fsencode(str(tmp_path)) + b"/cut-\xff"), "--from-seq", "0"]):
        proc = run_cli(*args, "--run-dir", odd, "--json")
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (args, proc.stderr)
        doc = orjson.loads(proc.stdout)
        assert "\\xff" in str(doc.get("run_dir") or doc.get("out_dir")), (args, doc)


def test_an_export_window_that_misses_the_run_is_refused_and_writes_nothing(offline_run, tmp_path):
    """As capture-slice: exit 1, one line naming the window, no output dir."""
    proc = run_cli("capture-export", "--run-dir", str(offline_run), "--out", str(tmp_path / "x"), "--tables",
                   "frames,trades", "--from-wall", "2001-01-01T00:00:00Z", "--to-wall", "2001-01-02T00:00:00Z", "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "the receive-time window 2001-01-01T00:00:00" in proc.stderr and "selects no frame" in proc.stderr
    assert not (tmp_path / "x").exists()
    from pm_arb.reader import open_run

    walls = sorted(f.rx_wall_ns_utc for f in open_run(offline_run).frames(verify=False))
    inside = run_cli("capture-export", "--run-dir", str(offline_run), "--out", str(tmp_path / "y"), "--tables", "frames",
                     "--from-wall", str(walls[len(walls) // 2]), "--json")  # a window inside the run still exports
    assert inside.returncode == 0, inside.stderr
    assert orjson.loads(inside.stdout)["frames"] == sum(w >= walls[len(walls) // 2] for w in walls)



def _drop_idx_entry(run_dir, k: int) -> None:
    path = _idx(run_dir)
    data = path.read_bytes()
    at = FILE_HEADER_SIZE + k * IDX_ENTRY_SIZE
    path.write_bytes(data[:at] + data[at + IDX_ENTRY_SIZE:])


def _swap_idx_entries(run_dir, k: int) -> None:
    """Entries k and k + 1 in each other's place (capture-verify passes such an idx)."""
    path = _idx(run_dir)
    data = bytearray(path.read_bytes())
    at = FILE_HEADER_SIZE + k * IDX_ENTRY_SIZE
    data[at:at + 2 * IDX_ENTRY_SIZE] = data[at + IDX_ENTRY_SIZE:at + 2 * IDX_ENTRY_SIZE] + data[at:at + IDX_ENTRY_SIZE]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("before", [0, 3])
@pytest.mark.parametrize("damage", [_drop_idx_entry, _swap_idx_entries])
def test_a_window_ending_at_a_record_the_idx_does_not_list_in_place_still_holds_it(offline_run, run_copy, damage, before):
    """Record k is intact in the frames file, but the idx lacks its entry or lists it after the
    next one. A time window ending at its receive time bisects to an entry that agrees with the
    frames file and is past the end, so the walk stopped there and lost record k silently: the
    window's end must be confirmed where the walk got to in the frames file."""
    intact = list(open_run(offline_run).frames(shards=[IDX_SHARD]))
    k = next(i for i in range(100, len(intact) - 2)
             if intact[i - 1 - before].rx_wall_ns_utc < intact[i].rx_wall_ns_utc < intact[i + 1].rx_wall_ns_utc < intact[i + 2].rx_wall_ns_utc)
    damage(run_copy, k)
    start, end = intact[k - before].rx_wall_ns_utc, intact[k].rx_wall_ns_utc
    expected = [f for f in intact if start <= f.rx_wall_ns_utc <= end]
    assert intact[k] in expected
    run = open_run(run_copy)
    seen: list = []
    assert list(run.frames(shards=[IDX_SHARD], start=start, end=end, on_damage=seen.append)) == expected
    assert _batch_rows(run, shards=[IDX_SHARD], start=start, end=end, on_damage=seen.append) == [tuple(f) for f in expected]
    assert seen == []


def test_bytes_cut_out_of_the_middle_of_a_frames_file_lose_only_the_records_they_held(offline_run, run_copy):
    """A hole in the frames file (bytes from inside record k to inside record k + 1 gone, the rest
    moved up): each later idx entry points at the wrong bytes, so the walk called every record after
    the hole damaged, under a seq read from the hole's bytes. The frames decide: the records after the
    hole are intact and read, and one damage names seq k."""
    intact = list(open_run(offline_run).frames(shards=[IDX_SHARD]))
    recs = records_by_shard(offline_run)[IDX_SHARD]
    k = 40
    path = run_copy / "capture" / f"shard_{IDX_SHARD:02d}.frames"
    data = path.read_bytes()
    path.write_bytes(data[:recs[k].offset + 5] + data[recs[k + 1].offset + 3:])
    expected = [tuple(f) for f in intact if f.seq not in (recs[k].seq, recs[k + 1].seq)]
    run = open_run(run_copy)
    for read in (lambda **kw: [tuple(f) for f in run.frames(shards=[IDX_SHARD], **kw)],
                 lambda **kw: _batch_rows(run, shards=[IDX_SHARD], **kw)):
        seen: list = []
        assert read(on_damage=seen.append) == expected
        assert [(d.shard, d.seq) for d in seen] == [(IDX_SHARD, recs[k].seq)]


@pytest.mark.parametrize("where", ["middle", "after the last"])
def test_a_record_written_twice_is_read_once_and_named(offline_run, run_copy, where):
    """The frames file holds record k's bytes twice (the idx lists it once): the scan from the last
    agreeing record found both copies and returned seq k twice (an export held the frame twice)."""
    intact = list(open_run(offline_run).frames(shards=[IDX_SHARD]))
    recs = records_by_shard(offline_run)[IDX_SHARD]
    k = 40 if where == "middle" else 5
    path = run_copy / "capture" / f"shard_{IDX_SHARD:02d}.frames"
    data = path.read_bytes()
    copy = data[recs[k].offset:recs[k + 1].offset]
    at = recs[k + 1].offset if where == "middle" else len(data)
    path.write_bytes(data[:at] + copy + data[at:])
    run = open_run(run_copy)
    for read in (lambda **kw: [tuple(f) for f in run.frames(shards=[IDX_SHARD], **kw)],
                 lambda **kw: _batch_rows(run, shards=[IDX_SHARD], **kw)):
        seen: list = []
        assert read(on_damage=seen.append) == [tuple(f) for f in intact]
        assert [(d.shard, d.seq) for d in seen] == [(IDX_SHARD, recs[k].seq)]
    doc = orjson.loads(run_cli("capture-verify", "--run-dir", str(run_copy), "--json").stdout)
    row = next(r for r in doc["shards"] if r["shard"] == IDX_SHARD)
    # the copy is a defect, but the file still reaches its true last seq: nothing is "missing"
    assert doc["verdict"] == "FAIL" and row["seq_gaps"] >= 1
    assert (row["last_seq"], row["frames_missing"]) == (recs[-1].seq, 0), row


def test_an_idx_whose_entries_are_out_of_order_fails_verify_and_repair_rebuilds_it(run_copy):
    """Two entries in each other's place: every offset known and listed once, so verify passed,
    while readers bisect the idx by receive time and need it in file order."""
    idx = _idx(run_copy)
    data = idx.read_bytes()
    _swap_idx_entries(run_copy, 7)
    _assert_verify_names_then_repair_rebuilds(run_copy, idx, data, "idx_out_of_order")


def _assert_verify_names_then_repair_rebuilds(run_copy, idx, original: bytes, kind: str) -> None:
    """verify fails the idx with a defect of `kind`, and --repair rebuilds it byte for byte."""
    proc = run_cli("capture-verify", "--run-dir", str(run_copy), "--json")
    doc = orjson.loads(proc.stdout)
    assert proc.returncode == 1 and doc["totals"]["idx_mismatch"] >= 1, doc["totals"]
    row = next(r for r in doc["shards"] if r["shard"] == IDX_SHARD)
    assert any(d["kind"] == kind for d in row["defects"]), row["defects"]
    assert run_cli("capture-verify", "--run-dir", str(run_copy), "--repair").returncode == 0
    assert idx.read_bytes() == original
