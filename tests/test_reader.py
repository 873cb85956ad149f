"""pm_arb.reader on real run bundles: the offline fixture run, damaged copies, a live-looking
run whose files end mid-record, and a capture-slice output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

import pm_arb
from pm_arb.reader import Damage, DamagedRecordError, open_run
from pm_arb.store.frames_format import FILE_HEADER_SIZE, IDX_ENTRY_SIZE, RECORD_OVERHEAD
from tests.conftest import records_by_shard, run_cli


def test_root_exports_are_pinned():
    assert pm_arb.__all__ == ["Damage", "DamagedRecordError", "Event", "FrameRecord", "Market", "Run", "open_run", "__version__"]
    assert pm_arb.reader.__all__ == ["Damage", "DamagedRecordError", "Event", "FrameRecord", "Market", "Run", "open_run"]
    for name in pm_arb.__all__:
        assert getattr(pm_arb, name) is not None


def test_capture_path_does_not_load_the_columnar_engines():
    # nor matplotlib, which only capture-plot imports (ADR/0012)
    code = (
        "import sys, pm_arb, pm_arb.plant.run_capture, pm_arb.cli, pm_arb.capture.ws_reader, pm_arb.actors.writer,"
        " pm_arb.commands.reports, pm_arb.commands.verify;"
        "print(sorted(m for m in ('duckdb', 'pyarrow', 'polars', 'numpy', 'pandas', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_frames_are_every_stored_record_merged_by_receive_time(offline_run):
    run = open_run(offline_run)
    stored = records_by_shard(offline_run)
    frames = list(run.frames())
    verify = json.loads(run_cli("capture-verify", "--run-dir", str(offline_run), "--json").stdout)
    assert len(frames) == verify["totals"]["frames"] == sum(len(v) for v in stored.values())
    monos = [f.rx_mono_ns for f in frames]
    assert monos == sorted(monos)
    for shard, recs in stored.items():
        mine = [f for f in frames if f.shard == shard]
        assert [(f.seq, f.rx_mono_ns, f.rx_wall_ns_utc, f.flags, f.opcode, f.payload) for f in mine] == [
            (r.seq, r.rx_mono_ns, r.rx_wall_ns_utc, r.flags, r.opcode, r.payload) for r in recs
        ]
    assert list(run.frames(verify=False)) == frames


def test_universe_from_the_manifest(offline_run):
    run = open_run(offline_run)
    manifest = orjson.loads((offline_run / "manifest.json").read_bytes())
    assert [m.condition_id for m in run.universe] == [m["condition_id"] for m in manifest["universe"]["markets"]]
    m = run.universe[0]
    assert run.tokens[m.yes_token] == (m, "Yes") and run.tokens[m.no_token] == (m, "No")
    assert m.question and m.shard in run.shards


def test_time_bounds_and_shard_choice_equal_a_filter(offline_run):
    run = open_run(offline_run)
    frames = list(run.frames())
    # The window runs from the middle of shard 1's frames to the middle of shard 3's: an offline
    # replay at full speed may send one shard after another, so a window picked from all frames
    # can hold none of the chosen shards'.
    mid = {s: sorted(f.rx_wall_ns_utc for f in frames if f.shard == s) for s in (1, 3)}
    lo, hi = sorted(w[len(w) // 2] for w in mid.values())
    got = list(run.frames(shards=[1, 3], start=lo, end=hi))
    want = [f for f in frames if f.shard in (1, 3) and lo <= f.rx_wall_ns_utc <= hi]
    assert got == want and got
    assert list(run.frames(start=max(f.rx_wall_ns_utc for f in frames) + 1)) == []


def test_flipped_payload_byte_raises_naming_shard_and_seq_or_is_skipped(run_copy):
    frames = list(open_run(run_copy).frames())
    victim = [f for f in frames if f.shard == 2][5]
    offset = _flip(run_copy, 2, victim.seq, RECORD_OVERHEAD + 3, 0x01)
    with pytest.raises(DamagedRecordError) as exc:
        list(open_run(run_copy).frames())
    assert exc.value.damage == Damage(2, victim.seq, offset, "checksum mismatch")
    assert f"shard 2 seq {victim.seq}" in str(exc.value)
    seen: list[Damage] = []
    kept = list(open_run(run_copy).frames(on_damage=seen.append))
    assert seen == [exc.value.damage]
    assert kept == [f for f in frames if f != victim]
    assert len(list(open_run(run_copy).frames(verify=False))) == len(frames)


def test_record_missing_from_a_rebuilt_idx_is_still_reported(run_copy):
    """After a repair the idx skips a corrupt record; the bytes it no longer accounts for are damage."""
    victim_seq = 7
    _flip(run_copy, 0, victim_seq, RECORD_OVERHEAD, 0xFF)
    assert run_cli("capture-verify", "--run-dir", str(run_copy), "--repair").returncode == 1
    with pytest.raises(DamagedRecordError) as exc:
        list(open_run(run_copy).frames(shards=[0]))
    assert exc.value.damage.shard == 0 and exc.value.damage.seq == victim_seq


def test_live_run_reads_complete_records_and_ignores_a_partial_tail(run_copy):
    """A writer mid-append: the idx lags the frames, and the frames file ends inside a record."""
    before = [f for f in open_run(run_copy).frames() if f.shard == 3]
    frames_file = run_copy / "capture" / "shard_03.frames"
    idx_file = run_copy / "capture" / "shard_03.idx"
    cut = _record_offset(run_copy, 3, before[-1].seq) + 20  # the last record is half written
    os.truncate(frames_file, cut)
    os.truncate(idx_file, FILE_HEADER_SIZE + IDX_ENTRY_SIZE * (len(before) - 10) + 17)  # idx 10 behind, torn entry
    got = list(open_run(run_copy).frames(shards=[3]))
    assert got == before[:-1]


def test_events_expand_arrays_and_skip_control_unless_asked(offline_run):
    run = open_run(offline_run)
    frames = list(run.frames())
    events = list(run.events())
    expected = []
    for f in frames:
        if f.flags:
            continue
        doc = orjson.loads(f.payload)
        items = doc if isinstance(doc, list) else [doc]
        expected += [(f.shard, f.seq, i, item) for i, item in enumerate(items)]
    assert [(e.shard, e.seq, e.index, e.message) for e in events] == expected
    assert any(e.index > 0 for e in events) and all(e.kind == "market" for e in events)
    control = [e for e in run.events(include_control=True) if e.kind == "control"]
    assert control and all(e.message == b"PONG" for e in control)


def test_a_slice_reads_like_its_source_window(offline_run, tmp_path):
    frames = list(open_run(offline_run).frames())
    walls = sorted(f.rx_wall_ns_utc for f in frames)
    lo, hi = walls[100], walls[-100]
    out = tmp_path / "slice"
    proc = run_cli("capture-slice", "--run-dir", str(offline_run), "--out", str(out), "--from-wall", str(lo), "--to-wall", str(hi))
    assert proc.returncode == 0, proc.stderr
    assert list(open_run(out).frames()) == [f for f in frames if lo <= f.rx_wall_ns_utc <= hi]


def _flip(run_dir: Path, shard: int, seq: int, at: int, mask: int) -> int:
    """XOR one byte of a stored record (`at` bytes into it); return the record's offset."""
    offset = _record_offset(run_dir, shard, seq)
    path = run_dir / "capture" / f"shard_{shard:02d}.frames"
    data = bytearray(path.read_bytes())
    data[offset + at] ^= mask
    path.write_bytes(bytes(data))
    return offset


def _record_offset(run_dir: Path, shard: int, seq: int) -> int:
    for rec in records_by_shard(run_dir)[shard]:
        if rec.seq == seq:
            return rec.offset
    raise AssertionError(f"no seq {seq} in shard {shard}")


def _batch_rows(run, **kw) -> list[tuple]:
    rows = []
    for b in run.frame_batches(max_frames=1500, **kw):
        d = b.to_pydict()
        walls = b.column("rx_wall_ns_utc").cast("int64").to_pylist()
        rows += list(zip(d["shard"], d["seq"], d["rx_mono_ns"], walls, d["flags"], d["opcode"], d["payload"]))
    return rows


def test_frame_batches_hold_exactly_the_frames(offline_run):
    run = open_run(offline_run)
    frames = [tuple(f) for f in run.frames()]
    assert _batch_rows(run) == frames
    assert _batch_rows(run, verify=False) == frames
    walls = sorted(f[3] for f in frames)
    lo, hi = walls[300], walls[2000]
    assert _batch_rows(run, shards=[0, 2], start=lo, end=hi) == [f for f in frames if f[0] in (0, 2) and lo <= f[3] <= hi]


def test_frame_batches_report_damage_like_frames(run_copy):
    frames = list(open_run(run_copy).frames())
    victim = [f for f in frames if f.shard == 1][40]
    _flip(run_copy, 1, victim.seq, 30, 0x10)  # a header byte covered by the checksum (rx_wall_ns_utc)
    run = open_run(run_copy)
    with pytest.raises(DamagedRecordError) as exc:
        _batch_rows(run)
    assert (exc.value.damage.shard, exc.value.damage.seq) == (1, victim.seq)
    seen: list[Damage] = []
    assert _batch_rows(run, on_damage=seen.append) == [tuple(f) for f in frames if f != victim]
    assert [(d.shard, d.seq) for d in seen] == [(1, victim.seq)]


def test_frame_batches_on_a_live_run(run_copy):
    before = [tuple(f) for f in open_run(run_copy).frames()]
    last3 = [f for f in before if f[0] == 3][-1]
    os.truncate(run_copy / "capture" / "shard_03.frames", _record_offset(run_copy, 3, last3[1]) + 20)
    os.truncate(run_copy / "capture" / "shard_03.idx", FILE_HEADER_SIZE + IDX_ENTRY_SIZE * 5 + 3)
    assert _batch_rows(open_run(run_copy)) == [f for f in before if f != last3]
