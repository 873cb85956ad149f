"""Frames/idx store on real files: round trip, corruption found at the right seq, crash repair."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from pm_arb.commands.verify import verify_run
from pm_arb.store.frames_format import FILE_HEADER_SIZE, IDX_ENTRY_SIZE, RECORD_OVERHEAD
from pm_arb.store.shard_files import ShardFileWriter, ShardReader, frames_path, idx_path, repair_shard


def payloads() -> list[bytes]:
    rng = random.Random(3)
    out = [b"PONG", b'{"event_type":"book"}', b"", bytes(range(256)), os.urandom(1 << 20)]
    out += [rng.randbytes(rng.randrange(0, 2000)) for _ in range(300)]
    return out


def write_run(run_dir: Path, shard: int = 0, items: list[bytes] | None = None) -> list[bytes]:
    items = payloads() if items is None else items
    w = ShardFileWriter(run_dir / "capture", shard)
    for start in range(0, len(items), 37):
        w.append_batch([(1000 + i, 5_000 + i * 10, i % 3, 1 + (i % 2), items[i]) for i in range(start, min(len(items), start + 37))])
    w.fsync()
    w.close()
    return items


def test_round_trip_bytes_timestamps_and_seq(tmp_path):
    items = write_run(tmp_path, shard=3)
    with ShardReader(tmp_path / "capture", 3) as rd:
        recs = list(rd)
        assert [r.payload for r in recs] == items
        assert [r.seq for r in recs] == list(range(len(items)))
        assert [r.rx_mono_ns for r in recs] == [1000 + i for i in range(len(items))]
        assert [r.rx_wall_ns_utc for r in recs] == [5_000 + i * 10 for i in range(len(items))]
        assert [r.flags for r in recs] == [i % 3 for i in range(len(items))]
        assert rd.by_seq(4).payload == items[4]
        assert rd.by_seq(len(items)) is None
        assert rd.first_index_at_or_after_wall(5_000 + 55) == 6
    result = verify_run(tmp_path, show_progress=False)
    assert result["ok"] and result["totals"]["frames"] == len(items)
    assert result["totals"]["bytes"] == sum(len(p) for p in items)


def record_offsets(run_dir: Path, shard: int = 0) -> list[tuple[int, int, int]]:
    with ShardReader(run_dir / "capture", shard) as rd:
        return [(r.offset, r.seq, len(r.payload)) for r in rd]


@pytest.mark.parametrize("seq_pick", [0, 1, 150, -1])
@pytest.mark.parametrize("field_offset", [0, 5, 9, 17, 26, 33, 36, 43, "payload"])
def test_single_flipped_byte_reported_at_shard_and_seq(tmp_path, seq_pick, field_offset):
    write_run(tmp_path, shard=2)
    offsets = record_offsets(tmp_path, 2)
    offset, seq, length = offsets[seq_pick]
    if field_offset == "payload":
        pos = offset + RECORD_OVERHEAD + length // 2
    else:
        pos = offset + field_offset
    path = frames_path(tmp_path / "capture", 2)
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x40
    path.write_bytes(data)
    result = verify_run(tmp_path, show_progress=False)
    assert not result["ok"]
    shard = result["shards"][0]
    assert shard["shard"] == 2
    assert shard["crc_mismatch"] == 1
    assert shard["torn_tail_bytes"] == 0 or seq_pick == -1
    crc = [d for d in shard["defects"] if d["kind"] == "crc_mismatch"]
    assert crc and crc[0]["seq"] == seq
    assert shard["frames"] == len(offsets) - 1


def test_truncated_tail_reported_then_repaired_by_reopening_writer(tmp_path):
    items = write_run(tmp_path)
    path = frames_path(tmp_path / "capture", 0)
    size = path.stat().st_size
    # SIGKILL mid-write: the last record is cut short, and its idx entry (written after the
    # frames) never made it
    os.truncate(path, size - 7)
    ipath = idx_path(tmp_path / "capture", 0)
    os.truncate(ipath, ipath.stat().st_size - IDX_ENTRY_SIZE)
    result = verify_run(tmp_path, show_progress=False)
    assert not result["ok"]
    assert result["totals"]["torn_tail_bytes"] > 0 and result["totals"]["crc_mismatch"] == 0
    w = ShardFileWriter(tmp_path / "capture", 0)
    assert w.repair is not None and w.repair.torn_tail_bytes_truncated == result["totals"]["torn_tail_bytes"]
    assert w.next_seq == len(items) - 1
    w.append_batch([(1, 2, 0, 1, b"after repair")])
    w.close()
    with ShardReader(tmp_path / "capture", 0) as rd:
        got = [r.payload for r in rd]
    assert got == items[:-1] + [b"after repair"]
    assert verify_run(tmp_path, show_progress=False)["ok"]


def test_lagging_idx_is_rebuilt_from_frames(tmp_path):
    items = write_run(tmp_path)
    ipath = idx_path(tmp_path / "capture", 0)
    os.truncate(ipath, FILE_HEADER_SIZE + 10 * IDX_ENTRY_SIZE + 13)  # crash between the frames and idx writes
    result = verify_run(tmp_path, show_progress=False)
    assert result["totals"]["idx_mismatch"] == len(items) - 10 and result["totals"]["crc_mismatch"] == 0
    rep = repair_shard(frames_path(tmp_path / "capture", 0), ipath, 0)
    assert rep.idx_entries_rebuilt == len(items) - 10 and rep.torn_tail_bytes_truncated == 0
    assert verify_run(tmp_path, show_progress=False)["ok"]


def test_zero_filled_tail_counts_as_torn(tmp_path):
    write_run(tmp_path)
    path = frames_path(tmp_path / "capture", 0)
    with open(path, "ab") as fh:
        fh.write(b"\0" * 500)  # power loss after the size grew
    result = verify_run(tmp_path, show_progress=False)
    assert result["totals"]["torn_tail_bytes"] == 500 and result["totals"]["crc_mismatch"] == 0


def test_corruption_in_the_middle_is_not_truncated_by_repair(tmp_path):
    items = write_run(tmp_path)
    offset, seq, _ = record_offsets(tmp_path)[100]
    path = frames_path(tmp_path / "capture", 0)
    data = bytearray(path.read_bytes())
    data[offset + 20] ^= 1
    path.write_bytes(data)
    size = path.stat().st_size
    rep = repair_shard(path, idx_path(tmp_path / "capture", 0), 0)
    assert path.stat().st_size == size and rep.corrupt_regions == 1
    with ShardReader(tmp_path / "capture", 0) as rd:
        assert [r.payload for r in rd] == items[:100] + items[101:]
