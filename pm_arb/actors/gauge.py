"""Queue depth between a producer and a consumer, readable by both without a message.

`put` is only written by the producer thread and `taken` only by the consumer, so plain ints
suffice under the GIL. It lets a producer drop instead of queueing past capacity without a
round trip to the consumer (ADR/0002).
"""

from __future__ import annotations


class DepthGauge:
    __slots__ = ("put", "taken")

    def __init__(self) -> None:
        self.put = 0
        self.taken = 0

    def add(self, n: int) -> None:
        self.put += n

    def remove(self, n: int) -> None:
        self.taken += n

    @property
    def depth(self) -> int:
        return self.put - self.taken
