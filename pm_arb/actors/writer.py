"""WriterActor: the only code that writes the run bundle's append-only files.

Frames/idx per shard, runlog lines, metrics lines, and on a fatal the fatal bundle. It stamps
`applied` when a batch's write returns (the data is in the page cache), which gives
`ws_rx_to_applied`. fsync runs every `writer_fsync_interval_seconds` and on close. An fsync or
write error makes the run fatal instead of retrying: after a failed fsync the kernel may have
dropped the dirty pages, so a retry could report success for lost data.
"""

from __future__ import annotations

import errno
import os
import queue
import threading
from collections import deque
from operator import itemgetter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pm_arb.store import layout as bundle
from pm_arb.actors import messages as m
from pm_arb.actors.base import PlantActor
from pm_arb.actors.gauge import DepthGauge
from pm_arb.clock import Clock
from pm_arb.config import Config
from pm_arb.metrics.latency_hist import add_batch
from pm_arb.store.shard_files import ShardFileWriter, write_frames_file

RESERVE_BYTES = 2 * 1024 * 1024
_rx_mono_of = itemgetter(0)


@dataclass(frozen=True)
class SyncFailed:
    """The syncer thread's fsync failed; handled on the writer's own thread."""

    error: OSError


class Syncer:
    """fsyncs the writer's files on its own thread, so a slow disk flush (tens of ms measured)
    never holds up appends. The writer stays the only code that writes; this only flushes."""

    def __init__(self, report) -> None:
        self._report = report
        self._wake = threading.Event()
        self._stop = False
        self._fds: list[int] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="writer-fsync", daemon=True)
        self._thread.start()

    def request(self, fds: list[int]) -> None:
        with self._lock:
            self._fds = list(fds)
        self._wake.set()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop:
                return
            with self._lock:
                fds = self._fds
            try:
                for fd in fds:
                    os.fsync(fd)
            except OSError as exc:
                self._report(SyncFailed(exc))
                return


class WriterActor(PlantActor):
    # After a crash the writer appends no more frames or metrics (counted as lost: its files may
    # hold a half-done append) but still writes the runlog and the fatal bundle, and fsyncs on close.
    ENDGAME = (m.AppendFrames, m.AppendRunlog, m.AppendMetrics, m.FlushMetrics, m.WriteFatalBundle,
               m.CloseWriter, m.AttachWriterPeers, SyncFailed)

    @staticmethod
    def _create_actor_inbox() -> queue.SimpleQueue:
        """Every frame batch passes this inbox. queue.Queue's put/get run a Python Condition
        (a fresh lock per wait, notify loops) around each hand-off; SimpleQueue does it in C
        (ADR/0006). pykka needs only put, get and empty."""
        return queue.SimpleQueue()

    def __init__(self, run_dir: Path, config: Config, clock: Clock, write_gauges: dict[int, DepthGauge]) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.config = config
        self.clock = clock
        self.write_gauges = write_gauges
        self.supervisor = None
        self.metrics = None
        self.shard_writers: dict[int, ShardFileWriter] = {}
        self.last_frames: dict[int, deque] = {}
        self.interval: dict[int, dict[str, Any]] = {}
        self.failed: str | None = None
        self.frames_lost_after_failure = 0
        self._runlog_fd: int | None = None
        self._metrics_fds: dict[str, int] = {}
        self._last_fsync_ns = 0
        self._last_interval_ns = 0
        self._last_interval_tick_ns: int | None = None
        self._syncer: Syncer | None = None
        self._reserve = run_dir / ".reserve"
        self.closed = False

    def setup(self) -> None:
        (self.run_dir / bundle.CAPTURE_DIR).mkdir(parents=True, exist_ok=True)
        (self.run_dir / bundle.METRICS_DIR).mkdir(parents=True, exist_ok=True)
        self._runlog_fd = os.open(self.run_dir / bundle.RUNLOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # Room kept aside so that, when the disk fills, fatal.json and the last runlog lines fit.
        try:
            with open(self._reserve, "wb") as fh:
                fh.write(b"\0" * RESERVE_BYTES)
        except OSError:
            pass
        now = self.clock.mono_ns()
        self._last_fsync_ns = now
        self._last_interval_ns = now
        self._syncer = Syncer(self.actor_ref.tell)

    def on_stop(self) -> None:
        # Normally closed by the supervisor; if it could not (it crashed), fsync and close here.
        self._close()

    def after_crash(self, report: m.ActorCrashed, first: bool) -> None:
        self.failed = self.failed or "actor_crash"
        super().after_crash(report, first)

    # -- messages ----------------------------------------------------------------------------
    def receive(self, msg: Any) -> Any:
        if isinstance(msg, m.AppendFrames):
            self._append_frames(msg.shard, msg.frames)
        elif isinstance(msg, m.AppendRunlog):
            self._append_fd(self._runlog_fd, msg.data, "runlog")
        elif isinstance(msg, m.AppendMetrics):
            self._append_metrics(msg.name, msg.data)
        elif isinstance(msg, m.Tick):
            self._on_tick(msg)
        elif isinstance(msg, m.FlushMetrics):
            self._report_interval(self.clock.mono_ns(), 0.0, wait=True)
            return {"frames_written": {str(s): w.frames_written for s, w in sorted(self.shard_writers.items())}}
        elif isinstance(msg, m.WriteFatalBundle):
            return self._write_fatal(msg)
        elif isinstance(msg, m.CloseWriter):
            return self._close()
        elif isinstance(msg, m.AttachWriterPeers):
            self.supervisor = msg.supervisor
            self.metrics = msg.metrics
        elif isinstance(msg, SyncFailed):
            self._fail(msg.error, "fsync")
        else:
            self.unknown(msg)
        return None

    def _writer_for(self, shard: int) -> ShardFileWriter:
        w = self.shard_writers.get(shard)
        if w is None:
            w = ShardFileWriter(self.run_dir / bundle.CAPTURE_DIR, shard)
            self.shard_writers[shard] = w
            self.last_frames[shard] = deque(maxlen=self.config.last_frames_per_shard)
        return w

    def _append_frames(self, shard: int, frames: list) -> None:
        n = len(frames)
        gauge = self.write_gauges.get(shard)
        if self.failed or self.closed:
            self.frames_lost_after_failure += n
            if gauge is not None:
                gauge.remove(n)
            return
        try:
            w = self._writer_for(shard)
            bytes_before = w.bytes_written
            first_seq = w.append_batch(frames)
        except OSError as exc:
            if gauge is not None:
                gauge.remove(n)
            self._fail(exc, "write")
            return
        now = self.clock.mono_ns()
        if gauge is not None:
            gauge.remove(n)
        st = self.interval.get(shard)
        if st is None:
            st = self.interval[shard] = {"frames": 0, "bytes": 0, "hist": {}, "max_us": 0}
        top = add_batch(st["hist"], now, list(map(_rx_mono_of, frames)))
        if top > st["max_us"]:
            st["max_us"] = top
        st["frames"] += n
        st["bytes"] += w.bytes_written - bytes_before
        ring = self.last_frames[shard]
        tail = frames[-ring.maxlen :] if ring.maxlen else frames
        start = first_seq + n - len(tail)
        ring.extend((start + i, f) for i, f in enumerate(tail))
        if now - self._last_fsync_ns >= self.config.writer_fsync_interval_seconds * 1e9:
            self._request_sync(now)

    def _request_sync(self, now: int) -> None:
        self._last_fsync_ns = now
        fds = [fd for w in self.shard_writers.values() for fd in w.fds()]
        fds += [fd for fd in [self._runlog_fd, *self._metrics_fds.values()] if fd is not None]
        if self._syncer is not None:
            self._syncer.request(fds)

    def _append_fd(self, fd: int | None, data: bytes, what: str) -> None:
        if fd is None or self.closed:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            self._fail(exc, f"{what} write")

    def _append_metrics(self, name: str, data: bytes) -> None:
        if self.failed:
            return
        fd = self._metrics_fds.get(name)
        if fd is None:
            try:
                fd = os.open(self.run_dir / bundle.METRICS_DIR / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as exc:
                self._fail(exc, "metrics open")
                return
            self._metrics_fds[name] = fd
        self._append_fd(fd, data, "metrics")

    def _fsync_all(self) -> None:
        self._last_fsync_ns = self.clock.mono_ns()
        try:
            for w in self.shard_writers.values():
                w.fsync()
            for fd in [self._runlog_fd, *self._metrics_fds.values()]:
                if fd is not None:
                    os.fsync(fd)
        except OSError as exc:
            self._fail(exc, "fsync")

    def _fail(self, exc: OSError, op: str) -> None:
        if self.failed:
            return
        if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
            reason = "disk_full"
        elif op == "fsync":
            reason = "fsync_error"
        else:
            reason = "write_error"
        self.failed = reason
        try:
            self._reserve.unlink()
        except OSError:
            pass
        if self.supervisor is not None:
            self.supervisor.tell(m.FatalCondition(reason, f"{op} failed: {exc.strerror or exc} (errno {exc.errno}); no retry after a failed {op}"))

    def _on_tick(self, tick: m.Tick) -> None:
        now = self.clock.mono_ns()
        if now - self._last_fsync_ns >= self.config.writer_fsync_interval_seconds * 1e9 and not self.failed:
            self._request_sync(now)
        # Cadence by the ticker's schedule, not by when the tick was handled: handling jitter
        # must not skip an interval.
        last = self._last_interval_tick_ns
        if last is None or tick.scheduled_mono_ns - last >= self.config.metrics_interval_seconds * 1e9 * 0.999:
            self._last_interval_tick_ns = tick.scheduled_mono_ns
            self._report_interval(now, max(0.0, (now - tick.scheduled_mono_ns) / 1e6))

    def _report_interval(self, now: int, loop_lag_ms: float, wait: bool = False) -> None:
        interval_s = (now - self._last_interval_ns) / 1e9
        self._last_interval_ns = now
        report, self.interval = self.interval, {}
        if self.metrics is None:
            return
        msg = m.WriterInterval(mono_ns=now, wall_ns=self.clock.wall_ns(), interval_s=round(interval_s, 6), shards=report, loop_lag_ms=loop_lag_ms)
        if wait:
            # The metrics actor's AppendMetrics replies are queued here before the caller's next message.
            self.metrics.ask(msg, timeout=10)
        else:
            self.metrics.tell(msg)

    def _write_fatal(self, msg: m.WriteFatalBundle) -> dict[str, Any]:
        written = []
        try:
            self._reserve.unlink()
        except OSError:
            pass
        try:
            bundle.write_json(self.run_dir / bundle.FATAL_JSON, msg.fatal)
            written.append(bundle.FATAL_JSON)
            bundle.write_json(self.run_dir / bundle.MISSING_TOKENS_JSON, {"count": len(msg.missing_tokens), "tokens": msg.missing_tokens})
            written.append(bundle.MISSING_TOKENS_JSON)
            for shard, ring in sorted(self.last_frames.items()):
                path = self.run_dir / bundle.last_frames_name(shard)
                write_frames_file(path, shard, [(seq, *f) for seq, f in ring])
                written.append(path.name)
        except OSError as exc:
            return {"written": written, "error": str(exc)}
        return {"written": written}

    def _close(self) -> dict[str, Any]:
        if self.closed:
            return {}
        if self._syncer is not None:
            self._syncer.stop()
            self._syncer = None
        if self.failed in (None, "actor_crash"):  # after a failed write or fsync, no fsync can be trusted
            self._fsync_all()
        summary = {s: {"frames": w.frames_written, "bytes": w.bytes_written} for s, w in self.shard_writers.items()}
        for w in self.shard_writers.values():
            w.close()
        for fd in [self._runlog_fd, *self._metrics_fds.values()]:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        try:
            self._reserve.unlink()
        except OSError:
            pass
        self.closed = True
        return {"shards": summary, "failed": self.failed, "frames_lost_after_failure": self.frames_lost_after_failure}
