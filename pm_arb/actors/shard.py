"""ShardActor: one frame source (a WebSocket, or a fixture replay), its counters and coverage.

The socket lives on a reader thread the actor owns (ADR/0002): the thread blocks on the socket
and hands batches to this actor by message, so the actor stays free to take Stop and SetTokens
while the socket waits. The actor forwards each batch to the writer first and only then scans
it for market events and token ids, keeping JSON off the receive path.
"""

from __future__ import annotations

from typing import Any, Callable

import pykka

from pm_arb.actors import messages as m
from pm_arb.actors.gauge import DepthGauge
from pm_arb.capture.frame_parse import asset_ids, count_market_events, looks_complete
from pm_arb.config import Config
from pm_arb.events import types as ev
from pm_arb.store.frames_format import FLAG_CONTROL

# make_reader(shard, tokens, tell, clock) -> an object with start(), request_stop(),
# set_tokens(tokens, not_before_mono_ns, added, removed), and `sink` (a ReaderSink)
ReaderFactory = Callable[..., Any]


class ShardActor(pykka.ThreadingActor):
    def __init__(
        self,
        shard: int,
        config: Config,
        clock,
        supervisor,
        writer,
        metrics,
        make_reader: ReaderFactory,
        parse_gauge: DepthGauge,
        write_gauge: DepthGauge,
    ) -> None:
        super().__init__()
        self.shard = shard
        self.config = config
        self.clock = clock
        self.supervisor = supervisor
        self.writer = writer
        self.metrics = metrics
        self.make_reader = make_reader
        self.parse_gauge = parse_gauge
        self.write_gauge = write_gauge
        self.write_capacity = max(1, config.write_q_capacity // max(1, config.ws_shards))
        self.reader = None
        self.connected = False
        self.frames = 0
        self.bytes = 0
        self.market_events = 0
        self.control_frames = 0
        self.not_json_frames = 0
        self.dropped_write = 0
        self._reported_drops = {"parse_q": 0, "write_q": 0}
        self.tokens_seen: set[str] = set()
        self.unseen: set[str] = set()  # this shard's tokens with no event yet: only these need token extraction
        self.confirmed = False
        self.stopping = False
        self.loop_lag_ms = 0.0
        self.started_ns: int | None = None

    def _emit(self, event: ev.Event, mono_ns: int | None = None, wall_ns: int | None = None) -> None:
        self.supervisor.tell(
            m.Emit(self.clock.mono_ns() if mono_ns is None else mono_ns, self.clock.wall_ns() if wall_ns is None else wall_ns, event)
        )

    def on_receive(self, msg: Any) -> Any:
        if isinstance(msg, m.FrameBatch):
            self._on_batch(msg.frames)
        elif isinstance(msg, m.ReaderEvent):
            e = msg.event
            if isinstance(e, ev.ShardConnected):
                self.connected = True
            elif isinstance(e, ev.ShardDisconnected):
                self.connected = False
            self._emit(e, msg.mono_ns, msg.wall_ns)
            if isinstance(e, ev.ShardSourceExhausted):
                self.supervisor.tell(m.SourceExhausted(self.shard))
        elif isinstance(msg, m.Tick):
            self.loop_lag_ms = max(0.0, (self.clock.mono_ns() - msg.scheduled_mono_ns) / 1e6)
            self._report()
        elif isinstance(msg, m.StartShard):
            self._start_reader(msg.tokens)
        elif isinstance(msg, m.SetTokens):
            if self.reader is None:
                self._start_reader(msg.tokens)
            elif not self.stopping:
                self.unseen = set(msg.tokens) - self.tokens_seen
                self.reader.set_tokens(msg.tokens, msg.not_before_mono_ns, msg.added, msg.removed)
        elif isinstance(msg, m.StopShard):
            self.stopping = True
            if self.reader is None:
                self._stopped()
            else:
                self.reader.request_stop()
        elif isinstance(msg, m.ReaderFinished):
            self._stopped()
        return None

    def _start_reader(self, tokens) -> None:
        if self.stopping:
            return
        self.unseen = set(tokens) - self.tokens_seen
        if self.started_ns is None:
            self.started_ns = self.clock.mono_ns()
        self.reader = self.make_reader(self.shard, tuple(tokens), self.actor_ref.tell, self.clock)
        self.reader.start()

    def _on_batch(self, frames: list) -> None:
        n = len(frames)
        self.parse_gauge.remove(n)
        if self.write_gauge.depth + n > self.write_capacity:
            self.dropped_write += n
        else:
            self.write_gauge.add(n)
            self.writer.tell(m.AppendFrames(self.shard, frames))
        new_tokens: list[str] = []
        seen = self.tokens_seen
        unseen = self.unseen
        nbytes = events = control = not_json = 0
        for _mono, _wall, flags, _opcode, payload in frames:
            nbytes += len(payload)
            if flags:
                if flags & FLAG_CONTROL:
                    control += 1
                else:
                    not_json += 1
                continue
            if not looks_complete(payload):
                not_json += 1
                continue
            events += count_market_events(payload)
            if unseen:
                for t in asset_ids(payload):
                    if t not in seen:
                        seen.add(t)
                        unseen.discard(t)
                        new_tokens.append(t)
        self.bytes += nbytes
        self.market_events += events
        self.control_frames += control
        self.not_json_frames += not_json
        self.frames += n
        if new_tokens:
            self._emit(ev.TokensFirstSeen(shard=self.shard, tokens=new_tokens))
        if not self.confirmed and self.market_events >= self.config.capture_confirm_min_events:
            self.confirmed = True
            now = self.clock.mono_ns()
            secs = round((now - (self.started_ns or now)) / 1e9, 3)
            self._emit(ev.ShardConfirmed(shard=self.shard, market_events=self.market_events, seconds_after_start=secs), now)

    def _dropped_parse(self) -> int:
        return self.reader.sink.dropped if self.reader is not None else 0

    def _report(self) -> None:
        for queue, total, cap in (
            ("parse_q", self._dropped_parse(), self.config.parse_q_capacity),
            ("write_q", self.dropped_write, self.write_capacity),
        ):
            if total > self._reported_drops[queue]:
                self._emit(
                    ev.FramesDropped(
                        shard=self.shard, queue=queue, dropped=total - self._reported_drops[queue], dropped_total=total, capacity=cap
                    )
                )
                self._reported_drops[queue] = total
        status = m.ShardStatus(
            shard=self.shard,
            connected=self.connected,
            frames=self.frames + self._dropped_parse(),
            bytes=self.bytes,
            market_events=self.market_events,
            control_frames=self.control_frames,
            not_json_frames=self.not_json_frames,
            dropped=self._dropped_parse() + self.dropped_write,
            ws_in_q_depth=len(self.reader.sink.batch) if self.reader is not None else 0,
            parse_q_depth=self.parse_gauge.depth,
            write_q_depth=self.write_gauge.depth,
            loop_lag_ms=round(self.loop_lag_ms, 3),
        )
        self.supervisor.tell(status)
        if self.metrics is not None:
            self.metrics.tell(status)

    def _stopped(self) -> None:
        self._report()
        self.supervisor.tell(m.ShardStopped(self.shard))
