"""The two clocks of a run, injectable so tests freeze time instead of sleeping."""

from __future__ import annotations

import threading
import time


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
