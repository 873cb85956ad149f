"""One shard's stored records, read through its idx: bisection for time bounds, a checksum per
record when verifying, and the records written after the idx's last entry (a live run) read
from the frames file without calling its unfinished tail damage."""

from __future__ import annotations

import bisect
import mmap
import struct
from pathlib import Path
from typing import Callable, Generator, Iterator, Sequence

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
from pm_arb.store.scan import ScanSummary, scan, valid_record_at
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
        checked against the bounds, so a clock step back cannot let one through. The walls
        bisected are the idx's: the records just outside [lo, hi) confirm them from the frames
        file, and when they do not (a damaged idx entry steered the search) every entry is read."""
        walls = _Walls(self._idx, self.entries)
        lo = 0 if start is None else bisect.bisect_left(walls, start)
        hi = self.entries if end is None else bisect.bisect_right(walls, end)
        if lo > 0 and not _is_before(self._stored_wall(lo - 1), start):
            return 0, self.entries
        if hi < self.entries and not _is_before(end, self._stored_wall(hi)):
            return 0, self.entries
        return lo, max(lo, hi)

    def closes_window(self, i: int, at: int, hi_w: int) -> bool:
        """Whether a walk that reached frames offset `at` may stop before entry i: entry i starts
        there, agrees with the frames file, and its record is past the window's end. Entry hi
        confirming the end bound is not enough: records the idx does not list, or lists out of
        order, may lie between where the walk got to and entry hi, inside the window."""
        if i >= self.entries or hi_w == 2**63 - 1:
            return True
        e = self.entry(i)
        return e.offset == at and e.rx_wall_ns_utc > hi_w and self._agrees(e)

    def _stored_wall(self, i: int) -> int | None:
        """The receive wall time of idx entry i's record as the frames file holds it, when the
        record's header there agrees with the entry; None when it does not."""
        e = self.entry(i)
        return e.rx_wall_ns_utc if self._agrees(e) else None

    def _agrees(self, e: IdxEntry) -> bool:
        """Whether the frames file holds, at e's offset, a record header saying what e says."""
        if not FILE_HEADER_SIZE <= e.offset <= len(self._buf) - RECORD_OVERHEAD - e.payload_len:
            return False
        return _unpack_header(self._buf, e.offset) == (RECORD_MARK, e.payload_len, e.seq, e.rx_mono_ns, e.rx_wall_ns_utc, e.flags, e.opcode, 0)

    def records(self, start: int | None = None, end: int | None = None, verify: bool = True, on_damage: OnDamage = None) -> Iterator[FrameRecord]:
        """Records with start <= rx_wall_ns_utc <= end (None: unbounded), in seq order."""
        if self.idx_problem is not None:
            # No usable idx: the frames file alone still holds everything (ADR/0001).
            yield from self.records_after(0, start, end, on_damage)
            return
        lo, hi = self.index_range(start, end)
        resume, at, last_seq = yield from self.records_between(lo, hi, start, end, verify, on_damage, confirm_end=True)
        if resume == self.entries and at < len(self._buf):  # records written after the idx was read
            yield from self._scanned(at, _lo(start), _hi(end), on_damage, last_seq)

    def records_between(self, lo: int, hi: int, start: int | None, end: int | None, verify: bool, on_damage: OnDamage,
                        at: int | None = None, last_seq: int | None = None, confirm_end: bool = False) -> Generator[FrameRecord, None, tuple[int | None, int, int | None]]:
        """The records of idx entries [lo, hi) inside the time bounds, one at a time. Returns
        (the entry the walk stopped at: hi, or further; None when it read to the end of the file,
        the frames offset it reached, the seq of the last record before it).

        The idx is a copy of what the frames file holds, so where they disagree (an entry that
        does not start where the one before ended, reaches past the end of the file, or says
        other than the record header it points at) the frames decide: they are scanned from the
        last record that agreed up to the next entry that agrees again, or to the end of the file.
        Only records that fail their own checks are damage. The walk starts where entry lo - 1
        ends, or at `at` (after `last_seq`) when the caller walked there itself. With
        `confirm_end`, [lo, hi) came from index_range and the walk goes on past hi until the
        frames file confirms the window's end (closes_window)."""
        lo_w, hi_w = _lo(start), _hi(end)
        size = len(self._buf)
        if at is not None:
            expected_offset = at
        elif lo > 0:
            prev = self.entry(lo - 1)
            expected_offset, last_seq = prev.offset + RECORD_OVERHEAD + prev.payload_len, prev.seq
        else:
            expected_offset = FILE_HEADER_SIZE
        shard = self.shard
        buf = self._buf
        entry = self.entry
        after_seq = -1 if last_seq is None else last_seq
        i = lo
        while i < hi or (confirm_end and not self.closes_window(i, expected_offset, hi_w)):
            e = entry(i)
            end_at = e.offset + RECORD_OVERHEAD + e.payload_len
            if e.offset == expected_offset and end_at <= size and e.seq > after_seq:
                if not verify:
                    if lo_w <= e.rx_wall_ns_utc <= hi_w:
                        yield FrameRecord(shard, e.seq, e.rx_mono_ns, e.rx_wall_ns_utc, e.flags, e.opcode, bytes(buf[e.offset + RECORD_OVERHEAD:end_at]))
                    expected_offset, after_seq, i = end_at, e.seq, i + 1
                    continue
                header = bytes(buf[e.offset : e.offset + RECORD_HEADER_SIZE])
                mark, length, seq, mono, wall, flags, opcode, reserved = _unpack_header(header)
                # The checksum covers the header's other fields; what it says of them is used.
                if mark == RECORD_MARK and length == e.payload_len and seq == e.seq and not reserved:
                    if lo_w <= wall <= hi_w:
                        payload = bytes(buf[e.offset + RECORD_OVERHEAD:end_at])
                        if record_checksum_ok(header, payload, _unpack_checksum(buf, e.offset + RECORD_HEADER_SIZE)[0]):
                            yield FrameRecord(shard, seq, mono, wall, flags, opcode, payload)
                        else:
                            _report(on_damage, Damage(shard, e.seq, e.offset, "checksum mismatch"))
                    expected_offset, after_seq, i = end_at, e.seq, i + 1
                    continue
                # Where the idx chain says, and damaged; the frames after it are where the next
                # entry says (else bytes went missing or were added here: the frames decide).
                if valid_record_at(buf, e.offset) is None and (i + 1 >= self.entries or self._agrees(entry(i + 1))):
                    _report(on_damage, Damage(shard, e.seq, e.offset, "the record's header does not match its idx entry"))
                    expected_offset, after_seq, i = end_at, e.seq, i + 1
                    continue
            # The entry disagrees with the frames file (or is out of the idx's own order).
            resume, expected_offset, last_seq = yield from self._resync(
                i, expected_offset, None if after_seq < 0 else after_seq, lo_w, hi_w, on_damage)
            if resume is None:
                return None, expected_offset, last_seq
            after_seq = -1 if last_seq is None else last_seq
            i = resume
        return i, expected_offset, None if after_seq < 0 else after_seq

    def _resync(self, i: int, at: int, last_seq: int | None, lo_w: int, hi_w: int,
                on_damage: OnDamage) -> Generator[FrameRecord, None, tuple[int | None, int, int | None]]:
        """Idx entry i disagrees with the frames file: scan the frames from `at` (where the last
        agreeing record ended) to the next entry that agrees, or to the end of the file.
        Returns (that entry, its offset, the seq before it), or (None, ...) at the end of the file."""
        nxt = next((j for j in range(i + 1, self.entries) if self.entry(j).offset >= at and self._agrees(self.entry(j))), None)
        stop = len(self._buf) if nxt is None else self.entry(nxt).offset
        e = self.entry(i)
        # Bytes before an agreeing entry were written; so were those of entry i when it follows
        # on and no intact record contradicts it (the file was cut or damaged after the write).
        vouched = stop if nxt is not None else 0
        if nxt is None and e.offset == at and valid_record_at(self._buf, e.offset) is None:
            vouched = e.offset + RECORD_OVERHEAD + e.payload_len
        summary = ScanSummary(end_of_valid=at)
        last_seq = yield from self._scanned(at, lo_w, hi_w, on_damage, last_seq, summary, vouched, stop)
        if nxt is None and vouched > len(self._buf) and summary.end_of_valid == len(self._buf):
            _report(on_damage, Damage(self.shard, e.seq if e.offset == at else (-1 if last_seq is None else last_seq) + 1, len(self._buf),
                                      f"the idx lists records to byte {vouched}, past the end of the frames file "
                                      f"({len(self._buf)} bytes): lost after they were written"))
        if nxt is None:
            return None, len(self._buf), last_seq
        return nxt, stop, last_seq

    def records_after(self, n: int, start: int | None, end: int | None, on_damage: OnDamage) -> Iterator[FrameRecord]:
        """Records past the first n idx entries, found by scanning the frames file: those written
        after the idx was read (a live run), an idx that lags after a crash, or every record
        when there is no usable idx."""
        if self.idx_problem is not None or n == 0:
            at, last_seq = FILE_HEADER_SIZE, None
        else:
            last = self.entry(n - 1)
            at, last_seq = last.offset + RECORD_OVERHEAD + last.payload_len, last.seq
        if at < len(self._buf):
            yield from self._scanned(at, _lo(start), _hi(end), on_damage, last_seq)

    def _scanned(self, start: int, lo_w: int, hi_w: int, on_damage: OnDamage, last_seq: int | None,
                 summary: ScanSummary | None = None, vouched_until: int = 0, stop: int | None = None) -> Generator[FrameRecord, None, int | None]:
        """Records found by scanning the frames file from `start` (to `stop`); an unfinished tail
        no idx entry vouches for is skipped quietly (it is what a live writer or a crash leaves),
        anything else is damage. Returns the seq of the last record found (else `last_seq`)."""
        summary = summary if summary is not None else ScanSummary()
        shard = self.shard
        reported = 0
        for rec in scan(self._buf, summary, vouched_until, start, stop):
            while reported < len(summary.corrupt):
                _report(on_damage, _region(shard, summary.corrupt[reported], last_seq))
                reported += 1
            if last_seq is not None and rec.seq <= last_seq:
                # Intact, but a seq already read (bytes written twice): read once, and said.
                _report(on_damage, Damage(shard, rec.seq, rec.offset, f"seq {rec.seq} again, after seq {last_seq}: skipped"))
                continue
            last_seq = rec.seq
            if lo_w <= rec.rx_wall_ns_utc <= hi_w:
                yield FrameRecord(shard, rec.seq, rec.rx_mono_ns, rec.rx_wall_ns_utc, rec.flags, rec.opcode, rec.payload)
        for region in summary.corrupt[reported:]:
            _report(on_damage, _region(shard, region, last_seq))
        return last_seq


def _is_before(a: int | None, b: int | None) -> bool:
    """a < b, where None (a time not known) confirms nothing."""
    return a is not None and b is not None and a < b


def _lo(start: int | None) -> int:
    return -(2**63) if start is None else start


def _hi(end: int | None) -> int:
    return 2**63 - 1 if end is None else end


def _drop(view, released: int, end: int) -> int:
    end = min(end, len(view))  # an offset from a damaged idx entry can lie past the file
    end -= end % mmap.PAGESIZE
    if end > released and hasattr(view, "madvise"):
        view.madvise(mmap.MADV_DONTNEED, released, end - released)
        return end
    return released


def _region(shard: int, region, last_seq: int | None) -> Damage:
    # The seq after the last intact record is the first one lost; a damaged region's own header
    # may claim any seq (bytes cut out of the file leave a header's first bytes before others').
    seq = last_seq + 1 if last_seq is not None else region.seq
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
