"""The heartbeat of the plant: a thread that tells Tick to every actor at a fixed cadence.

Not an actor itself: it only turns wall time into messages, so actors never sleep and tests
replace it by sending Tick by hand under a frozen clock.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from pm_arb.actors.messages import Tick


class Ticker:
    def __init__(self, interval_s: float, targets: list[Any]) -> None:
        self.interval_ns = int(interval_s * 1e9)
        self.targets = targets
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ticker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        nxt = time.monotonic_ns() + self.interval_ns
        while not self._stop.wait(max(0.0, (nxt - time.monotonic_ns()) / 1e9)):
            tick = Tick(nxt)
            for t in self.targets:
                try:
                    t.tell(tick)
                except Exception:  # an actor that already stopped takes no more ticks
                    pass
            nxt += self.interval_ns
            now = time.monotonic_ns()
            if nxt < now:  # fell behind (suspend, overload): skip missed ticks instead of bursting
                nxt = now + self.interval_ns
