"""One shard's stored records, read through its idx: bisection for time bounds, a checksum per
record when verifying, and the records written after the idx's last entry (a live run) read
from the frames file without calling its unfinished tail damage."""

from __future__ import annotations

import bisect
import mmap
import struct
from pathlib import Path
from typing import Callable, Iterator, Sequence

from pm_arb.reader.records import Damage, DamagedRecordError, FrameRecord
from pm_arb.store.frames_format import (
    CHECKSUM,
    FILE_HEADER_SIZE,
    FRAMES_MAGIC,
    IDX_ENTRY_SIZE,
    IDX_MAGIC,
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    RECORD_MARK,
    RECORD_OVERHEAD,
    HeaderProblem,
    IdxEntry,
    decode_idx,
    check_file_header,
    record_checksum_ok,
)
from pm_arb.store.scan import ScanSummary, scan
from pm_arb.store.shard_files import close_view, frames_path, idx_path, map_file

OnDamage = Callable[[Damage], None] | None
_WALL_AT = struct.Struct("<q")
_WALL_OFFSET_IN_ENTRY = 32
_unpack_header = RECORD_HEADER.unpack_from
_unpack_checksum = CHECKSUM.unpack_from


class ShardView:
    """Read-only view of one shard's frames and idx files as they are at open time.

    The idx is mapped before the frames file: the writer appends a record before its idx
    entry, so every entry seen then points into bytes already in the frames view.
    """

    def __init__(self, capture_dir: Path, shard: int) -> None:
        self.shard = shard
        self._idx = b""
        self.idx_problem: str | None = None
        ipath = idx_path(capture_dir, shard)
        try:
            self._idx = map_file(ipath)
            # Only an unreadable header (too short, a newer format) stops the reader. A damaged one
            # says nothing about the records behind it (ADR/0008): each record's own checksum is
            # checked, and capture-verify reports the header.
            check_file_header(bytes(self._idx[:FILE_HEADER_SIZE]), IDX_MAGIC, ipath.name, shard)
        except FileNotFoundError:
            self.idx_problem = f"{ipath.name} is missing"
        except (OSError, HeaderProblem) as exc:
            self.idx_problem = str(exc)
        fpath = frames_path(capture_dir, shard)
        self._buf = map_file(fpath)
        try:
            check_file_header(bytes(self._buf[:FILE_HEADER_SIZE]), FRAMES_MAGIC, fpath.name, shard)
        except HeaderProblem:
            self.close()
            raise
        self._released_frames = self._released_idx = 0
        self.entries = 0 if self.idx_problem else max(0, (len(self._idx) - FILE_HEADER_SIZE) // IDX_ENTRY_SIZE)

    def close(self) -> None:
        for view in (self._idx, self._buf):
            try:
                close_view(view)
            except BufferError:
                pass  # a NumPy array (reader/columns.py) still maps it; unmapped when that is freed

    def release(self, frames_end: int, entries_done: int) -> None:
        """Drop this process's mapping of what was read: frames bytes before `frames_end`, the
        first `entries_done` idx entries. Mapped pages count as resident memory until released;
        without this a bulk reader's RSS grows with the files, not with what it holds (the
        page cache keeps the pages either way)."""
        self._released_frames = _drop(self._buf, self._released_frames, frames_end)
        self._released_idx = _drop(self._idx, self._released_idx, FILE_HEADER_SIZE + entries_done * IDX_ENTRY_SIZE)

    def entry(self, i: int) -> IdxEntry:
        return decode_idx(self._idx, FILE_HEADER_SIZE + i * IDX_ENTRY_SIZE)

    def index_range(self, start: int | None, end: int | None) -> tuple[int, int]:
        """Entries [lo, hi) whose receive wall time may lie in [start, end], by bisection.
        Receive walls are non-decreasing within a shard (ADR/0001); each record is also
        checked against the bounds, so a clock step back cannot let one through."""
        walls = _Walls(self._idx, self.entries)
        lo = 0 if start is None else bisect.bisect_left(walls, start)
        hi = self.entries if end is None else bisect.bisect_right(walls, end)
        return lo, max(lo, hi)

    def records(self, start: int | None = None, end: int | None = None, verify: bool = True, on_damage: OnDamage = None) -> Iterator[FrameRecord]:
        """Records with start <= rx_wall_ns_utc <= end (None: unbounded), in seq order."""
        if self.idx_problem is not None:
            # No usable idx: the frames file alone still holds everything (ADR/0001).
            yield from self.records_after(0, start, end, on_damage)
            return
        lo, hi = self.index_range(start, end)
        yield from self.records_between(lo, hi, start, end, verify, on_damage)
        if hi == self.entries:
            yield from self.records_after(hi, start, end, on_damage)

    def records_between(self, lo: int, hi: int, start: int | None, end: int | None, verify: bool, on_damage: OnDamage) -> Iterator[FrameRecord]:
        """The records of idx entries [lo, hi) inside the time bounds, one at a time."""
        lo_w = -(2**63) if start is None else start
        hi_w = 2**63 - 1 if end is None else end
        size = len(self._buf)
        expected = self.entry(lo - 1) if lo > 0 else None
        expected_offset = FILE_HEADER_SIZE if expected is None else expected.offset + RECORD_OVERHEAD + expected.payload_len
        shard = self.shard
        buf = self._buf
        for i in range(lo, hi):
            e = self.entry(i)
            if e.offset != expected_offset:
                _report(on_damage, Damage(shard, e.seq - 1 if e.offset > expected_offset else e.seq, expected_offset,
                                          f"{abs(e.offset - expected_offset)} bytes the idx does not account for before the next record"))
            end_at = e.offset + RECORD_OVERHEAD + e.payload_len
            expected_offset = end_at
            if end_at > size:
                _report(on_damage, Damage(shard, e.seq, e.offset, "the idx lists a record past the end of the frames file"))
                return
            if not (lo_w <= e.rx_wall_ns_utc <= hi_w):
                continue
            start_payload = e.offset + RECORD_OVERHEAD
            payload = bytes(buf[start_payload:end_at])
            if verify:
                header = bytes(buf[e.offset : e.offset + RECORD_HEADER_SIZE])
                mark, length, seq, mono, wall, flags, opcode, _ = _unpack_header(header)
                if mark != RECORD_MARK or length != e.payload_len or seq != e.seq:
                    _report(on_damage, Damage(shard, e.seq, e.offset, "the record's header does not match its idx entry"))
                    continue
                if not record_checksum_ok(header, payload, _unpack_checksum(buf, e.offset + RECORD_HEADER_SIZE)[0]):
                    _report(on_damage, Damage(shard, e.seq, e.offset, "checksum mismatch"))
                    continue
                yield FrameRecord(shard, seq, mono, wall, flags, opcode, payload)
            else:
                yield FrameRecord(shard, e.seq, e.rx_mono_ns, e.rx_wall_ns_utc, e.flags, e.opcode, payload)

    def records_after(self, n: int, start: int | None, end: int | None, on_damage: OnDamage) -> Iterator[FrameRecord]:
        """Records past the first n idx entries, found by scanning the frames file: those written
        after the idx was read (a live run), an idx that lags after a crash, or every record
        when there is no usable idx."""
        lo_w = -(2**63) if start is None else start
        hi_w = 2**63 - 1 if end is None else end
        if self.idx_problem is not None or n == 0:
            at, last_seq = FILE_HEADER_SIZE, None
        else:
            last = self.entry(n - 1)
            at, last_seq = last.offset + RECORD_OVERHEAD + last.payload_len, last.seq
        if at < len(self._buf):
            yield from self._scanned(at, lo_w, hi_w, on_damage, last_seq)

    def _scanned(self, start: int, lo_w: int, hi_w: int, on_damage: OnDamage, last_seq: int | None) -> Iterator[FrameRecord]:
        """Records found by scanning the frames file from `start`; an unfinished tail is skipped
        quietly (it is what a live writer or a crash leaves), anything else is damage."""
        summary = ScanSummary()
        shard = self.shard
        reported = 0
        for rec in scan(self._buf, summary, 0, start):
            while reported < len(summary.corrupt):
                _report(on_damage, _region(shard, summary.corrupt[reported], last_seq))
                reported += 1
            last_seq = rec.seq
            if lo_w <= rec.rx_wall_ns_utc <= hi_w:
                yield FrameRecord(shard, rec.seq, rec.rx_mono_ns, rec.rx_wall_ns_utc, rec.flags, rec.opcode, rec.payload)
        for region in summary.corrupt[reported:]:
            _report(on_damage, _region(shard, region, last_seq))


def _drop(view, released: int, end: int) -> int:
    end -= end % mmap.PAGESIZE
    if end > released and hasattr(view, "madvise"):
        view.madvise(mmap.MADV_DONTNEED, released, end - released)
        return end
    return released


def _region(shard: int, region, last_seq: int | None) -> Damage:
    seq = region.seq if region.seq is not None else (last_seq + 1 if last_seq is not None else None)
    return Damage(shard, seq, region.offset, f"{region.reason} ({region.length} bytes)")


def _report(on_damage: OnDamage, damage: Damage) -> None:
    if on_damage is None:
        raise DamagedRecordError(damage)
    on_damage(damage)


class _Walls(Sequence):
    """The idx's receive wall times as a sequence bisect can search, decoded on demand."""

    def __init__(self, idx, entries: int) -> None:
        self._idx = idx
        self._entries = entries

    def __len__(self) -> int:
        return self._entries

    def __getitem__(self, i):  # type: ignore[override]
        return _WALL_AT.unpack_from(self._idx, FILE_HEADER_SIZE + i * IDX_ENTRY_SIZE + _WALL_OFFSET_IN_ENTRY)[0]
