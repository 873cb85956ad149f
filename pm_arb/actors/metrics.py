"""MetricsActor: one record per interval to metrics/global.ndjson and metrics/shard_NN.ndjson.

It joins what the writer applied (frames, bytes, latency histogram) with what each shard last
reported (queue depths, drops, connection), and hands the lines to the writer.
"""

from __future__ import annotations

from typing import Any

import orjson

from pm_arb.store import layout as bundle
from pm_arb.actors import messages as m
from pm_arb.actors.base import PlantActor
from pm_arb.metrics.latency_hist import merge, percentiles

QS = (0.5, 0.95, 0.99)


def latency_summary(hist: dict[int, int], max_us: int) -> dict[str, Any]:
    pct = percentiles(hist, QS)
    count = sum(hist.values())
    return {
        "count": count,
        "p50": pct[0.5],
        "p95": pct[0.95],
        "p99": pct[0.99],
        "max": round(max_us / 1000.0, 3) if count else None,
    }


class MetricsActor(PlantActor):
    def __init__(self, writer, shards: int, supervisor=None) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.writer = writer
        self.shards = shards
        self.latest: dict[int, m.ShardStatus] = {}
        self.frames_total: dict[int, int] = {}
        self.bytes_total: dict[int, int] = {}
        self.dropped_seen: dict[int, int] = {}

    def receive(self, msg: Any) -> Any:
        if isinstance(msg, m.ShardStatus):
            self.latest[msg.shard] = msg
        elif isinstance(msg, m.WriterInterval):
            self._write_interval(msg)
        else:
            self.unknown(msg)
        return None

    def _record(self, msg: m.WriterInterval, shard_ids: list[int], applied: dict[int, dict[str, Any]]) -> dict[str, Any]:
        hist: dict[int, int] = {}
        max_us = 0
        frames = nbytes = 0
        for s in shard_ids:
            a = applied.get(s)
            if a:
                merge(hist, a["hist"])
                max_us = max(max_us, a["max_us"])
                frames += a["frames"]
                nbytes += a["bytes"]
        statuses = [self.latest[s] for s in shard_ids if s in self.latest]
        dropped_total = sum(st.dropped for st in statuses)
        dropped_before = sum(self.dropped_seen.get(s, 0) for s in shard_ids)
        return {
            "mono_ns": msg.mono_ns,
            "wall_ns_utc": msg.wall_ns,
            "interval_s": msg.interval_s,
            "frames": frames,
            "bytes": nbytes,
            "frames_total": sum(self.frames_total.get(s, 0) for s in shard_ids),
            "bytes_total": sum(self.bytes_total.get(s, 0) for s in shard_ids),
            "frames_per_s": round(frames / msg.interval_s, 1) if msg.interval_s > 0 else None,
            "ws_in_q_depth": sum(st.ws_in_q_depth for st in statuses),
            "parse_q_depth": sum(st.parse_q_depth for st in statuses),
            "write_q_depth": sum(st.write_q_depth for st in statuses),
            "dropped": max(0, dropped_total - dropped_before),
            "dropped_total": dropped_total,
            "connected": sum(1 for st in statuses if st.connected),
            "loop_lag_ms": round(max([msg.loop_lag_ms, *(st.loop_lag_ms for st in statuses)]), 3),
            "ws_rx_to_applied_ms": latency_summary(hist, max_us),
            "ws_rx_to_applied_hist_us": {str(k): n for k, n in sorted(hist.items())},
        }

    def _write_interval(self, msg: m.WriterInterval) -> None:
        for s, a in msg.shards.items():
            self.frames_total[s] = self.frames_total.get(s, 0) + a["frames"]
            self.bytes_total[s] = self.bytes_total.get(s, 0) + a["bytes"]
        shard_ids = sorted(set(self.latest) | set(msg.shards) | set(self.frames_total))
        lines = {}
        for s in shard_ids:
            rec = self._record(msg, [s], msg.shards)
            rec["shard"] = s
            lines[bundle.shard_metrics_name(s)] = rec
        glob = self._record(msg, shard_ids, msg.shards)
        for s in shard_ids:
            if s in self.latest:
                self.dropped_seen[s] = self.latest[s].dropped
        self.writer.tell(m.AppendMetrics(bundle.GLOBAL_METRICS, orjson.dumps(glob) + b"\n"))
        for name, rec in lines.items():
            self.writer.tell(m.AppendMetrics(name, orjson.dumps(rec) + b"\n"))


