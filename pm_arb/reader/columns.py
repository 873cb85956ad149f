"""Frames in columnar batches (Arrow), for bulk consumers such as `capture-export`.

The same records, checks and order as `Run.frames`, without a Python object per frame: idx
entries are read as a NumPy array, headers and payloads are gathered out of the mapped frames
file with Arrow's slicing kernels, and only the checksum (xxh3 of header and payload) is a call per
record. A chunk with anything unusual (a gap the idx does not explain, a header or checksum that
does not match) is re-read record by record through `ShardView.records`, which names the damage.
NumPy and PyArrow are imported here only, never by the capture path.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from pm_arb.reader.records import FrameRecord
from pm_arb.reader.shard_view import OnDamage, ShardView
from pm_arb.store.frames_format import FILE_HEADER_SIZE, IDX_ENTRY_SIZE, RECORD_HEADER_SIZE, RECORD_MARK, RECORD_OVERHEAD

IDX_DTYPE = np.dtype([("offset", "<u8"), ("payload_len", "<u4"), ("flags", "u1"), ("opcode", "u1"), ("reserved", "<u2"),
                      ("seq", "<u8"), ("rx_mono_ns", "<i8"), ("rx_wall_ns_utc", "<i8")])
HEADER_DTYPE = np.dtype([("mark", "<u4"), ("payload_len", "<u4"), ("seq", "<u8"), ("rx_mono_ns", "<i8"), ("rx_wall_ns_utc", "<i8"),
                         ("flags", "u1"), ("opcode", "u1"), ("reserved", "<u2"), ("checksum", "<u8")])
assert IDX_DTYPE.itemsize == IDX_ENTRY_SIZE and HEADER_DTYPE.itemsize == RECORD_OVERHEAD

FRAMES_SCHEMA = pa.schema([
    ("shard", pa.int16()),
    ("seq", pa.int64()),
    ("rx_mono_ns", pa.int64()),
    ("rx_wall_ns_utc", pa.timestamp("ns", tz="UTC")),
    ("flags", pa.uint8()),
    ("opcode", pa.uint8()),
    ("payload", pa.binary()),
])
MAX_BATCH_BYTES = 256 * 1024 * 1024  # payload bytes per batch: bounds memory, keeps int32 offsets

_NO_END = 2**31 - 1  # binary_slice's stop for "to the end" (its default stop mis-sizes the output)
_xxh3 = xxhash.xxh3_64_intdigest


class _Columns:
    """Some frames of one shard as arrays (seq order)."""

    __slots__ = ("shard", "seq", "mono", "wall", "flags", "opcode", "payload")

    def __init__(self, shard, seq, mono, wall, flags, opcode, payload: pa.Array) -> None:
        self.shard, self.seq, self.mono, self.wall, self.flags, self.opcode, self.payload = shard, seq, mono, wall, flags, opcode, payload

    @classmethod
    def of_records(cls, shard: int, recs: list[FrameRecord]) -> "_Columns":
        if not recs:  # the common case (no records past the idx); pa.array() would import pandas
            empty = np.zeros(0, np.int64)
            return cls(shard, empty, empty, empty, empty.astype(np.uint8), empty.astype(np.uint8), pa.nulls(0, pa.binary()))
        return cls(shard, np.array([r.seq for r in recs], np.int64), np.array([r.rx_mono_ns for r in recs], np.int64),
                   np.array([r.rx_wall_ns_utc for r in recs], np.int64), np.array([r.flags for r in recs], np.uint8),
                   np.array([r.opcode for r in recs], np.uint8), pa.array([r.payload for r in recs], pa.binary()))

    def __len__(self) -> int:
        return len(self.seq)

    def take(self, n: int) -> tuple["_Columns", "_Columns"]:
        a = _Columns(self.shard, self.seq[:n], self.mono[:n], self.wall[:n], self.flags[:n], self.opcode[:n], self.payload.slice(0, n))
        b = _Columns(self.shard, self.seq[n:], self.mono[n:], self.wall[n:], self.flags[n:], self.opcode[n:], self.payload.slice(n))
        return a, b


class _ShardCursor:
    """Walks one shard's records in [start, end] as column chunks."""

    def __init__(self, view: ShardView, start: int | None, end: int | None, verify: bool, on_damage: OnDamage, chunk: int) -> None:
        self.view, self.verify, self.on_damage, self.chunk = view, verify, on_damage, chunk
        self.lo_w = -(2**63) if start is None else start
        self.hi_w = 2**63 - 1 if end is None else end
        self.start, self.end = start, end
        self.pending: _Columns | None = None
        self._buf = np.frombuffer(view._buf, np.uint8) if len(view._buf) else np.zeros(0, np.uint8)
        if view.idx_problem is None and view.entries:
            self.entries = np.frombuffer(view._idx, IDX_DTYPE, count=view.entries, offset=FILE_HEADER_SIZE)
            self.pos, self.hi = view.index_range(start, end)
        else:
            self.entries = np.zeros(0, IDX_DTYPE)
            self.pos = self.hi = 0
        self._tail_done = False
        self._end_confirmed = False
        self._slow = None  # the record-by-record walk over a chunk the bulk path could not take
        self.at: int | None = None  # where the next record starts, once a walk got there (None: as the idx says)
        self.last_seq: int | None = None

    def fill(self) -> bool:
        """Make `pending` hold at least one frame if any remain; False when the shard is done."""
        while self.pending is None or not len(self.pending):
            if self._slow is not None:
                self.pending = self._from_slow()
            elif self.pos < self.hi:
                self.pending = self._from_idx()
            elif not self._end_confirmed:
                self._end_confirmed = True
                self.pending = self._past_hi()
            elif not self._tail_done:
                self._tail_done = True
                self.pending = self._tail()
            else:
                return False
        return True

    def _past_hi(self) -> _Columns:
        """The walk reached the window's last entry: unless the frames file confirms the window
        ends there (ShardView.closes_window), walk on record by record until it does."""
        at = self.at
        if at is None:
            prev = self.entries[self.pos - 1] if self.pos else None
            at = FILE_HEADER_SIZE if prev is None else int(prev["offset"]) + RECORD_OVERHEAD + int(prev["payload_len"])
        if self.view.closes_window(self.pos, at, self.hi_w):
            return _Columns.of_records(self.view.shard, [])
        self._slow = self.view.records_between(self.pos, self.pos, self.start, self.end, self.verify, self.on_damage,
                                               self.at, self.last_seq, confirm_end=True)
        return self._from_slow()

    def _tail(self) -> _Columns:
        """Records after the idx's last entry (a live run), or all of them without a usable idx."""
        if self.view.idx_problem is None and self.hi < self.view.entries:
            return _Columns.of_records(self.view.shard, [])
        recs = list(self.view.records_after(self.view.entries, self.start, self.end, self.on_damage))
        return _Columns.of_records(self.view.shard, recs)

    def _from_idx(self) -> _Columns:
        a = self.pos
        b = min(self.hi, a + self.chunk)
        e = self.entries[a:b].copy()  # not a view: the mapping must be closable after an error
        lens = e["payload_len"].astype(np.int64)
        within = np.cumsum(lens) <= MAX_BATCH_BYTES
        if not within.all():
            b = a + max(1, int(within.sum()))
            e, lens = e[:b - a], lens[:b - a]
        cols = self._bulk(a, e, lens)
        if cols is None:  # something does not add up: let the record-by-record path name it
            self._slow = self.view.records_between(a, b, self.start, self.end, self.verify, self.on_damage, self.at, self.last_seq)
            return self._from_slow()
        self.pos = b
        self.at, self.last_seq = int(e["offset"][-1]) + RECORD_OVERHEAD + int(lens[-1]), int(e["seq"][-1])
        self.view.release(int(e["offset"][-1]), a)
        return cols

    def _from_slow(self) -> _Columns:
        """The next records of the record-by-record walk, at most a chunk at a time (where the
        idx disagrees with the frames it scans the frames file, possibly to its end)."""
        recs = []
        try:
            while len(recs) < self.chunk:
                recs.append(next(self._slow))
        except StopIteration as done:
            self._slow = None
            resume, self.at, self.last_seq = done.value
            if resume is None:  # read to the end of the frames file: no idx entry and no tail left
                self.pos = self.hi = self.view.entries
                self._tail_done = True
            else:
                self.pos = max(self.pos, resume)
        return _Columns.of_records(self.view.shard, recs)

    def _bulk(self, a: int, e: np.ndarray, lens: np.ndarray) -> _Columns | None:
        offs = e["offset"].astype(np.int64)
        ends = offs + RECORD_OVERHEAD + lens
        if self.at is not None:
            first = self.at
        else:
            first = FILE_HEADER_SIZE if a == 0 else int(self.entries[a - 1]["offset"]) + RECORD_OVERHEAD + int(self.entries[a - 1]["payload_len"])
        if offs[0] != first or (offs[1:] != ends[:-1]).any() or ends[-1] > len(self._buf):
            return None
        # The records are back to back, so one Arrow binary array over the mapped bytes holds
        # them whole; Arrow's slicing kernels then copy headers and payloads out at memcpy speed.
        bounds = np.empty(len(offs) + 1, np.int32)
        bounds[:-1] = offs - offs[0]
        bounds[-1] = ends[-1] - offs[0]
        whole = pa.Array.from_buffers(pa.binary(), len(offs), [None, pa.py_buffer(bounds), pa.py_buffer(self._buf[offs[0]:ends[-1]])])
        hdr = np.frombuffer(pc.binary_slice(whole, 0, RECORD_OVERHEAD).buffers()[2], HEADER_DTYPE, count=len(offs))
        payload = pc.binary_slice(whole, RECORD_OVERHEAD, _NO_END)
        if self.verify:
            if ((hdr["mark"] != RECORD_MARK) | (hdr["payload_len"] != e["payload_len"]) | (hdr["seq"] != e["seq"])).any():
                return None
            no_separator = pa.Array.from_buffers(pa.binary(), len(offs), [None, pa.py_buffer(np.zeros(len(offs) + 1, np.int32)), pa.py_buffer(b"")])
            hashed = pc.binary_join_element_wise(pc.binary_slice(whole, 0, RECORD_HEADER_SIZE), payload, no_separator)
            bounds = np.frombuffer(hashed.buffers()[1], np.int32, count=len(offs) + 1, offset=hashed.offset * 4).tolist()
            mv = memoryview(hashed.buffers()[2])
            sums = np.fromiter((_xxh3(mv[s:t]) for s, t in zip(bounds, bounds[1:])), np.uint64, len(offs))
            if (sums != hdr["checksum"]).any():
                return None
            src = hdr
        else:
            src = e
        del whole
        wall = src["rx_wall_ns_utc"].astype(np.int64)
        cols = _Columns(self.view.shard, src["seq"].astype(np.int64), src["rx_mono_ns"].astype(np.int64), wall,
                        src["flags"].astype(np.uint8), src["opcode"].astype(np.uint8), payload)
        inside = (wall >= self.lo_w) & (wall <= self.hi_w)
        if not inside.all():  # a receive clock that stepped back inside the bisected range
            idx = np.nonzero(inside)[0]
            cols = _Columns(cols.shard, cols.seq[idx], cols.mono[idx], cols.wall[idx], cols.flags[idx], cols.opcode[idx],
                            cols.payload.take(arrow_of(idx, pa.int64())))
        return cols


def frame_batches(views: list[ShardView], start: int | None = None, end: int | None = None, verify: bool = True,
                  on_damage: OnDamage = None, max_frames: int = 65536) -> Iterator[pa.RecordBatch]:
    """Record batches (FRAMES_SCHEMA) of every frame with start <= rx_wall_ns_utc <= end, in
    receive order across shards (rx_mono_ns, then shard, then seq), each at most `max_frames`."""
    cursors = [_ShardCursor(v, start, end, verify, on_damage, max(1024, max_frames // max(1, len(views)))) for v in views]
    while True:
        live = [c for c in cursors if c.fill()]
        if not live:
            return
        # Everything up to the smallest last-receive-time among the shards' chunks is complete.
        horizon = min(int(c.pending.mono[-1]) for c in live)
        parts = []
        for c in live:
            n = int(np.searchsorted(c.pending.mono, horizon, side="right"))
            if n:
                part, c.pending = c.pending.take(n)
                parts.append(part)
        yield _batch(parts)


def arrow_of(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    """A NumPy array as an Arrow array without a copy, and without pa.array(), which imports
    pandas to check whether it was handed a pandas object."""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(type_, len(values), [None, pa.py_buffer(values)])


def int64_values(values: pa.Array) -> np.ndarray:
    """The values of a null-free 64-bit Arrow array as NumPy, without a copy (to_numpy() and
    np.asarray() also go through PyArrow's pandas check)."""
    return np.frombuffer(values.buffers()[1], np.int64, count=len(values), offset=values.offset * 8)


def _batch(parts: list[_Columns]) -> pa.RecordBatch:
    shard = np.concatenate([np.full(len(p), p.shard, np.int16) for p in parts])
    seq = np.concatenate([p.seq for p in parts])
    mono = np.concatenate([p.mono for p in parts])
    if len(parts) > 1:
        order = np.lexsort((seq, shard, mono))
        payload = pa.concat_arrays([p.payload for p in parts]).take(arrow_of(order, pa.int64()))
    else:  # one shard's chunk is in seq order already (the export's case: a worker per shard)
        order = slice(None)
        payload = parts[0].payload
    wall = np.concatenate([p.wall for p in parts])[order]
    return pa.RecordBatch.from_arrays([
        arrow_of(shard[order], pa.int16()), arrow_of(seq[order], pa.int64()), arrow_of(mono[order], pa.int64()),
        arrow_of(wall, pa.timestamp("ns", tz="UTC")),
        arrow_of(np.concatenate([p.flags for p in parts])[order], pa.uint8()),
        arrow_of(np.concatenate([p.opcode for p in parts])[order], pa.uint8()),
        payload,
    ], schema=FRAMES_SCHEMA)
