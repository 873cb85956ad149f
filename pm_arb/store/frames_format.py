"""Byte layout of `shard_NN.frames` and `shard_NN.idx` (ADR/0001-frames-format.md).

Everything is little-endian. Pure functions only: no file I/O here.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import xxhash

FRAMES_MAGIC = b"PMARBFRM"
IDX_MAGIC = b"PMARBIDX"
FORMAT_VERSION = 1

# magic[8] version:u16 shard:u16 header_checksum:u32 (xxh32 of the first 12 bytes)
FILE_HEADER = struct.Struct("<8sHHI")
FILE_HEADER_SIZE = FILE_HEADER.size  # 16

RECORD_MARK = 0x314D5246  # b"FRM1" read as a little-endian u32: lets a reader resynchronise
RECORD_MARK_BYTES = struct.pack("<I", RECORD_MARK)
# mark:u32 payload_len:u32 seq:u64 rx_mono_ns:i64 rx_wall_ns_utc:i64 flags:u8 opcode:u8 reserved:u16
RECORD_HEADER = struct.Struct("<IIQqqBBH")
RECORD_HEADER_SIZE = RECORD_HEADER.size  # 36
CHECKSUM = struct.Struct("<Q")  # xxh3_64 of the 36 header bytes followed by the payload
RECORD_OVERHEAD = RECORD_HEADER_SIZE + CHECKSUM.size  # 44

# offset:u64 payload_len:u32 flags:u8 opcode:u8 reserved:u16 seq:u64 rx_mono_ns:i64 rx_wall_ns_utc:i64
IDX_ENTRY = struct.Struct("<QIBBHQqq")
IDX_ENTRY_SIZE = IDX_ENTRY.size  # 40

MAX_PAYLOAD = 64 * 1024 * 1024  # a length above this is corruption, not a frame

# flags: defined in the wire layer (what a frame is), stored here as ADR/0001 lays them out
from pm_arb.wire.flags import FLAG_CONTROL, FLAG_NOT_JSON  # noqa: E402,F401

# opcodes (RFC 6455 numbering)
OPCODE_TEXT = 1
OPCODE_BINARY = 2

_pack_header = RECORD_HEADER.pack
_pack_checksum = CHECKSUM.pack
_xxh3 = xxhash.xxh3_64_intdigest


class FrameRecord(NamedTuple):
    seq: int
    rx_mono_ns: int
    rx_wall_ns_utc: int
    flags: int
    opcode: int
    payload: bytes
    offset: int  # byte offset of the record in its frames file


class IdxEntry(NamedTuple):
    offset: int
    payload_len: int
    flags: int
    opcode: int
    seq: int
    rx_mono_ns: int
    rx_wall_ns_utc: int
    reserved: int = 0  # always written 0; anything else read back is damage


def file_header(magic: bytes, shard: int) -> bytes:
    head = struct.pack("<8sHH", magic, FORMAT_VERSION, shard)
    return head + struct.pack("<I", xxhash.xxh32_intdigest(head))


class HeaderProblem(Exception):
    """The records behind this file header cannot be read; the message says what to do."""


def check_file_header(data: bytes, magic: bytes, what: str, shard: int | None = None) -> str | None:
    """None when the header is sound, else what is wrong with it.

    A damaged header (a flipped byte, the wrong shard) says nothing about the records behind
    it, so callers report it and still read them. HeaderProblem is raised only when they cannot
    be read: a file shorter than its header, or an intact header of a newer format version.
    """
    if len(data) < FILE_HEADER_SIZE:
        raise HeaderProblem(f"{what} is {len(data)} bytes, shorter than its {FILE_HEADER_SIZE}-byte header")
    got_magic, version, got_shard, checksum = FILE_HEADER.unpack_from(data, 0)
    intact = xxhash.xxh32_intdigest(data[:12]) == checksum
    if intact and got_magic == magic and version > FORMAT_VERSION:
        raise HeaderProblem(
            f"{what} uses format version {version}, newer than this pm_arb reads ({FORMAT_VERSION}): upgrade pm_arb"
        )
    wrong = []
    if got_magic != magic:
        wrong.append(f"magic {got_magic!r}, expected {magic!r}")
    if version != FORMAT_VERSION:
        wrong.append(f"version {version}")
    if shard is not None and got_shard != shard:
        wrong.append(f"shard {got_shard}, expected {shard}")
    if not intact:
        wrong.append("checksum mismatch")
    return f"{what} has a damaged header ({'; '.join(wrong)})" if wrong else None


def encode_record(seq: int, rx_mono_ns: int, rx_wall_ns_utc: int, flags: int, opcode: int, payload: bytes) -> tuple[bytes, bytes]:
    """Return (header+checksum, payload) so callers can write the payload without copying it."""
    header = _pack_header(RECORD_MARK, len(payload), seq, rx_mono_ns, rx_wall_ns_utc, flags, opcode, 0)
    return header + _pack_checksum(_xxh3(header + payload)), payload


def record_checksum_ok(header: bytes, payload: bytes, stored: int) -> bool:
    return _xxh3(header + payload) == stored


def encode_idx(e: IdxEntry) -> bytes:
    return IDX_ENTRY.pack(e.offset, e.payload_len, e.flags, e.opcode, e.reserved, e.seq, e.rx_mono_ns, e.rx_wall_ns_utc)


def decode_idx(buf, offset: int) -> IdxEntry:
    off, length, flags, opcode, reserved, seq, mono, wall = IDX_ENTRY.unpack_from(buf, offset)
    return IdxEntry(off, length, flags, opcode, seq, mono, wall, reserved)
