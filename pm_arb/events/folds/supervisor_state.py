"""The supervisor's state as a pure fold over runlog records.

The live SupervisorActor holds exactly this state and changes it only through `apply`, on the
records it appends; `capture-replay` runs the same `fold` over the file. So the two cannot
drift apart, and a fatal run's fatal.json (written from the live state) equals the replay at
the fatal record's seq.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from pm_arb.events import types as ev
from pm_arb.events.codec import LogRecord

PHASES = ("new", "starting", "confirming", "running", "stopping", "stopped", "fatal")


@dataclass
class ShardView:
    tokens: list[str] = field(default_factory=list)
    connected: bool = False
    connects: int = 0
    disconnects: int = 0
    reconnects_unplanned: int = 0
    reconnects_planned: int = 0
    last_disconnect_cause: str | None = None
    confirmed: bool = False
    tokens_seen: set[str] = field(default_factory=set)
    frames: int = 0
    bytes: int = 0
    market_events: int = 0
    control_frames: int = 0
    not_json_frames: int = 0
    dropped: int = 0
    source_exhausted: bool = False
    over_token_limit: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": sorted(self.tokens),
            "connected": self.connected,
            "connects": self.connects,
            "disconnects": self.disconnects,
            "reconnects_unplanned": self.reconnects_unplanned,
            "reconnects_planned": self.reconnects_planned,
            "last_disconnect_cause": self.last_disconnect_cause,
            "confirmed": self.confirmed,
            "tokens_seen": len(self.tokens_seen & set(self.tokens)),
            "frames": self.frames,
            "bytes": self.bytes,
            "market_events": self.market_events,
            "control_frames": self.control_frames,
            "not_json_frames": self.not_json_frames,
            "dropped": self.dropped,
            "source_exhausted": self.source_exhausted,
            "over_token_limit": self.over_token_limit,
        }


@dataclass
class SupervisorState:
    run_id: str | None = None
    mode: str | None = None
    phase: str = "new"
    started_mono_ns: int | None = None
    confirm_deadline_mono_ns: int | None = None
    confirm_min_events: int = 1
    shards: dict[int, ShardView] = field(default_factory=dict)
    markets: int = 0
    grace_until_mono_ns: dict[str, int] = field(default_factory=dict)
    churn_guard_consecutive: int = 0
    refreshes_applied: int = 0
    refresh_errors: int = 0
    heartbeats: int = 0
    last_heartbeat_seq: int | None = None
    last_heartbeat_mono_ns: int | None = None
    last_heartbeat_wall_ns_utc: int | None = None
    frames_total: int = 0
    dropped_total: int = 0
    fatal_reason: str | None = None
    fatal_message: str | None = None
    fatal_seq: int | None = None
    stop_reason: str | None = None
    last_seq: int = -1
    last_mono_ns: int | None = None

    # -- derived views ---------------------------------------------------------------------
    def active_shards(self) -> list[int]:
        """Shards with tokens: a shard with none has nothing to confirm."""
        return sorted(s for s, v in self.shards.items() if v.tokens)

    def universe_tokens(self) -> set[str]:
        out: set[str] = set()
        for v in self.shards.values():
            out.update(v.tokens)
        return out

    def eligible_tokens(self, now_mono_ns: int | None = None) -> set[str]:
        """Tokens that count toward coverage: not inside a refresh grace window."""
        now = self.last_mono_ns if now_mono_ns is None else now_mono_ns
        in_grace = {t for t, until in self.grace_until_mono_ns.items() if now is None or until > now}
        return self.universe_tokens() - in_grace

    def seen_tokens(self) -> set[str]:
        out: set[str] = set()
        for v in self.shards.values():
            out.update(v.tokens_seen)
        return out

    def missing_tokens(self) -> list[str]:
        """Tokens of the universe that never produced a market event."""
        return sorted(self.universe_tokens() - self.seen_tokens())

    def coverage_pct(self) -> float:
        eligible = self.eligible_tokens()
        if not eligible:
            return 100.0
        return round(100.0 * len(eligible & self.seen_tokens()) / len(eligible), 3)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "mode": self.mode,
            "phase": self.phase,
            "last_seq": self.last_seq,
            "started_mono_ns": self.started_mono_ns,
            "confirm_deadline_mono_ns": self.confirm_deadline_mono_ns,
            "markets": self.markets,
            "universe_tokens": len(self.universe_tokens()),
            "coverage_pct": self.coverage_pct(),
            "pending_grace_windows": {t: u for t, u in sorted(self.grace_until_mono_ns.items())},
            "churn_guard_consecutive": self.churn_guard_consecutive,
            "refreshes_applied": self.refreshes_applied,
            "refresh_errors": self.refresh_errors,
            "heartbeats": self.heartbeats,
            "last_heartbeat": {
                "seq": self.last_heartbeat_seq,
                "mono_ns": self.last_heartbeat_mono_ns,
                "wall_ns_utc": self.last_heartbeat_wall_ns_utc,
            },
            "frames_total": self.frames_total,
            "dropped_messages_total": self.dropped_total,
            "fatal": None
            if self.fatal_reason is None
            else {"reason": self.fatal_reason, "message": self.fatal_message, "seq": self.fatal_seq},
            "stop_reason": self.stop_reason,
            "shards": [{"shard": s, **v.to_dict()} for s, v in sorted(self.shards.items())],  # README "JSON documents"
            "missing_tokens": len(self.missing_tokens()),
        }


def _shard(state: SupervisorState, shard: int) -> ShardView:
    view = state.shards.get(shard)
    if view is None:
        view = state.shards[shard] = ShardView()
    return view


def apply(state: SupervisorState, rec: LogRecord) -> SupervisorState:
    """Apply one record to the state, in place, and return it."""
    e = rec.event
    state.last_seq = rec.seq
    state.last_mono_ns = rec.mono_ns
    if state.grace_until_mono_ns:
        expired = [t for t, until in state.grace_until_mono_ns.items() if until <= rec.mono_ns]
        for t in expired:
            del state.grace_until_mono_ns[t]
    if isinstance(e, ev.RunStart):
        state.run_id = e.run_id
        state.mode = e.mode
        state.phase = "starting"
        state.started_mono_ns = rec.mono_ns
        state.confirm_min_events = e.confirm_min_events
        for s in range(e.shards):
            _shard(state, s)
    elif isinstance(e, ev.UniverseAssigned):
        for key, tokens in e.shard_tokens.items():
            _shard(state, int(key)).tokens = list(tokens)
        state.markets = e.markets
        for t in e.grace_tokens:
            state.grace_until_mono_ns[t] = e.grace_until_mono_ns
    elif isinstance(e, ev.ShardOverTokenLimit):
        _shard(state, e.shard).over_token_limit = True
    elif isinstance(e, ev.ConfirmBegin):
        if state.phase not in ("fatal", "stopping", "stopped"):
            state.phase = "confirming"
        state.confirm_deadline_mono_ns = e.deadline_mono_ns
    elif isinstance(e, ev.ShardConfirmed):
        _shard(state, e.shard).confirmed = True
    elif isinstance(e, ev.RunConfirmed):
        if state.phase == "confirming":
            state.phase = "running"
    elif isinstance(e, ev.ShardConnected):
        v = _shard(state, e.shard)
        v.connected = True
        v.connects += 1
    elif isinstance(e, ev.ShardDisconnected):
        v = _shard(state, e.shard)
        v.connected = False
        v.disconnects += 1
        v.last_disconnect_cause = e.cause
    elif isinstance(e, ev.ShardReconnect):
        v = _shard(state, e.shard)
        if e.planned:
            v.reconnects_planned += 1
        else:
            v.reconnects_unplanned += 1
    elif isinstance(e, ev.TokensFirstSeen):
        _shard(state, e.shard).tokens_seen.update(e.tokens)
    elif isinstance(e, ev.ShardSourceExhausted):
        _shard(state, e.shard).source_exhausted = True
    elif isinstance(e, ev.Heartbeat):
        state.heartbeats += 1
        state.last_heartbeat_seq = rec.seq
        state.last_heartbeat_mono_ns = rec.mono_ns
        state.last_heartbeat_wall_ns_utc = rec.wall_ns_utc
        state.frames_total = e.frames_total
        state.dropped_total = e.dropped_total
        for key, counters in e.shards.items():
            v = _shard(state, int(key))
            v.frames = counters.get("frames", v.frames)
            v.bytes = counters.get("bytes", v.bytes)
            v.market_events = counters.get("market_events", v.market_events)
            v.control_frames = counters.get("control_frames", v.control_frames)
            v.not_json_frames = counters.get("not_json_frames", v.not_json_frames)
            v.dropped = counters.get("dropped", v.dropped)
    elif isinstance(e, ev.UniverseRefresh):
        state.churn_guard_consecutive = e.consecutive_churn_guards
        if e.applied:
            state.refreshes_applied += 1
    elif isinstance(e, ev.UniverseRefreshError):
        state.refresh_errors += 1
    elif isinstance(e, ev.StopRequested):
        if state.phase not in ("fatal", "stopped"):
            state.phase = "stopping"
        state.stop_reason = state.stop_reason or e.reason
    elif isinstance(e, ev.Fatal):
        state.phase = "fatal"
        state.fatal_reason = e.reason
        state.fatal_message = e.message
        state.fatal_seq = rec.seq
    elif isinstance(e, ev.RunStop):
        state.frames_total = e.frames_total
        state.dropped_total = e.dropped_total
        if state.phase != "fatal":
            state.phase = "stopped"
    return state


def fold(records: Iterable[LogRecord], until_seq: int | None = None) -> SupervisorState:
    state = SupervisorState()
    for rec in records:
        if until_seq is not None and rec.seq > until_seq:
            break
        apply(state, rec)
    return state
