"""The latency report as a pure fold over runlog records and metrics records.

Percentiles of `ws_rx_to_applied_ms` come from the per-interval histograms merged over the whole
run (never from averaging per-interval percentiles); the report states the bucket error bound.
Queue-depth and loop-lag percentiles are exact over the interval samples.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from pm_arb.events import types as ev
from pm_arb.events.codec import LogRecord
from pm_arb.metrics.latency_hist import RELATIVE_ERROR_BOUND, merge, percentiles

QUEUES = ("ws_in_q_depth", "parse_q_depth", "write_q_depth")
# Start-up excluded from the steady figures (ADR/0005): connects, subscriptions and the initial
# book dump of every token arrive in the first seconds; 3 s covered 4,000 tokens on 8 shards.
STARTUP_EXCLUDED_S = 3.0


def _exact_stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"samples": 0, "mean": None, "p99": None, "max": None}
    s = sorted(values)
    rank = max(1, -(-99 * len(s) // 100))
    return {"samples": len(s), "mean": round(sum(s) / len(s), 3), "p99": s[rank - 1], "max": s[-1]}


def _latency(metric_recs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    hist: dict[int, int] = {}
    max_ms = None
    for rec in metric_recs:
        merge(hist, rec.get("ws_rx_to_applied_hist_us") or {})
        m = (rec.get("ws_rx_to_applied_ms") or {}).get("max")
        if m is not None:
            max_ms = m if max_ms is None else max(max_ms, m)
    pct = percentiles(hist, (0.5, 0.95, 0.99))
    return {"count": sum(hist.values()), "p50": pct[0.5], "p95": pct[0.95], "p99": pct[0.99], "max": max_ms}


def steady_intervals(recs: list[LogRecord], global_metrics: list[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], int | None]:
    """The metrics intervals of the steady state (ADR/0005): each must begin at least
    STARTUP_EXCLUDED_S after the first interval began and not before `run_confirmed`, and end
    before the stop was requested (the last intervals hold the drain). Returns them and the
    mono time the window starts at."""
    timed = [g for g in global_metrics if isinstance(g.get("mono_ns"), int) and isinstance(g.get("interval_s"), (int, float))]
    if not timed:
        return [], None
    first_begin = min(g["mono_ns"] - round(g["interval_s"] * 1e9) for g in timed)
    confirmed = next((r.mono_ns for r in recs if isinstance(r.event, ev.RunConfirmed)), None)
    stop = next((r.mono_ns for r in recs if isinstance(r.event, (ev.StopRequested, ev.Fatal, ev.RunStop))), None)
    start = max(first_begin + round(STARTUP_EXCLUDED_S * 1e9), confirmed or first_begin)
    chosen = [
        g for g in timed
        if g["mono_ns"] - round(g["interval_s"] * 1e9) >= start and (stop is None or g["mono_ns"] <= stop)
    ]
    return chosen, start


def _steady(recs: list[LogRecord], global_metrics: list[Mapping[str, Any]]) -> dict[str, Any]:
    chosen, start = steady_intervals(recs, global_metrics)
    lat = _latency(chosen)
    lat["intervals"] = len(chosen)
    lat["from_wall_ns_utc"] = chosen[0].get("wall_ns_utc") if chosen else None
    lat["rule"] = (
        f"metrics intervals beginning >= {STARTUP_EXCLUDED_S:g} s after the first and after run_confirmed, "
        "ending before the stop was requested (ADR/0005)"
    )
    if not chosen:
        lat["rule"] += "; none qualified (the run is too short)"
    return lat


def _disconnections(recs: list[LogRecord]) -> dict[str, Any]:
    """Unplanned disconnects while the run was capturing, and how long shards stayed down."""
    phase_active = False
    down_since: dict[int, int] = {}
    incidents = 0
    total_ns = 0
    end_ns = recs[-1].mono_ns if recs else 0
    per_shard: dict[str, dict[str, Any]] = {}
    for r in recs:
        e = r.event
        if isinstance(e, ev.RunConfirmed):
            phase_active = True
        elif isinstance(e, (ev.StopRequested, ev.Fatal, ev.RunStop)):
            if phase_active:
                for s, since in down_since.items():
                    total_ns += r.mono_ns - since
                    per_shard[str(s)]["down_s"] += (r.mono_ns - since) / 1e9
                down_since.clear()
            phase_active = False
        elif isinstance(e, ev.ShardDisconnected) and phase_active and not e.planned:
            if e.shard not in down_since:
                incidents += 1
                down_since[e.shard] = r.mono_ns
                ps = per_shard.setdefault(str(e.shard), {"incidents": 0, "down_s": 0.0})
                ps["incidents"] += 1
        elif isinstance(e, ev.ShardConnected) and e.shard in down_since:
            since = down_since.pop(e.shard)
            total_ns += r.mono_ns - since
            per_shard[str(e.shard)]["down_s"] += (r.mono_ns - since) / 1e9
    for s, since in down_since.items():
        total_ns += end_ns - since
        per_shard[str(s)]["down_s"] += (end_ns - since) / 1e9
    for v in per_shard.values():
        v["down_s"] = round(v["down_s"], 6)
    return {"midrun": {"incidents": incidents, "total_s": round(total_ns / 1e9, 6), "per_shard": per_shard}}


def latency_report(
    records: Iterable[LogRecord],
    global_metrics: list[Mapping[str, Any]],
    shard_metrics: Mapping[int, list[Mapping[str, Any]]],
) -> dict[str, Any]:
    recs = list(records)
    reconnects: dict[str, Any] = {"total": 0, "planned": 0, "per_shard": {}, "causes": {}}
    drops_by_queue: dict[str, int] = {}
    drops_by_shard: dict[str, int] = {}
    run_id = None
    frames_written = None
    for r in recs:
        e = r.event
        if isinstance(e, ev.RunStart):
            run_id = e.run_id
        elif isinstance(e, ev.RunStop) and e.frames_written:
            frames_written = sum(e.frames_written.values())
        elif isinstance(e, ev.ShardReconnect):
            if e.planned:
                reconnects["planned"] += 1
                continue
            reconnects["total"] += 1
            ps = reconnects["per_shard"].setdefault(str(e.shard), {"total": 0, "causes": {}})
            ps["total"] += 1
            ps["causes"][e.cause] = ps["causes"].get(e.cause, 0) + 1
            reconnects["causes"][e.cause] = reconnects["causes"].get(e.cause, 0) + 1
        elif isinstance(e, ev.FramesDropped):
            drops_by_queue[e.queue] = drops_by_queue.get(e.queue, 0) + e.dropped
            drops_by_shard[str(e.shard)] = drops_by_shard.get(str(e.shard), 0) + e.dropped
    dropped_total_metrics = max((g.get("dropped_total") or 0 for g in global_metrics), default=0)
    dropped_total_events = sum(drops_by_queue.values())
    per_interval = [
        {"wall_ns_utc": g.get("wall_ns_utc"), "dropped": g.get("dropped")} for g in global_metrics if (g.get("dropped") or 0) > 0
    ]
    frames = max((g.get("frames_total") or 0 for g in global_metrics), default=0)
    report = {
        "run_id": run_id,
        "frames_applied": frames,
        "ws_rx_to_applied_ms": {
            **_latency(global_metrics),
            "per_shard": {str(s): _latency(v) for s, v in sorted(shard_metrics.items())},
            "method": (
                "merged log-linear histogram over the whole run; p50/p95/p99 are bucket lower bounds with relative "
                f"error <= {RELATIVE_ERROR_BOUND * 100:.2f}%, max is exact; latency = writer's write() returned minus rx_mono_ns"
            ),
        },
        "ws_rx_to_applied_ms_steady": _steady(recs, global_metrics),
        "queue_depth": {q: _exact_stats([g[q] for g in global_metrics if isinstance(g.get(q), (int, float))]) for q in QUEUES},
        "loop_lag_ms": _exact_stats([g["loop_lag_ms"] for g in global_metrics if isinstance(g.get("loop_lag_ms"), (int, float))]),
        "drops": {
            "dropped_messages_total": max(dropped_total_metrics, dropped_total_events),
            "per_interval": per_interval,
            "intervals_with_drops": len(per_interval),
            "by_queue": drops_by_queue,
            "by_shard": drops_by_shard,
        },
        "reconnects": reconnects,
        "disconnected": _disconnections(recs),
        "metrics_intervals": len(global_metrics),
        # Metrics are complete for a run that stopped (the writer flushes its last interval
        # before run_stop): fewer frames in them than the writer wrote means lines were lost.
        "metrics_coverage": {
            "frames_in_metrics": frames,
            "frames_written": frames_written,
            "complete": None if frames_written is None else frames >= frames_written,
        },
    }
    return report
