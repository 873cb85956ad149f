"""The receive path: stamp, classify, batch, hand off. Runs on a shard's reader thread.

Per frame: two clock reads, two one-byte slices, a counter, a list append; no JSON. A batch goes
straight to the writer (one queue hop between the socket and the file) when it is full, when
its oldest frame has waited `batch_max_delay_ms`, or when the reader says the socket is
drained. Market events are counted per frame by `frame_parse.frame_shape`'s rule (an object
is one; arrays are scanned for `event_type`; control text, garbage and `[]` carry none), frames
and bytes at hand-off (ADR/0002, ADR/0007). The shard actor gets
the batch too, but only while some of its tokens have not produced an event yet: it extracts
token ids for coverage. When the writer already holds `capacity` frames of this shard, the
batch is dropped and counted, never queued without bound.
"""

from __future__ import annotations

import time
from operator import itemgetter
from typing import Any, Callable

from pm_arb.actors.gauge import DepthGauge
from pm_arb.actors.messages import AppendFrames, ConfirmReached, FrameBatch
from pm_arb.capture.frame_parse import frame_shape
from pm_arb.store.frames_format import FLAG_CONTROL, FLAG_NOT_JSON

_payload_of = itemgetter(4)


class ReaderSink:
    def __init__(
        self,
        shard: int,
        tell_shard: Callable[[Any], None],
        writer,
        clock,
        write_gauge: DepthGauge,
        write_capacity: int,
        parse_gauge: DepthGauge,
        parse_capacity: int,
        batch_max_frames: int,
        batch_max_delay_ms: float,
        confirm_min_events: int,
        write_full_wait_ms: float = 0.0,
    ) -> None:
        self.shard = shard
        self._tell_shard = tell_shard
        self._writer_tell = writer.tell
        self._mono = clock.mono_ns
        self._wall = clock.wall_ns
        self._write_gauge = write_gauge
        self._write_capacity = write_capacity
        self._parse_gauge = parse_gauge
        self._parse_capacity = parse_capacity
        self._batch_max = batch_max_frames
        self._delay_ns = int(batch_max_delay_ms * 1e6)
        self._confirm_min = confirm_min_events
        self._full_wait_s = write_full_wait_ms / 1000.0
        self.full_waits = 0
        self.batch: list = []
        self._flush_at_ns = 0  # the current batch is handed off once a frame arrives at/after this
        self._events_handed_off = 0
        self.last_mono_ns = 0  # receive stamp of the latest frame
        # Written only on the reader thread; the shard actor reads them for its reports.
        self.received = 0
        self.bytes = 0
        self.market_events = 0
        self.control_frames = 0
        self.not_json_frames = 0
        self.dropped = 0
        self.confirmed = False
        # Written only by the shard actor: whether it still needs frames to find unseen tokens.
        self.want_tokens = True

    def frame(self, opcode: int, payload: bytes) -> int:
        """Stamp and queue one frame as received; returns the market events it carries (0 means
        it is not market data: the data-idle watchdog and confirmation go by this).

        The common frame (a text `{...}` object: one market event) takes the first branch and
        nothing else; `_classify_rare` handles arrays, control text, binary and garbage with
        `frame_shape`'s rule. This runs once per captured frame, so it stays this short.
        """
        self.last_mono_ns = mono = self._mono()
        if opcode == 1 and payload[-1:] == b"}" and payload[:1] == b"{":
            flags = 0
            events = 1
            self.market_events += 1
        else:
            flags, events = self._classify_rare(opcode, payload)
        batch = self.batch
        if not batch:
            self._flush_at_ns = mono + self._delay_ns
        batch.append((mono, self._wall(), flags, opcode, payload))
        if len(batch) >= self._batch_max or mono >= self._flush_at_ns:
            self.flush()
        return events

    def _classify_rare(self, opcode: int, payload: bytes) -> tuple[int, int]:
        flags, events = frame_shape(opcode, payload)
        if flags & FLAG_CONTROL:
            self.control_frames += 1
        elif flags & FLAG_NOT_JSON:
            self.not_json_frames += 1
        self.market_events += events
        return flags, events

    def _wait_for_room(self, n: int) -> bool:
        """Bounded backpressure: sleep (releasing the GIL to the writer, and letting TCP flow
        control slow the sender) until the writer has room, at most write_q_full_wait_ms."""
        if self._full_wait_s <= 0:
            return False
        self.full_waits += 1
        deadline = time.monotonic() + self._full_wait_s
        gauge, cap = self._write_gauge, self._write_capacity
        while gauge.depth + n > cap:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return True

    def flush(self) -> None:
        batch = self.batch
        if not batch:
            return
        n = len(batch)
        self.batch = []
        self.bytes += sum(map(len, map(_payload_of, batch)))
        events = self.market_events - self._events_handed_off
        self._events_handed_off = self.market_events
        if self._write_gauge.depth + n > self._write_capacity and not self._wait_for_room(n):
            self.dropped += n
        else:
            self._write_gauge.add(n)
            self._writer_tell(AppendFrames(self.shard, batch))
        # Counted only after the batch is in `dropped` or in the write gauge: the shard actor
        # reads received, then dropped, then the gauge from its own thread, so that
        # received - dropped - write_q_depth never exceeds what the writer has applied
        # (capture-verify's frames_missing check relies on it).
        self.received += n
        if self.want_tokens and events:
            # Past capacity the batch is not scanned: coverage catches up on later frames.
            if self._parse_gauge.depth + n <= self._parse_capacity:
                self._parse_gauge.add(n)
                self._tell_shard(FrameBatch(batch))
        if not self.confirmed and self.market_events >= self._confirm_min:
            self.confirmed = True
            self._tell_shard(ConfirmReached(self.market_events, batch[-1][0]))
