"""capture-audit as a pure fold: heartbeat gaps over a run's records.

Gaps are measured on the monotonic clock (the wall clock may step; the monotonic one does
not), between consecutive heartbeats, with the run's start record opening the first interval
and its stop record (or, for a run killed from outside, its last record) closing the last: a
run whose heartbeats never came (or stopped coming long before the end) has a gap as long as
that silence, not an empty list of intervals.
A gap counts as "over" the threshold only when strictly greater than it.
"""

from __future__ import annotations

from typing import Any, Iterable

from pm_arb.events import types as ev
from pm_arb.events.codec import LogRecord

CONTEXT_EVENTS = 3


def audit(records: Iterable[LogRecord], threshold_s: float = 2.0) -> dict[str, Any]:
    recs = list(records)
    anchors = [i for i, r in enumerate(recs) if isinstance(r.event, ev.Heartbeat)]
    heartbeats = len(anchors)
    start = next((i for i, r in enumerate(recs) if isinstance(r.event, ev.RunStart)), None)
    if start is not None and (not anchors or start < anchors[0]):
        anchors.insert(0, start)
    end = next((i for i, r in enumerate(recs) if isinstance(r.event, (ev.RunStop,))), None)
    # A run killed from outside has no run_stop: its last record closes the last interval.
    closing = end if end is not None else (len(recs) - 1 if recs else None)
    if closing is not None and anchors and closing > anchors[-1]:
        anchors.append(closing)
    gaps = []
    max_gap = 0.0
    total = 0.0
    for a, b in zip(anchors, anchors[1:]):
        ra, rb = recs[a], recs[b]
        gap = (rb.mono_ns - ra.mono_ns) / 1e9
        total += gap
        max_gap = max(max_gap, gap)
        if gap > threshold_s:
            between = [r.event.TYPE for r in recs[a + 1 : b]]
            gaps.append(
                {
                    "gap_s": round(gap, 6),
                    "start_seq": ra.seq,
                    "end_seq": rb.seq,
                    "start_wall_ns_utc": ra.wall_ns_utc,
                    "end_wall_ns_utc": rb.wall_ns_utc,
                    "wall_gap_s": round((rb.wall_ns_utc - ra.wall_ns_utc) / 1e9, 6),
                    "end_type": rb.event.TYPE,
                    "events_between": between[:20],
                    "events_before": [r.event.TYPE for r in recs[max(0, a - CONTEXT_EVENTS) : a]],
                    "events_after": [r.event.TYPE for r in recs[b + 1 : b + 1 + CONTEXT_EVENTS]],
                }
            )
    intervals = max(0, len(anchors) - 1)
    stop = recs[end] if end is not None else None
    last = recs[-1] if recs else None
    return {
        "threshold_s": threshold_s,
        "heartbeats": heartbeats,
        "intervals": intervals,
        "max_gap_s": round(max_gap, 6),
        "mean_gap_s": round(total / intervals, 6) if intervals else None,
        "gaps_over_threshold": len(gaps),
        "gaps": gaps,
        "pass": len(gaps) == 0,
        # A run killed from outside (SIGKILL, OOM, power loss) leaves no run_stop and no
        # fatal.json; the clean_stop gate needs to tell it from a run that ended.
        "run_stop": {"seq": stop.seq, "reason": stop.event.reason} if stop is not None else None,
        "last_record": {"seq": last.seq, "type": last.event.TYPE, "wall_ns_utc": last.wall_ns_utc} if last is not None else None,
    }
