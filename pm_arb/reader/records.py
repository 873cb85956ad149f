"""The shapes the reader hands out: one frame, one decoded event, one market, one damage."""

from __future__ import annotations

from typing import Any, NamedTuple


class FrameRecord(NamedTuple):
    """One stored frame: where it came from, when it arrived, and its bytes exactly as stored."""

    shard: int
    seq: int
    rx_mono_ns: int  # one monotonic clock per run, so it orders frames across shards
    rx_wall_ns_utc: int
    flags: int  # store.frames_format FLAG_CONTROL / FLAG_NOT_JSON
    opcode: int  # WebSocket opcode: 1 text, 2 binary
    payload: bytes


class Event(NamedTuple):
    """One message out of a frame. An initial-dump array gives one Event per element, `index`
    being its place in the array (0 for a single-object frame)."""

    shard: int
    seq: int
    index: int
    rx_mono_ns: int
    rx_wall_ns_utc: int
    kind: str  # "market" (decoded JSON), "control" (PONG and the like) or "garbage"
    event_type: str | None  # the message's event_type, when it has one
    message: Any  # the decoded JSON value for "market"; the payload bytes otherwise


class Market(NamedTuple):
    """One binary market of the run's universe, as the manifest recorded it at start."""

    condition_id: str
    question: str
    yes_token: str
    no_token: str
    shard: int | None
    gamma_id: str | None
    slug: str | None


class Damage(NamedTuple):
    """A stored record that cannot be trusted: it fails its checksum, disagrees with its idx
    entry, or sits in bytes the idx does not account for."""

    shard: int
    seq: int | None  # the seq the record claims (or should have), when known
    offset: int  # byte offset in shard_NN.frames
    reason: str

    def describe(self) -> str:
        at = f"seq {self.seq}" if self.seq is not None else "an unknown seq"
        return f"shard {self.shard} {at} (byte {self.offset} of shard_{self.shard:02d}.frames): {self.reason}"


class DamagedRecordError(Exception):
    """Raised by a verifying read on the first damaged record; `damage` says where."""

    def __init__(self, damage: Damage) -> None:
        super().__init__(
            f"damaged record in {damage.describe()}; run `pm_arb capture-verify` on the run for the full list, "
            "or read with verify=False / skip damage to go on"
        )
        self.damage = damage
