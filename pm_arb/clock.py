"""The two clocks of a run, injectable so tests freeze time instead of sleeping, and how a
wall stamp is shown."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from typing import Protocol


def wall_iso(ns: int | None) -> str | None:
    """A wall stamp (ns since the epoch, UTC) as ISO-8601 with microseconds and a Z."""
    if ns is None:
        return None
    # integer arithmetic: ns / 1e9 as a float rounds to ~0.2 us, so a shown time typed back
    # (capture-slice --from-wall) could land after the frame it was copied from
    seconds, rest = divmod(ns, 1_000_000_000)
    dt = datetime.fromtimestamp(seconds, tz=timezone.utc).replace(microsecond=rest // 1000)
    return dt.isoformat(timespec="microseconds").replace("+00:00", "Z")


class Clock(Protocol):
    """What every actor and reader is given instead of reading time itself: the run's one
    monotonic clock (receive order, latencies) and the wall clock (UTC stamps)."""

    def mono_ns(self) -> int: ...

    def wall_ns(self) -> int: ...


class SystemClock:
    # The builtins themselves, not wrappers: these are called twice per received frame.
    mono_ns = staticmethod(time.monotonic_ns)
    wall_ns = staticmethod(time.time_ns)


class ManualClock:
    """A clock that moves only when a test says so."""

    def __init__(self, mono_ns: int = 1_000_000_000, wall_ns: int = 1_767_000_000_000_000_000) -> None:
        self._mono = mono_ns
        self._wall = wall_ns
        self._lock = threading.Lock()

    def mono_ns(self) -> int:
        with self._lock:
            return self._mono

    def wall_ns(self) -> int:
        with self._lock:
            return self._wall

    def advance(self, seconds: float) -> None:
        with self._lock:
            step = round(seconds * 1e9)
            self._mono += step
            self._wall += step
