"""Open, append to, repair and read one shard's `.frames` + `.idx` pair."""

from __future__ import annotations

import bisect
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import xxhash

from pm_arb.store.frames_format import (
    CHECKSUM,
    FILE_HEADER_SIZE,
    FRAMES_MAGIC,
    IDX_ENTRY,
    IDX_ENTRY_SIZE,
    IDX_MAGIC,
    RECORD_HEADER,
    RECORD_MARK,
    RECORD_OVERHEAD,
    FrameRecord,
    HeaderProblem,
    IdxEntry,
    decode_idx,
    encode_idx,
    encode_record,
    file_header,
    parse_file_header,
)
from pm_arb.store.scan import ScanSummary, scan

_pack_idx = IDX_ENTRY.pack
_pack_header = RECORD_HEADER.pack
_pack_checksum = CHECKSUM.pack
_xxh3 = xxhash.xxh3_64_intdigest


def frames_path(capture_dir: Path, shard: int) -> Path:
    return capture_dir / f"shard_{shard:02d}.frames"


def idx_path(capture_dir: Path, shard: int) -> Path:
    return capture_dir / f"shard_{shard:02d}.idx"


def map_file(path: Path):
    """Read-only view of a whole file (an mmap, or bytes for an empty file)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return b""
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)


def close_view(buf) -> None:
    """Release a view from map_file (an empty file's view is plain bytes)."""
    if hasattr(buf, "close"):
        buf.close()


def read_idx_entries(buf) -> list[IdxEntry]:
    usable = (len(buf) - FILE_HEADER_SIZE) // IDX_ENTRY_SIZE
    return [decode_idx(buf, FILE_HEADER_SIZE + i * IDX_ENTRY_SIZE) for i in range(max(0, usable))]


def load_idx(path: Path) -> tuple[list[IdxEntry], str | None]:
    """An idx file's entries, or ([], why it cannot be used): missing, unreadable, bad header."""
    if not path.exists():
        return [], f"{path.name} is missing"
    try:
        buf = map_file(path)
    except OSError as exc:
        return [], f"cannot read {path.name}: {exc.strerror}"
    try:
        parse_file_header(bytes(buf[:FILE_HEADER_SIZE]), IDX_MAGIC, path.name)
        return read_idx_entries(buf), None
    except HeaderProblem as exc:
        return [], str(exc)
    finally:
        close_view(buf)


def idx_entry_for(rec: FrameRecord) -> IdxEntry:
    return IdxEntry(rec.offset, len(rec.payload), rec.flags, rec.opcode, rec.seq, rec.rx_mono_ns, rec.rx_wall_ns_utc)


@dataclass
class RepairReport:
    shard: int
    records: int
    next_seq: int
    torn_tail_bytes_truncated: int
    idx_entries_rebuilt: int
    idx_bytes_truncated: int
    corrupt_regions: int


class ShardFileWriter:
    """Appends records to one shard's frames and idx files.

    Frames are written before their idx entries, so after a crash the idx can only lag; opening
    an existing pair repairs that (and a torn frames tail) before the first append.
    """

    def __init__(self, capture_dir: Path, shard: int) -> None:
        self.shard = shard
        self.frames_path = frames_path(capture_dir, shard)
        self.idx_path = idx_path(capture_dir, shard)
        capture_dir.mkdir(parents=True, exist_ok=True)
        self.repair: RepairReport | None = None
        if self.frames_path.exists() and self.frames_path.stat().st_size > 0:
            self.repair = repair_shard(self.frames_path, self.idx_path, shard)
            self.next_seq = self.repair.next_seq
        else:
            with open(self.frames_path, "wb") as fh:
                fh.write(file_header(FRAMES_MAGIC, shard))
            with open(self.idx_path, "wb") as fh:
                fh.write(file_header(IDX_MAGIC, shard))
            self.next_seq = 0
        self._frames_fd = os.open(self.frames_path, os.O_WRONLY | os.O_APPEND)
        self._idx_fd = os.open(self.idx_path, os.O_WRONLY | os.O_APPEND)
        self.offset = os.fstat(self._frames_fd).st_size
        self.frames_written = 0
        self.bytes_written = 0

    def append_batch(self, frames: Sequence[tuple[int, int, int, int, bytes]]) -> int:
        """Append (rx_mono_ns, rx_wall_ns_utc, flags, opcode, payload) tuples; return first seq.

        One writev for the frames (per 512 records) and one write for the idx per batch: the
        syscall, not the checksum, is the cost worth saving. The record encoding is
        `frames_format.encode_record`, inlined here because this loop runs once per captured frame.
        """
        first_seq = self.next_seq
        seq = first_seq
        offset = self.offset
        parts: list[bytes] = []
        idx_parts: list[bytes] = []
        append = parts.append
        idx_append = idx_parts.append
        pack_header = _pack_header
        pack_checksum = _pack_checksum
        xxh3 = _xxh3
        nbytes = 0
        for mono, wall, flags, opcode, payload in frames:
            n = len(payload)
            head = pack_header(RECORD_MARK, n, seq, mono, wall, flags, opcode, 0)
            append(head + pack_checksum(xxh3(head + payload)))
            append(payload)
            idx_append(_pack_idx(offset, n, flags, opcode, 0, seq, mono, wall))
            offset += RECORD_OVERHEAD + n
            nbytes += n
            seq += 1
        writev_all(self._frames_fd, parts)
        _write_all(self._idx_fd, b"".join(idx_parts))
        self.offset = offset
        self.next_seq = seq
        self.frames_written += seq - first_seq
        self.bytes_written += nbytes
        return first_seq

    def fds(self) -> tuple[int, int]:
        return self._frames_fd, self._idx_fd

    def fsync(self) -> None:
        os.fsync(self._frames_fd)
        os.fsync(self._idx_fd)

    def close(self) -> None:
        for fd in (self._frames_fd, self._idx_fd):
            try:
                os.close(fd)
            except OSError:
                pass


IOV_MAX = 1024  # Linux's limit on buffers per writev call


def writev_all(fd: int, parts: list[bytes]) -> None:
    """Write `parts` in order without joining them first: a joined batch is ~0.5 MB, and a
    buffer that size is an mmap and a fresh set of page faults per batch under the capture's
    malloc settings (malloc_tuning). A short write finishes with plain writes of the rest."""
    for start in range(0, len(parts), IOV_MAX):
        chunk = parts[start : start + IOV_MAX]
        written = os.writev(fd, chunk)
        total = sum(map(len, chunk))
        if written < total:
            _write_all(fd, b"".join(chunk)[written:])


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def repair_shard(frames: Path, idx: Path, shard: int) -> RepairReport:
    """Truncate a torn frames tail and make the idx match the frames file exactly.

    Corrupt regions in the middle are left in place (they are evidence, and verify reports
    them); only what a crash can leave at the tail is removed.
    """
    summary = ScanSummary()
    old_idx, idx_problem = load_idx(idx)
    idx_ends = {e.offset: e.offset + RECORD_OVERHEAD + e.payload_len for e in old_idx}
    buf = map_file(frames)
    try:
        parse_file_header(bytes(buf[:FILE_HEADER_SIZE]), FRAMES_MAGIC, frames.name)
        good_idx = [idx_entry_for(r) for r in scan(buf, summary, idx_ends)]
    finally:
        close_view(buf)
    truncated = 0
    if summary.torn_tail_bytes:
        truncated = summary.torn_tail_bytes
        os.truncate(frames, summary.end_of_valid)
    idx_ok = idx_problem is None
    idx_size = idx.stat().st_size if idx.is_file() else 0
    expected_size = FILE_HEADER_SIZE + len(good_idx) * IDX_ENTRY_SIZE
    rebuilt = 0
    idx_truncated = 0
    if not (idx_ok and old_idx == good_idx and idx_size == expected_size):
        keep = 0
        if idx_ok:
            while keep < min(len(old_idx), len(good_idx)) and old_idx[keep] == good_idx[keep]:
                keep += 1
        rebuilt = len(good_idx) - keep
        idx_truncated = max(0, idx_size - expected_size)
        tmp = idx.with_suffix(".idx.rebuild")
        with open(tmp, "wb") as fh:
            fh.write(file_header(IDX_MAGIC, shard))
            fh.write(b"".join(encode_idx(e) for e in good_idx))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, idx)
    next_seq = good_idx[-1].seq + 1 if good_idx else 0
    return RepairReport(shard, len(good_idx), next_seq, truncated, rebuilt, idx_truncated, len(summary.corrupt))


class ShardReader:
    """Read one shard's records: iterate, fetch by seq in O(1) via the idx, find a time by bisection."""

    def __init__(self, capture_dir: Path, shard: int) -> None:
        self.shard = shard
        self.frames_path = frames_path(capture_dir, shard)
        self.idx_path = idx_path(capture_dir, shard)
        self._buf = map_file(self.frames_path)
        parse_file_header(bytes(self._buf[:FILE_HEADER_SIZE]), FRAMES_MAGIC, self.frames_path.name)
        self._idx: list[IdxEntry] | None = None

    def close(self) -> None:
        close_view(self._buf)

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[FrameRecord]:
        return scan(self._buf)

    def scan(self, summary: ScanSummary) -> Iterator[FrameRecord]:
        return scan(self._buf, summary)

    @property
    def idx(self) -> list[IdxEntry]:
        """Index entries of the records that pass their checksum, from one scan of the frames.

        Built from the frames rather than read from the idx file so that readers (slice above
        all) never hand on a damaged record; the idx file is cross-checked by capture-verify.
        """
        if self._idx is None:
            self._idx = [idx_entry_for(r) for r in scan(self._buf)]
        return self._idx

    def record_at(self, entry: IdxEntry) -> FrameRecord:
        start = entry.offset + RECORD_OVERHEAD
        payload = bytes(self._buf[start : start + entry.payload_len])
        return FrameRecord(entry.seq, entry.rx_mono_ns, entry.rx_wall_ns_utc, entry.flags, entry.opcode, payload, entry.offset)

    def by_seq(self, seq: int) -> FrameRecord | None:
        entries = self.idx
        if not entries:
            return None
        k = seq - entries[0].seq
        if 0 <= k < len(entries) and entries[k].seq == seq:
            return self.record_at(entries[k])
        return None

    def first_index_at_or_after_wall(self, wall_ns: int) -> int:
        """Index of the first entry with rx_wall >= wall_ns (receive walls are non-decreasing per shard)."""
        entries = self.idx
        return bisect.bisect_left(_WallView(entries), wall_ns)


class _WallView(Sequence):
    def __init__(self, entries: list[IdxEntry]) -> None:
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, i):  # type: ignore[override]
        return self._entries[i].rx_wall_ns_utc


def shard_numbers(capture_dir: Path) -> list[int]:
    out = []
    for p in sorted(capture_dir.glob("shard_*.frames")):
        stem = p.stem.split("_", 1)[1]
        if stem.isdigit():
            out.append(int(stem))
    return out


def write_frames_file(path: Path, shard: int, records: Iterable[tuple[int, int, int, int, int, bytes]]) -> None:
    """Write (seq, rx_mono_ns, rx_wall_ns_utc, flags, opcode, payload) records as a standalone frames file."""
    parts = [file_header(FRAMES_MAGIC, shard)]
    for seq, mono, wall, flags, opcode, payload in records:
        parts.extend(encode_record(seq, mono, wall, flags, opcode, payload))
    with open(path, "wb") as fh:
        fh.write(b"".join(parts))
        fh.flush()
        os.fsync(fh.fileno())
