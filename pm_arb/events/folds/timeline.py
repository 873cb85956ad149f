"""A run's timeline for capture-plot, as a pure fold over runlog records and global metrics.

Times are seconds on the monotonic clock since the run's first record (the wall clock may
step). A shard's disconnected window opens at a `shard_disconnected` while the shard was up
(a failed reconnect attempt does not open a second one) and closes at its next
`shard_connected`, or at the run's last record; disconnects with cause `stop` close the run
and are not windows.

The loss audit's incidents (capture-books, pm_arb/book/rebuild.py) come in as its result's
`incidents`; each is placed on the row of the shard it started on, from its start to its end
(or to the run's last record when it never closed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from pm_arb.events import types as ev
from pm_arb.events.codec import LogRecord
from pm_arb.events.folds.audit import audit

QUEUES = ("ws_in_q_depth", "parse_q_depth", "write_q_depth")


@dataclass(frozen=True)
class Span:
    shard: int
    start_s: float
    end_s: float
    cause: str
    planned: bool
    closed: bool  # False: the shard was still down when the runlog ends


@dataclass(frozen=True)
class BookSpan:
    token: str
    cause: str
    shard: int
    start_s: float
    end_s: float
    closed: bool  # False: still open at the end of the run


@dataclass
class Timeline:
    run_id: str | None = None
    start_wall_ns_utc: int | None = None
    end_s: float = 0.0
    shards: list[int] = field(default_factory=list)
    # one row per metrics interval: t_s (interval end), frames_per_s, p50_ms, p99_ms, queues, dropped
    intervals: list[dict[str, Any]] = field(default_factory=list)
    disconnects: list[Span] = field(default_factory=list)
    heartbeats: list[tuple[float, float]] = field(default_factory=list)  # (t_s, gap since the previous, s)
    gap_threshold_s: float = 2.0
    gaps_over: list[tuple[float, float]] = field(default_factory=list)  # (start_s, end_s) of gaps over the threshold
    refreshes: list[tuple[float, bool]] = field(default_factory=list)  # (t_s, applied)
    book_incidents: list[BookSpan] | None = None  # None: the loss audit was not run


def timeline(records: Iterable[LogRecord], global_metrics: list[Mapping[str, Any]], gap_threshold_s: float = 2.0,
             book_incidents: Iterable[Mapping[str, Any]] | None = None) -> Timeline:
    recs = list(records)
    tl = Timeline(gap_threshold_s=gap_threshold_s)
    if not recs:
        return tl
    t0 = recs[0].mono_ns
    tl.start_wall_ns_utc = recs[0].wall_ns_utc
    tl.end_s = (max(r.mono_ns for r in recs) - t0) / 1e9

    def sec(mono_ns: int) -> float:
        return (mono_ns - t0) / 1e9

    down: dict[int, tuple[float, str, bool]] = {}
    shards: set[int] = set()
    last_beat = None
    for r in recs:
        e = r.event
        if isinstance(e, ev.RunStart):
            tl.run_id = e.run_id
        elif isinstance(e, ev.UniverseAssigned):
            shards.update(int(s) for s, toks in e.shard_tokens.items() if toks)
        elif isinstance(e, ev.ShardDisconnected) and e.cause != "stop":
            shards.add(e.shard)
            if e.shard not in down:
                down[e.shard] = (sec(r.mono_ns), e.cause, e.planned)
        elif isinstance(e, ev.ShardConnected):
            shards.add(e.shard)
            if e.shard in down:
                start, cause, planned = down.pop(e.shard)
                tl.disconnects.append(Span(e.shard, start, sec(r.mono_ns), cause, planned, True))
        elif isinstance(e, ev.Heartbeat):
            if last_beat is not None:
                tl.heartbeats.append((sec(r.mono_ns), (r.mono_ns - last_beat) / 1e9))
            last_beat = r.mono_ns
        elif isinstance(e, ev.UniverseRefresh):
            tl.refreshes.append((sec(r.mono_ns), e.applied))
    for shard, (start, cause, planned) in sorted(down.items()):
        tl.disconnects.append(Span(shard, start, tl.end_s, cause, planned, False))
    tl.disconnects.sort(key=lambda s: (s.start_s, s.shard))
    if book_incidents is not None:
        tl.book_incidents = []
        for inc in book_incidents:
            start, end = inc["start"], inc["end"]
            start_s = sec(start["mono_ns"])
            end_s = sec(end["mono_ns"]) if end is not None else max(tl.end_s, start_s)
            tl.end_s = max(tl.end_s, end_s)  # frames can outlast the runlog's last record
            shards.add(start["shard"])
            tl.book_incidents.append(BookSpan(inc["token"], inc["cause"], start["shard"], start_s, end_s, end is not None))
    tl.shards = sorted(shards)
    aud = audit(recs, gap_threshold_s)
    by_seq = {r.seq: r for r in recs}
    tl.gaps_over = [(sec(by_seq[g["start_seq"]].mono_ns), sec(by_seq[g["end_seq"]].mono_ns)) for g in aud["gaps"]]
    for g in global_metrics:
        mono = g.get("mono_ns")
        if not isinstance(mono, int):
            continue
        lat = g.get("ws_rx_to_applied_ms") or {}
        tl.intervals.append({
            "t_s": sec(mono),
            "frames_per_s": g.get("frames_per_s"),
            "p50_ms": lat.get("p50"),
            "p99_ms": lat.get("p99"),
            "dropped": g.get("dropped") or 0,
            **{q: g.get(q) for q in QUEUES},
        })
    return tl
