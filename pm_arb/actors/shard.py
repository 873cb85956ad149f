"""ShardActor: one frame source (a WebSocket, or a fixture replay), its coverage and reports.

The socket lives on a reader thread the actor owns (ADR/0002): the thread blocks on the socket,
stamps frames and hands batches straight to the writer through the shard's `ReaderSink`, so
the actor stays free to take Stop and SetTokens while the socket waits, and the write path has
one queue hop. The actor relays the reader's lifecycle facts to the supervisor, finds which
tokens produced their first event, reports counters on every Tick, and stops the reader.
"""

from __future__ import annotations

from typing import Any, Callable

from pm_arb.actors import messages as m
from pm_arb.actors.base import PlantActor
from pm_arb.actors.gauge import DepthGauge
from pm_arb.capture.frame_parse import asset_ids, market_events
from pm_arb.capture.reader_sink import ReaderSink
from pm_arb.config import Config
from pm_arb.events import types as ev

# make_reader(shard, tokens, sink, tell, clock) -> an object with start(not_before_mono_ns), request_stop() and
# set_tokens(tokens, not_before_mono_ns, added, removed); it feeds `sink` from its own thread.
ReaderFactory = Callable[..., Any]


class ShardActor(PlantActor):
    # After a crash the shard still relays its reader's lifecycle and stops it on request.
    ENDGAME = (m.StopShard, m.ReaderFinished, m.ReaderEvent)

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
        # A shard opened mid-run gets the same share as those opened at start.
        self.write_capacity = max(1, config.write_q_capacity // max(1, config.ws_shards))
        self.sink: ReaderSink | None = None
        self.reader = None
        self.connected = False
        self._reported_drops = 0
        self.tokens_seen: set[str] = set()
        self.unseen: set[str] = set()  # this shard's tokens with no event yet
        self.stopping = False
        self.loop_lag_ms = 0.0
        self.started_ns: int | None = None

    def setup(self) -> None:
        cfg = self.config
        self.sink = ReaderSink(
            self.shard, self.actor_ref.tell, self.writer, self.clock, self.write_gauge, self.write_capacity,
            self.parse_gauge, cfg.parse_q_capacity, cfg.batch_max_frames, cfg.batch_max_delay_ms, cfg.capture_confirm_min_events,
            cfg.write_q_full_wait_ms,
        )

    def _emit(self, event: ev.Event, mono_ns: int | None = None, wall_ns: int | None = None) -> None:
        self.supervisor.tell(
            m.Emit(self.clock.mono_ns() if mono_ns is None else mono_ns, self.clock.wall_ns() if wall_ns is None else wall_ns, event)
        )

    def receive(self, msg: Any) -> Any:
        if isinstance(msg, m.FrameBatch):
            self._find_new_tokens(msg.frames)
        elif isinstance(msg, m.ReaderEvent):
            e = msg.event
            if isinstance(e, ev.ShardConnected):
                self.connected = True
            elif isinstance(e, ev.ShardDisconnected):
                self.connected = False
            self._emit(e, msg.mono_ns, msg.wall_ns)
        elif isinstance(msg, m.ConfirmReached):
            secs = round((msg.mono_ns - (self.started_ns or msg.mono_ns)) / 1e9, 3)
            self._emit(ev.ShardConfirmed(shard=self.shard, market_events=msg.market_events, seconds_after_start=max(0.0, secs)))
        elif isinstance(msg, m.Tick):
            self.loop_lag_ms = max(0.0, (self.clock.mono_ns() - msg.scheduled_mono_ns) / 1e6)
            self._report()
        elif isinstance(msg, m.StartShard):
            self._start_reader(msg.tokens, msg.not_before_mono_ns)
        elif isinstance(msg, m.SetTokens):
            self._set_unseen(msg.tokens)
            if self.reader is None:  # a shard a refresh opened, or one that had no tokens
                self._start_reader(msg.tokens, msg.not_before_mono_ns)
            elif not self.stopping:
                self.reader.set_tokens(msg.tokens, msg.not_before_mono_ns, msg.added, msg.removed)
        elif isinstance(msg, m.StopShard):
            self.stopping = True
            if self.reader is None:
                self._stopped()
            else:
                self.reader.request_stop()
        elif isinstance(msg, m.ReaderFinished):
            self._stopped()
        else:
            self.unknown(msg)
        return None

    def _set_unseen(self, tokens) -> None:
        self.unseen = set(tokens) - self.tokens_seen
        self.sink.want_tokens = bool(self.unseen)

    def _start_reader(self, tokens, not_before_mono_ns: int) -> None:
        if self.stopping:
            return
        if self.started_ns is None:
            self.started_ns = self.clock.mono_ns()
        self._set_unseen(tokens)
        self.reader = self.make_reader(self.shard, tuple(tokens), self.sink, self.actor_ref.tell, self.clock)
        self.reader.start(not_before_mono_ns)

    def _find_new_tokens(self, frames: list) -> None:
        self.parse_gauge.remove(len(frames))
        if not self.unseen:
            return
        seen, unseen = self.tokens_seen, self.unseen
        new_tokens: list[str] = []
        for _mono, _wall, flags, _opcode, payload in frames:
            if flags or not market_events(payload):  # coverage counts market data only (ADR/0007)
                continue
            for t in asset_ids(payload):
                if t not in seen:
                    seen.add(t)
                    unseen.discard(t)
                    new_tokens.append(t)
        if new_tokens:
            self._emit(ev.TokensFirstSeen(shard=self.shard, tokens=new_tokens))
        if not unseen:
            self.sink.want_tokens = False

    def _report(self) -> None:
        sink = self.sink
        if sink.dropped > self._reported_drops:
            self._emit(
                ev.FramesDropped(shard=self.shard, queue="write_q", dropped=sink.dropped - self._reported_drops,
                                 dropped_total=sink.dropped, capacity=self.write_capacity)
            )
            self._reported_drops = sink.dropped
        status = m.ShardStatus(
            shard=self.shard,
            connected=self.connected,
            frames=sink.received,
            bytes=sink.bytes,
            market_events=sink.market_events,
            control_frames=sink.control_frames,
            not_json_frames=sink.not_json_frames,
            dropped=sink.dropped,
            ws_in_q_depth=len(sink.batch),
            parse_q_depth=self.parse_gauge.depth,
            write_q_depth=self.write_gauge.depth,
            loop_lag_ms=round(self.loop_lag_ms, 3),
        )
        self.supervisor.tell(status)
        if self.metrics is not None:
            self.metrics.tell(status)

    def _stopped(self) -> None:
        # A shard that crashed in setup() has no sink to report on; the stop must be answered
        # anyway, or the supervisor waits out its whole stop grace for it.
        try:
            if self.sink is not None:
                self._report()
        finally:
            self.supervisor.tell(m.ShardStopped(self.shard))
