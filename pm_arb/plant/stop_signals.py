"""What a stop signal (SIGINT, SIGTERM) means, decided from when it arrives. No I/O.

The first signal asks for a clean stop. Tools send one stop as several signals microseconds
apart: GNU `timeout` signals the child and then its whole process group, `systemctl stop`
signals every process of the unit, a terminal's Ctrl-C reaches `uv run` and its child and uv
may forward it as well. Those must not count as "second Ctrl-C: exit now", which loses the
frames still queued. So any signal within FORCE_AFTER_SECONDS of the first one, of either kind,
is the same stop; only a later one means a person insists, and exits at once (ADR/0002).
"""

from __future__ import annotations

# Signals of one stop arrive within milliseconds (timeout: microseconds; uv forwarding: a few
# ms). A person who sees the stop not finishing and presses again takes longer than a second.
FORCE_AFTER_SECONDS = 1.0

STOP = "stop"  # the first signal: stop cleanly
SAME_STOP = "same_stop"  # another signal of the same stop: nothing more to do
EXIT_NOW = "exit_now"  # a later signal: exit at once, without a clean stop


class StopSignals:
    """Called from a signal handler: plain attribute updates only, no locks, no I/O."""

    def __init__(self, force_after_seconds: float = FORCE_AFTER_SECONDS) -> None:
        self.force_after_ns = int(force_after_seconds * 1e9)
        self.first: str | None = None  # the first signal's name, once one arrived
        self.first_mono_ns: int | None = None
        self.same_stop = 0  # further signals folded into the first stop

    def on_signal(self, name: str, now_mono_ns: int) -> str:
        if self.first_mono_ns is None:
            self.first, self.first_mono_ns = name, now_mono_ns
            return STOP
        if now_mono_ns - self.first_mono_ns < self.force_after_ns:
            self.same_stop += 1
            return SAME_STOP
        return EXIT_NOW
