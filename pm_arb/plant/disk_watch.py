"""Rates over a sliding window and the data dir's free-space forecast. Pure: the caller samples
the clock, the run dir's size and the disk's free bytes, and prints or records what comes back."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

HOUR_S = 3600.0
DAY_S = 86_400.0


class RateWindow:
    """Counter rates over the last `window_s` seconds of samples.

    The status line used the change since the previous poll; shards report once a second and
    the line polls twice a second, so every other poll saw no change and showed `0 frames/s`.
    Here a sample that repeats the previous value is not kept (the counter had not been
    reported yet), so the rate is measured between reports; a counter that stays still for a
    whole window has rate 0.
    """

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()
        self._now = 0.0

    def add(self, t_s: float, value: float) -> None:
        self._now = t_s
        if self._samples and value == self._samples[-1][1]:
            return
        self._samples.append((t_s, value))
        # keep one sample at or before the window's start so the span covers the whole window
        while len(self._samples) > 2 and self._samples[1][0] <= t_s - self.window_s:
            self._samples.popleft()

    def span_s(self) -> float:
        """Seconds the kept samples cover."""
        return self._samples[-1][0] - self._samples[0][0] if len(self._samples) > 1 else 0.0

    def rate(self) -> float | None:
        """Per second over the window; None until two samples span some time."""
        if len(self._samples) < 2:
            return None
        (t0, v0), (t1, v1) = self._samples[0], self._samples[-1]
        if self._now - t1 >= self.window_s:
            return 0.0
        return (v1 - v0) / (t1 - t0) if t1 > t0 else None


def projection(bytes_per_s: float) -> dict[str, float]:
    """Size per hour and per day at a rate."""
    return {"bytes_per_s": bytes_per_s, "bytes_per_hour": bytes_per_s * HOUR_S, "bytes_per_day": bytes_per_s * DAY_S}


@dataclass(frozen=True)
class DiskLow:
    free_bytes: int
    bytes_per_s: float
    hours_left: float
    threshold_hours: float


class DiskWatch:
    """Says once when the free space will last less than `threshold_hours` at the current rate,
    and again only after it has recovered above it (a disk freed, the rate fallen). 0 disables."""

    def __init__(self, threshold_hours: float) -> None:
        self.threshold_hours = threshold_hours
        self._warned = False

    def check(self, free_bytes: int, bytes_per_s: float | None) -> DiskLow | None:
        if self.threshold_hours <= 0 or not bytes_per_s or bytes_per_s <= 0:
            return None
        hours_left = free_bytes / bytes_per_s / HOUR_S
        if hours_left >= self.threshold_hours:
            self._warned = False
            return None
        if self._warned:
            return None
        self._warned = True
        return DiskLow(free_bytes, bytes_per_s, hours_left, self.threshold_hours)
