"""When to PING, and when a connection is dead: protocol logic with no socket and no clock.

The reader thread feeds it what happened (frames, PINGs sent) with the time, and asks what is
due. Only market data resets the data-idle watchdog: Polymarket's silent stall keeps PONGs
coming while data stops, and a stalled server may keep sending `[]` or garbage too. What counts
as market data is `frame_parse.frame_shape`'s rule (a frame carrying market events), the same
rule that confirms a shard and counts coverage (ADR/0007).
"""

from __future__ import annotations

from pm_arb.store.frames_format import OPCODE_TEXT

PING = "ping"
PING_TIMEOUT = "ping_timeout"
DATA_IDLE = "data_idle"


class Keepalive:
    def __init__(self, now_ns: int, ping_interval_s: float, ping_timeout_s: float, data_idle_s: float) -> None:
        self.ping_interval_ns = int(ping_interval_s * 1e9)
        self.ping_timeout_ns = int(ping_timeout_s * 1e9)
        self.data_idle_ns = int(data_idle_s * 1e9)
        self.last_data_ns = now_ns
        self.next_ping_ns = now_ns + self.ping_interval_ns
        self.pong_deadline_ns: int | None = None
        self.market_frames = 0

    def on_frame(self, now_ns: int, market_events: int, payload: bytes, opcode: int = OPCODE_TEXT) -> None:
        """`market_events`: what `ReaderSink.frame` counted in the frame (0: not market data).

        Only the text PONG answers the text PING, as `frame_shape` flags it control text: a
        binary "PONG" (recorded as not JSON) or a protocol-level pong frame does not.
        """
        if market_events:
            self.last_data_ns = now_ns
            self.market_frames += 1
        elif opcode == OPCODE_TEXT and (payload == b"PONG" or payload.strip() == b"PONG"):
            self.pong_deadline_ns = None

    def due(self, now_ns: int) -> str | None:
        if self.pong_deadline_ns is not None and now_ns >= self.pong_deadline_ns:
            return PING_TIMEOUT
        if now_ns - self.last_data_ns >= self.data_idle_ns:
            return DATA_IDLE
        if now_ns >= self.next_ping_ns:
            return PING
        return None

    def ping_sent(self, now_ns: int) -> None:
        self.next_ping_ns = now_ns + self.ping_interval_ns
        if self.pong_deadline_ns is None:
            self.pong_deadline_ns = now_ns + self.ping_timeout_ns

    def next_deadline_ns(self) -> int:
        candidates = [self.next_ping_ns, self.last_data_ns + self.data_idle_ns]
        if self.pong_deadline_ns is not None:
            candidates.append(self.pong_deadline_ns)
        return min(candidates)


def backoff_seconds(attempt: int, initial: float, maximum: float) -> float:
    """Delay before reconnect attempt `attempt` (1-based): initial, doubling, capped."""
    if attempt <= 1:
        return min(initial, maximum)
    return min(maximum, initial * (2 ** (attempt - 1)))
