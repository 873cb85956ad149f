"""Open, append to, repair and read one shard's `.frames` + `.idx` pair."""

from __future__ import annotations

import bisect
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

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
    check_file_header,
    encode_record,
    file_header,
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


class IdxFile(NamedTuple):
    entries: list[IdxEntry]
    problem: str | None  # why no entry could be read (missing, unreadable, too short, newer format)
    header_damage: str | None  # the header is damaged; its entries were still read
    size: int = 0  # bytes, as read


def load_idx(path: Path, shard: int | None = None) -> IdxFile:
    """An idx file's entries, or why they cannot be read; a damaged header is reported, not fatal."""
    if not path.exists():
        return IdxFile([], f"{path.name} is missing", None)
    try:
        buf = map_file(path)
    except OSError as exc:
        return IdxFile([], f"cannot read {path.name}: {exc.strerror}", None)
    try:
        damage = check_file_header(bytes(buf[:FILE_HEADER_SIZE]), IDX_MAGIC, path.name, shard)
        return IdxFile(read_idx_entries(buf), None, damage, len(buf))
    except HeaderProblem as exc:
        return IdxFile([], str(exc), None)
    finally:
        close_view(buf)


def follows_on(entries: list[IdxEntry]) -> list[bool]:
    """For each idx entry, whether it is what a writer wrote after the entry before it: its
    record starts where that one's ended, its seq is higher and its reserved bytes are zero.
    A damaged entry (a flipped offset, a garbage tail) does not, and vouches for nothing."""
    out = []
    prev_end, prev_seq = FILE_HEADER_SIZE, -1
    for e in entries:
        out.append(e.offset == prev_end and e.seq > prev_seq and e.reserved == 0)
        prev_end, prev_seq = e.offset + RECORD_OVERHEAD + e.payload_len, e.seq
    return out


def idx_vouched_until(entries: list[IdxEntry]) -> int:
    """The furthest frames-file offset the idx says was fully written (0: none)."""
    return max((e.offset + RECORD_OVERHEAD + e.payload_len for e, ok in zip(entries, follows_on(entries)) if ok), default=0)


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
    idx_entries_kept_as_evidence: int = 0  # entries for damaged or lost records, kept as the idx had them
    header_damage: str | None = None  # the frames file's header, left as found


class RepairFailed(Exception):
    """A repair step failed; the message names the file, what was left as it was, and what to do."""


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
    """Truncate a torn frames tail and make the idx match the frames file.

    Only what a crash can leave is removed: a torn tail no idx entry vouches for. Corrupt or
    lost records are evidence and stay (scan.py), and so do the idx entries that point at them.
    The idx is rewritten first and the frames file truncated last, so a failure part-way leaves
    the frames as they were and no temp file behind (RepairFailed says what to do).
    """
    summary = ScanSummary()
    old = load_idx(idx, shard)  # before the frames: the idx can only lag them, never lead
    buf = map_file(frames)
    try:
        header_damage = check_file_header(bytes(buf[:FILE_HEADER_SIZE]), FRAMES_MAGIC, frames.name, shard)
        good_idx = [idx_entry_for(r) for r in scan(buf, summary, idx_vouched_until(old.entries))]
        file_end = len(buf)
    finally:
        close_view(buf)
    good_offsets = {e.offset for e in good_idx}
    damaged = [(c.offset, c.offset + c.length) for c in summary.corrupt]
    evidence = [
        e for e, ok in zip(old.entries, follows_on(old.entries))
        if ok and e.offset not in good_offsets and (e.offset >= file_end or any(a <= e.offset < b for a, b in damaged))
    ]
    new_idx = sorted(good_idx + evidence, key=lambda e: e.offset)
    idx_size = old.size
    expected_size = FILE_HEADER_SIZE + len(new_idx) * IDX_ENTRY_SIZE
    rebuilt = 0
    idx_truncated = 0
    idx_sound = old.problem is None and old.header_damage is None
    if not (idx_sound and old.entries == new_idx and idx_size == expected_size):
        keep = 0
        if old.problem is None:
            while keep < min(len(old.entries), len(new_idx)) and old.entries[keep] == new_idx[keep]:
                keep += 1
        rebuilt = len(new_idx) - keep
        idx_truncated = max(0, idx_size - expected_size)
        _replace_idx(idx, shard, new_idx, frames.name)
    truncated = 0
    if summary.torn_tail_bytes:
        try:
            os.truncate(frames, summary.end_of_valid)
        except OSError as exc:
            raise RepairFailed(
                f"cannot truncate the torn tail of {frames}: {exc.strerror}; its idx was rebuilt and the frames file is "
                "as it was: fix the cause, then run `pm_arb capture-verify --repair` again"
            ) from None
        truncated = summary.torn_tail_bytes
    next_seq = good_idx[-1].seq + 1 if good_idx else 0
    return RepairReport(
        shard, len(good_idx), next_seq, truncated, rebuilt, idx_truncated, len(summary.corrupt), len(evidence), header_damage
    )


def _replace_idx(idx: Path, shard: int, entries: list[IdxEntry], frames_name: str) -> None:
    """Write the idx atomically: temp file beside it, fsync, rename, fsync the directory."""
    tmp = idx.with_suffix(".idx.rebuild")
    try:
        with open(tmp, "wb") as fh:
            fh.write(file_header(IDX_MAGIC, shard))
            fh.write(b"".join(encode_idx(e) for e in entries))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, idx)
        dir_fd = os.open(idx.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise RepairFailed(
            f"cannot write {tmp}: {exc.strerror}; removed it, and {idx.name} and {frames_name} are as they were: "
            "free space (or fix the cause) on that filesystem, then run `pm_arb capture-verify --repair` again"
        ) from None


class ShardReader:
    """Read one shard's records: iterate, fetch by seq in O(1) via the idx, find a time by bisection."""

    def __init__(self, capture_dir: Path, shard: int) -> None:
        self.shard = shard
        self.frames_path = frames_path(capture_dir, shard)
        self.idx_path = idx_path(capture_dir, shard)
        self._buf = map_file(self.frames_path)
        try:
            # A damaged header is reported to the caller; the records behind it are still read.
            self.header_damage = check_file_header(bytes(self._buf[:FILE_HEADER_SIZE]), FRAMES_MAGIC, self.frames_path.name, shard)
        except HeaderProblem:
            self.close()
            raise
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


MAX_SHARD_NUMBER = 65535  # the header's u16


def shard_number(path: Path) -> int | None:
    """The NN of shard_NN.<ext>, or None for a name no pm_arb writer makes (ASCII digits, u16:
    str.isdigit alone also takes '²', which int() refuses)."""
    digits = path.stem.split("_", 1)[1] if "_" in path.stem else ""
    if not (digits.isascii() and digits.isdigit()) or int(digits) > MAX_SHARD_NUMBER:
        return None
    return int(digits)


def shard_numbers(capture_dir: Path) -> list[int]:
    return sorted(n for n in (shard_number(p) for p in capture_dir.glob("shard_*.frames")) if n is not None)


def write_frames_file(path: Path, shard: int, records: Iterable[tuple[int, int, int, int, int, bytes]]) -> None:
    """Write (seq, rx_mono_ns, rx_wall_ns_utc, flags, opcode, payload) records as a standalone frames file."""
    parts = [file_header(FRAMES_MAGIC, shard)]
    for seq, mono, wall, flags, opcode, payload in records:
        parts.extend(encode_record(seq, mono, wall, flags, opcode, payload))
    with open(path, "wb") as fh:
        fh.write(b"".join(parts))
        fh.flush()
        os.fsync(fh.fileno())
