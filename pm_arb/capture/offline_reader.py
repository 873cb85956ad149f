"""A shard's fixture replay: the frames of its markets, stamped as if received now."""

from __future__ import annotations

import threading
from typing import Any, Callable

from pm_arb.actors.messages import ReaderEvent, ReaderFinished
from pm_arb.capture.reader_sink import ReaderSink
from pm_arb.config import Config
from pm_arb.events import types as ev
from pm_arb.store.fixtures import FixtureFrame


class OfflineReader:
    def __init__(
        self,
        shard: int,
        tokens: tuple[str, ...],
        frames: list[FixtureFrame],
        sink: ReaderSink,
        tell: Callable[[Any], None],
        clock,
        config: Config,
        source_name: str,
        repeat: int = 1,
    ) -> None:
        self.shard = shard
        self.tokens = tokens
        self.frames = frames
        self.tell = tell
        self.clock = clock
        self.speed = config.offline_speed
        self.repeat = repeat
        self.source_name = source_name
        self.sink = sink
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"offline-reader-{shard:02d}", daemon=True)

    def start(self, not_before_mono_ns: int = 0) -> None:
        """A replay opens no socket, so it has nothing to stagger."""
        self._thread.start()

    def request_stop(self) -> None:
        self._stop.set()

    def set_tokens(self, tokens, not_before_mono_ns, added, removed) -> None:
        """Fixture replays have a fixed universe; refresh does not run offline."""

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _report(self, event: ev.Event) -> None:
        self.tell(ReaderEvent(self.clock.mono_ns(), self.clock.wall_ns(), event))

    def _replay_paced(self) -> int:
        sink, stop, mono = self.sink, self._stop, self.clock.mono_ns
        sent = 0
        span_ns = (self.frames[-1].t_ns + 1_000_000) if self.frames else 0
        start = mono()
        for lap in range(self.repeat):
            for f in self.frames:
                due = start + int((lap * span_ns + f.t_ns) / self.speed)
                wait_ns = due - mono()
                if wait_ns > 0:
                    sink.flush()
                    if stop.wait(wait_ns / 1e9):
                        return sent
                elif stop.is_set():
                    return sent
                sink.frame(f.opcode, f.payload)
                sent += 1
        return sent

    def _replay_flat_out(self) -> int:
        """As fast as the pipeline takes them (capture-bench): the stop flag is looked at once
        per chunk, not per frame, so the loop costs little beside `sink.frame` itself."""
        frame, stop = self.sink.frame, self._stop
        pairs = [(f.opcode, f.payload) for f in self.frames]
        chunks = [pairs[k : k + 256] for k in range(0, len(pairs), 256)]
        sent = 0
        for _lap in range(self.repeat):
            for chunk in chunks:
                if stop.is_set():
                    return sent
                for opcode, payload in chunk:
                    frame(opcode, payload)
                sent += len(chunk)
        return sent

    def _run(self) -> None:
        try:
            self._replay()
        finally:
            self.sink.flush()
            self.tell(ReaderFinished("stop"))

    def _replay(self) -> None:
        self._report(ev.ShardConnecting(shard=self.shard, url=self.source_name, attempt=1, tokens=len(self.tokens)))
        self._report(ev.ShardConnected(shard=self.shard, attempt=1, connect_ms=0.0, subscribe_messages=0))
        sent = self._replay_paced() if self.speed > 0 else self._replay_flat_out()
        self.sink.flush()
        if not self._stop.is_set():
            self._report(ev.ShardSourceExhausted(shard=self.shard, frames=sent))
            self._stop.wait()
        self._report(ev.ShardDisconnected(shard=self.shard, cause="stop", detail="stop requested", planned=True))
