"""Messages between actors. Actors share nothing else but the queue-depth gauges (ADR/0002)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pm_arb.events.types import Event

# A received frame on its way to the writer: (rx_mono_ns, rx_wall_ns_utc, flags, opcode, payload).
Frame = tuple[int, int, int, int, bytes]


@dataclass(frozen=True)
class Tick:
    """Sent by the ticker every heartbeat interval; `scheduled_mono_ns` lets actors measure loop lag."""

    scheduled_mono_ns: int


@dataclass(frozen=True)
class Emit:
    """A fact for the runlog, stamped where it happened. Goes to the supervisor, the one appender."""

    mono_ns: int
    wall_ns: int
    event: Event


@dataclass(frozen=True)
class FatalCondition:
    """An actor found something the run cannot survive; the supervisor decides and records it."""

    reason: str
    message: str
    shard: int = -1


@dataclass(frozen=True)
class ActorCrashed:
    """Any actor -> the supervisor: handling `message_type` raised; the run ends as fatal
    `actor_crash` (actors/base.py). `shard` is -1 for actors that are not a shard."""

    actor: str
    shard: int
    message_type: str
    error: str
    traceback: str


@dataclass(frozen=True)
class UnknownMessage:
    """Any actor -> the supervisor: it was sent a message it does not handle (a bug); the
    supervisor records it as an `unknown_message` event. `count` is that actor's total so far."""

    actor: str
    shard: int
    message_type: str
    count: int


@dataclass(frozen=True)
class InjectCrash:
    """Tests only (tests/, and the PMARB_TEST_INJECT_CRASH hook of run_capture) -> any actor:
    raise while handling the `nth` message of type `message_type` from now on, to prove that a
    crash in that actor ends the run as fatal `actor_crash`."""

    message_type: str
    nth: int = 1


# --- shard ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartShard:
    tokens: tuple[str, ...]
    not_before_mono_ns: int = 0  # connect no earlier: openings are staggered (ws_connect_stagger_seconds)


@dataclass(frozen=True)
class SetTokens:
    """A refresh changed this shard's tokens: reconnect with them, not before `not_before_mono_ns`."""

    tokens: tuple[str, ...]
    not_before_mono_ns: int
    added: int
    removed: int


@dataclass(frozen=True)
class FrameBatch:
    """A batch the reader handed to the writer, shown to the shard actor for token coverage."""

    frames: list[Frame]


@dataclass(frozen=True)
class ConfirmReached:
    """The shard's frames reached capture_confirm_min_events market events."""

    market_events: int
    mono_ns: int


@dataclass(frozen=True)
class ReaderEvent:
    """The shard's reader thread saw a lifecycle fact (connect, disconnect, reconnect)."""

    mono_ns: int
    wall_ns: int
    event: Event


@dataclass(frozen=True)
class ReaderFinished:
    reason: str


@dataclass(frozen=True)
class StopShard:
    pass


@dataclass(frozen=True)
class ShardStatus:
    shard: int
    connected: bool
    frames: int
    bytes: int
    market_events: int
    control_frames: int
    not_json_frames: int
    dropped: int
    ws_in_q_depth: int
    parse_q_depth: int
    write_q_depth: int
    loop_lag_ms: float


@dataclass(frozen=True)
class ShardStopped:
    shard: int


# --- writer --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttachWriterPeers:
    """run_capture -> writer: where to report (supervisor) and where intervals go (metrics)."""

    supervisor: Any
    metrics: Any = None


@dataclass(frozen=True)
class AppendFrames:
    shard: int
    frames: list[Frame]


@dataclass(frozen=True)
class AppendRunlog:
    data: bytes


@dataclass(frozen=True)
class AppendMetrics:
    name: str  # file name under metrics/
    data: bytes


@dataclass(frozen=True)
class WriterInterval:
    """What the writer applied since its last report, per shard."""

    mono_ns: int
    wall_ns: int
    interval_s: float
    shards: dict[int, dict[str, Any]]  # frames, bytes, hist (latency us buckets), max_us
    loop_lag_ms: float


@dataclass(frozen=True)
class WriteFatalBundle:
    fatal: dict[str, Any]
    missing_tokens: list[str]


@dataclass(frozen=True)
class FlushMetrics:
    """Report the interval so far to the metrics actor now (at stop, so no interval is lost).
    The reply is {"frames_written": {shard: frames appended so far}}, recorded in run_stop."""


@dataclass(frozen=True)
class CloseWriter:
    pass


# --- supervisor ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AttachPeers:
    """run_capture -> supervisor: the writer and the shard actors it drives."""

    writer: Any
    shards: dict[int, Any]
    # Starts the actor of a shard a refresh opens mid-run (its own reader, files and events).
    open_shard: Callable[[int], Any] | None = None


@dataclass(frozen=True)
class StartRun:
    shard_tokens: dict[int, list[str]]
    markets: int
    placement: Any = None  # universe.placement.PlacementChange of the start: recorded as placement events


@dataclass(frozen=True)
class RequestStop:
    reason: str


@dataclass(frozen=True)
class GetStatus:
    pass


@dataclass(frozen=True)
class FinishRun:
    """Supervisor -> itself: record run_stop and close the writer, after what is already queued."""

    frames_written: dict[str, int]


@dataclass(frozen=True)
class ApplyRefresh:
    """The universe actor's accepted refresh: new token sets for the shards that changed."""

    shard_tokens: dict[int, list[str]]
    changed: dict[int, tuple[int, int]] = field(default_factory=dict)  # shard -> (added, removed)
    added_tokens: list[str] = field(default_factory=list)
    markets: int = 0
    placement: Any = None  # universe.placement.PlacementChange: assignments, releases, shards opened
    listing: dict[str, Any] = field(default_factory=dict)  # condition id -> Gamma market, for the ones assigned


# --- universe ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadUniverse:
    pass
