"""The receive path: stamp, classify, batch, hand off. Runs on a shard's reader thread.

Per frame it does two clock reads, a few byte comparisons and a list append; no JSON. Batches go
to the shard actor when full or when the oldest frame has waited `batch_max_delay_ms`. When the
shard actor already holds `capacity` frames, the batch is dropped and counted rather than
queued without bound.
"""

from __future__ import annotations

from typing import Any, Callable

from pm_arb.actors.gauge import DepthGauge
from pm_arb.actors.messages import FrameBatch
from pm_arb.capture.frame_parse import classify


class ReaderSink:
    def __init__(
        self,
        tell: Callable[[Any], None],
        clock,
        parse_gauge: DepthGauge,
        capacity: int,
        batch_max_frames: int,
        batch_max_delay_ms: float,
    ) -> None:
        self._tell = tell
        self._mono = clock.mono_ns
        self._wall = clock.wall_ns
        self._gauge = parse_gauge
        self._capacity = capacity
        self._batch_max = batch_max_frames
        self._delay_ns = int(batch_max_delay_ms * 1e6)
        self.batch: list = []
        self._batch_started_ns = 0
        self.received = 0
        self.dropped = 0

    def frame(self, opcode: int, payload: bytes) -> int:
        """Stamp and queue one frame as received; returns its flags."""
        mono = self._mono()
        flags = classify(opcode, payload)
        batch = self.batch
        if not batch:
            self._batch_started_ns = mono
        batch.append((mono, self._wall(), flags, opcode, payload))
        self.received += 1
        if len(batch) >= self._batch_max or mono - self._batch_started_ns >= self._delay_ns:
            self.flush()
        return flags

    def pending_deadline_ns(self) -> int | None:
        """When the oldest unsent frame is due for hand-off, or None with nothing pending."""
        return self._batch_started_ns + self._delay_ns if self.batch else None

    def flush(self) -> None:
        batch = self.batch
        if not batch:
            return
        n = len(batch)
        self.batch = []
        if self._gauge.depth + n > self._capacity:
            self.dropped += n
            return
        self._gauge.add(n)
        self._tell(FrameBatch(batch))
