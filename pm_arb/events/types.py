"""Every lifecycle fact of a run, as a frozen dataclass. Each becomes one runlog.ndjson line.

The `type` string of each class is its name in the runlog; the spec names several of them
(`universe_refresh`, `shard_refresh_begin`, `shard_refresh_applied`, `universe_refresh_error`).
Fields hold only JSON-native values so the codec is a plain dict round trip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar

EVENT_TYPES: dict[str, type] = {}

# A dict key that is a shard number written as decimal text (JSON keys are strings); the codec
# refuses any other key, since every reader of these dicts takes int() of it.
SHARD_NUMBER = "shard number"
ShardKey = Annotated[str, SHARD_NUMBER]


def event(name: str):
    def register(cls):
        cls.TYPE = name
        EVENT_TYPES[name] = cls
        return cls

    return register


class Event:
    TYPE: ClassVar[str] = ""


# --- run lifecycle ---------------------------------------------------------------------------


@event("run_start")
@dataclass(frozen=True)
class RunStart(Event):
    run_id: str
    mode: str  # "online" | "sim" | "offline"
    pm_arb_version: str
    shards: int
    confirm_timeout_seconds: float
    confirm_min_events: int
    heartbeat_interval_seconds: float


@event("universe_assigned")
@dataclass(frozen=True)
class UniverseAssigned(Event):
    """The token set of every shard, at start and after each applied refresh."""

    reason: str  # "start" | "refresh"
    shard_tokens: dict[ShardKey, list[str]]  # shard number (as text) -> token ids
    markets: int
    tokens: int
    grace_tokens: list[str] = field(default_factory=list)  # excluded from coverage until grace_until_mono_ns
    grace_until_mono_ns: int = 0


@event("shard_over_token_limit")
@dataclass(frozen=True)
class ShardOverTokenLimit(Event):
    """Written by runs before the cap was enforced (ADR/0007); read so their runlogs still fold."""

    shard: int
    tokens: int
    limit: int


# --- placement: which shard carries each market (ADR/0007; fold: events/folds/placement.py) ---


@event("shards_planned")
@dataclass(frozen=True)
class ShardsPlanned(Event):
    """At start: how many connections the universe takes under the cap, and why."""

    shards: int  # connections opened (shards 0 .. shards-1)
    shards_min: int  # ws_shards
    markets: int
    tokens: int
    cap_tokens: int  # ws_max_tokens_per_shard
    reason: str
    busiest_tokens: int
    mean_tokens: float


@event("shard_opened")
@dataclass(frozen=True)
class ShardOpened(Event):
    """A refresh grew the universe past what the open shards hold under the cap: a new shard."""

    shard: int
    shards: int  # open shards after this one
    markets: int
    tokens: int
    cap_tokens: int
    reason: str


@event("market_assigned")
@dataclass(frozen=True)
class MarketAssigned(Event):
    """A market (both its tokens) goes to a shard: at start, or when a refresh lists it."""

    condition_id: str
    shard: int
    yes_token: str
    no_token: str
    reason: str  # "start" | "refresh"
    # What Gamma listed for a market a refresh added (the manifest holds those of the start
    # universe): lets the reader and the export's `markets` table describe every market.
    question: str = ""
    slug: str = ""
    gamma_id: str = ""


@event("market_released")
@dataclass(frozen=True)
class MarketReleased(Event):
    """A refresh delisted the market (or changed its token ids): its tokens leave the shard."""

    condition_id: str
    shard: int
    reason: str  # "delisted" | "tokens_changed"


@event("confirm_begin")
@dataclass(frozen=True)
class ConfirmBegin(Event):
    deadline_mono_ns: int
    shards: list[int]


@event("shard_confirmed")
@dataclass(frozen=True)
class ShardConfirmed(Event):
    shard: int
    market_events: int
    seconds_after_start: float


@event("run_confirmed")
@dataclass(frozen=True)
class RunConfirmed(Event):
    seconds_after_start: float


@event("heartbeat")
@dataclass(frozen=True)
class Heartbeat(Event):
    phase: str
    shards: dict[ShardKey, dict[str, int | bool]]  # shard -> counters (frames, bytes, market_events, control, dropped, connected)
    frames_total: int
    dropped_total: int
    coverage_pct: float


@event("stop_requested")
@dataclass(frozen=True)
class StopRequested(Event):
    reason: str  # "SIGINT" | "SIGTERM" | "duration" | "source_exhausted"


@event("run_stop")
@dataclass(frozen=True)
class RunStop(Event):
    reason: str
    frames_total: int
    bytes_total: int
    dropped_total: int
    duration_seconds: float
    # shard -> frames the writer had appended to its file when the run stopped (after its last
    # flush); empty when the writer did not answer. capture-verify checks the files against it.
    frames_written: dict[ShardKey, int] = field(default_factory=dict)


@event("fatal")
@dataclass(frozen=True)
class Fatal(Event):
    reason: str  # "confirm_timeout" | "churn_guard" | "fsync_error" | "write_error" | "disk_full" | "actor_crash" | "universe_empty"
    message: str
    shard: int = -1


@event("actor_crashed")
@dataclass(frozen=True)
class ActorCrashed(Event):
    """An actor raised while handling a message (actors/base.py); a `fatal` actor_crash follows."""

    actor: str
    shard: int  # -1: not a shard actor
    message_type: str
    error: str
    traceback: str


@event("unknown_message")
@dataclass(frozen=True)
class UnknownMessage(Event):
    """An actor was sent a message it has no branch for (a bug). Recorded at the 1st, 2nd, 4th,
    8th... of a kind per actor; `count` is the actor's total of that kind so far."""

    actor: str
    shard: int
    message_type: str
    count: int


# --- shards and their connections ------------------------------------------------------------


@event("shard_connecting")
@dataclass(frozen=True)
class ShardConnecting(Event):
    shard: int
    url: str
    attempt: int
    tokens: int


@event("shard_connected")
@dataclass(frozen=True)
class ShardConnected(Event):
    shard: int
    attempt: int
    connect_ms: float
    subscribe_messages: int


@event("shard_disconnected")
@dataclass(frozen=True)
class ShardDisconnected(Event):
    shard: int
    cause: str  # "server_close" | "ping_timeout" | "data_idle" | "connect_failed" | "error" | "refresh" | "stop" | "source_exhausted"
    detail: str
    planned: bool  # refresh/stop: not a failure


@event("shard_reconnect")
@dataclass(frozen=True)
class ShardReconnect(Event):
    shard: int
    attempt: int
    backoff_seconds: float
    cause: str
    planned: bool


@event("tokens_first_seen")
@dataclass(frozen=True)
class TokensFirstSeen(Event):
    shard: int
    tokens: list[str]


@event("frames_dropped")
@dataclass(frozen=True)
class FramesDropped(Event):
    shard: int
    queue: str  # "parse_q" | "write_q"
    dropped: int  # in this report
    dropped_total: int  # for this shard and queue since start
    capacity: int


@event("shard_source_exhausted")
@dataclass(frozen=True)
class ShardSourceExhausted(Event):
    shard: int
    frames: int


@event("frames_tail_repaired")
@dataclass(frozen=True)
class FramesTailRepaired(Event):
    shard: int
    torn_tail_bytes_truncated: int
    idx_entries_rebuilt: int


# --- universe refresh (spec section 8) --------------------------------------------------------


@event("universe_refresh")
@dataclass(frozen=True)
class UniverseRefresh(Event):
    duration_ms: float
    reason: str  # "applied" | "no_change" | "below_min_delta" | "churn_guard"
    added_count: int
    removed_count: int
    churn_pct: float
    interval_seconds_used: float
    gamma_pages_fetched: int
    markets_seen: int
    tokens_selected: int
    applied: bool
    consecutive_churn_guards: int
    next_interval_seconds: float
    added_tokens: list[str] = field(default_factory=list)
    removed_tokens: list[str] = field(default_factory=list)


@event("universe_refresh_error")
@dataclass(frozen=True)
class UniverseRefreshError(Event):
    duration_ms: float
    error: str  # short class of error: "timeout" | "http" | "bad_json" | "pagination_loop" | "connection"
    message: str


@event("shard_refresh_begin")
@dataclass(frozen=True)
class ShardRefreshBegin(Event):
    shard: int
    added_count: int
    removed_count: int
    tokens: int


@event("shard_refresh_applied")
@dataclass(frozen=True)
class ShardRefreshApplied(Event):
    shard: int
    tokens: int
    duration_ms: float


@event("disk_space_low")
@dataclass(frozen=True)
class DiskSpaceLow(Event):
    data_dir: str
    free_bytes: int
    bytes_per_s: float  # the run's write rate to disk when the forecast was made
    hours_left: float  # free_bytes at bytes_per_s
    threshold_hours: float  # capture_disk_warn_hours
