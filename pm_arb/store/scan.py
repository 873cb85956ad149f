"""Walk a frames file's bytes and classify every region: good record, corrupt region, torn tail.

Pure over a bytes-like buffer (an mmap in practice), so verify, repair and the reader share one
definition of "valid". A torn tail is what a crash leaves: a strict prefix of a record, or an
all-zero run (power loss after the size grew but before data reached the disk). Anything else
that fails its checksum is corruption, reported and never truncated by repair.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

from pm_arb.store.frames_format import (
    CHECKSUM,
    FILE_HEADER_SIZE,
    MAX_PAYLOAD,
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    RECORD_MARK,
    RECORD_MARK_BYTES,
    RECORD_OVERHEAD,
    FrameRecord,
    record_checksum_ok,
)

_unpack_header = RECORD_HEADER.unpack_from
_unpack_checksum = CHECKSUM.unpack_from


class CorruptRegion(NamedTuple):
    offset: int
    length: int
    reason: str
    seq: int | None  # the seq the damaged record claims, when its header still parses


@dataclass
class ScanSummary:
    records: int = 0
    payload_bytes: int = 0
    end_of_valid: int = FILE_HEADER_SIZE  # offset just past the last good record
    torn_tail_bytes: int = 0
    corrupt: list[CorruptRegion] = field(default_factory=list)


def _record_at(buf, pos: int, size: int) -> tuple[FrameRecord | None, str]:
    """Parse the record at pos: (record, "") if valid, else (None, reason)."""
    if size - pos < RECORD_OVERHEAD:
        return None, "short"
    mark, length, seq, mono, wall, flags, opcode, reserved = _unpack_header(buf, pos)
    if mark != RECORD_MARK:
        return None, "bad record mark"
    if length > MAX_PAYLOAD:
        return None, "implausible payload length"
    end = pos + RECORD_OVERHEAD + length
    if end > size:
        return None, "short"
    header = bytes(buf[pos : pos + RECORD_HEADER_SIZE])
    (stored,) = _unpack_checksum(buf, pos + RECORD_HEADER_SIZE)
    payload = bytes(buf[pos + RECORD_OVERHEAD : end])
    if not record_checksum_ok(header, payload, stored):
        return None, "checksum mismatch"
    if reserved:  # always written 0 (ADR/0001): a record that says otherwise was not written by pm_arb
        return None, "reserved bytes not zero"
    return FrameRecord(seq, mono, wall, flags, opcode, payload, pos), ""


def _claimed_seq(buf, pos: int, size: int) -> int | None:
    if size - pos < RECORD_HEADER_SIZE:
        return None
    mark, _, seq, *_ = _unpack_header(buf, pos)
    return seq if mark == RECORD_MARK else None


def _next_valid(buf, start: int, size: int) -> int | None:
    """Offset of the next record that parses and checksums, searching from start."""
    pos = start
    while True:
        pos = buf.find(RECORD_MARK_BYTES, pos, size)
        if pos < 0:
            return None
        rec, _ = _record_at(buf, pos, size)
        if rec is not None:
            return pos
        pos += 1


def _is_prefix_of_record(buf, pos: int, size: int) -> bool:
    """True when the bytes from pos to EOF could be the start of a record cut short by a crash."""
    remaining = size - pos
    if remaining < 4:
        return bytes(buf[pos:size]) == RECORD_MARK_BYTES[:remaining]
    if bytes(buf[pos : pos + 4]) != RECORD_MARK_BYTES:
        return False
    if remaining < 8:
        return True
    length = int.from_bytes(buf[pos + 4 : pos + 8], "little")
    return length <= MAX_PAYLOAD and pos + RECORD_OVERHEAD + length > size


def scan(
    buf, summary: ScanSummary | None = None, vouched_until: int = 0, start: int = FILE_HEADER_SIZE, stop: int | None = None
) -> Iterator[FrameRecord]:
    """Yield every valid record in order from `start` (a record boundary) to `stop` (the end of
    the file unless given); fill `summary` with what else was found.

    `vouched_until` is the furthest record end the idx lists (shard_files.idx_vouched_until).
    An idx entry is written only after its record was fully written, so no byte before it can
    be a crash's torn write: damage there, even at the end of the file (a file cut inside a
    record the idx lists, or zeroed), is corruption or loss, never a torn tail.
    """
    s = summary if summary is not None else ScanSummary()
    size = len(buf) if stop is None else min(stop, len(buf))
    pos = start
    while pos < size:
        rec, reason = _record_at(buf, pos, size)
        if rec is not None:
            s.records += 1
            s.payload_bytes += len(rec.payload)
            pos += RECORD_OVERHEAD + len(rec.payload)
            s.end_of_valid = pos
            yield rec
            continue
        nxt = _next_valid(buf, pos + 1, size)
        if nxt is None:
            tail = bytes(buf[pos:size])
            vouched = pos < vouched_until
            if not vouched and (_is_prefix_of_record(buf, pos, size) or tail.count(0) == len(tail)):
                s.torn_tail_bytes = size - pos
            else:
                if vouched:
                    what = "cut short" if reason == "short" else reason
                    reason = f"{what} where the idx lists a record as written: loss, not a crash tear"
                elif reason == "short":
                    reason = "truncated record"
                s.corrupt.append(CorruptRegion(pos, size - pos, reason, _claimed_seq(buf, pos, size)))
            return
        s.corrupt.append(CorruptRegion(pos, nxt - pos, reason if reason != "short" else "truncated record", _claimed_seq(buf, pos, size)))
        pos = nxt


def valid_record_at(buf, pos: int) -> FrameRecord | None:
    """The record at `pos` when one that passes its checksum starts there, else None."""
    return _record_at(buf, pos, len(buf))[0] if 0 <= pos else None
