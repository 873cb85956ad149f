"""The WebSocket reader sleeps until something is due, yet stops and PINGs on time (ADR/0006).

Real loopback sockets against the in-process simulator. MAX_RECV_TIMEOUT_S is raised to a
minute in the socket tests, so a reader that relied on a short timeout to notice a stop or a
PING deadline would hang instead of passing.
"""

from __future__ import annotations

import contextlib
import time

import pytest

from pm_arb.actors.gauge import DepthGauge
from pm_arb.actors.messages import ReaderEvent, ReaderFinished
from pm_arb.capture import ws_reader
from pm_arb.capture.reader_sink import ReaderSink
from pm_arb.capture.ws_reader import MAX_RECV_TIMEOUT_S, MIN_RECV_TIMEOUT_S, WsReader, recv_timeout_s
from pm_arb.clock import SystemClock
from pm_arb.config import Config
from pm_arb.events import types as ev
from pm_arb.sim.exchange import SimExchange
from pm_arb.sim.market_data import make_gamma_rows
from pm_arb.universe.select import select_markets

from .raw_ws_server import frame as _ws_frame


class Collector:
    def __init__(self) -> None:
        self.got: list = []

    def tell(self, msg) -> None:
        self.got.append(msg)


@pytest.mark.parametrize("remaining", [-1.0, 0.0, 0.0001, 0.0007, 0.003, 0.1, 0.26, 0.5, 0.99, 1.0, 7.5, 3600.0])
def test_recv_timeout_never_sleeps_past_the_deadline_nor_below_half_of_it(remaining):
    t = recv_timeout_s(remaining)
    assert MIN_RECV_TIMEOUT_S <= t <= MAX_RECV_TIMEOUT_S
    if MIN_RECV_TIMEOUT_S <= remaining:
        assert t <= remaining
        assert t >= min(remaining, MAX_RECV_TIMEOUT_S) / 2


def test_recv_timeout_takes_few_distinct_values_while_a_deadline_approaches():
    # A syscall (settimeout) happens only when the value changes: stepping toward a deadline in
    # 0.1 ms reads must not change it on every read.
    values = {recv_timeout_s(r / 10_000) for r in range(20_000, 0, -1)}
    assert len(values) <= 13


@contextlib.contextmanager
def idle_reader(monkeypatch, **cfg):
    """A started reader on an idle simulator (no market data), receive timeouts of a minute."""
    monkeypatch.setattr(ws_reader, "MAX_RECV_TIMEOUT_S", 60.0)
    got: list = []
    with SimExchange(markets=4, rate=0) as sim:
        market = select_markets(make_gamma_rows(4), 100)[0][0]
        config = Config(clob_ws_url=sim.ws_url, ws_data_idle_reconnect_seconds=600, **cfg)
        sink = ReaderSink(0, got.append, Collector(), SystemClock(), DepthGauge(), 1000, DepthGauge(), 1000, 100, 1.0, 1)
        reader = WsReader(0, (market.yes_token, market.no_token), sink, got.append, SystemClock(), config)
        reader.start()
        try:
            yield sim, reader, got
        finally:
            reader.request_stop()
            reader.join(10)


def _wait(cond, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_stop_wakes_an_idle_reader_blocked_in_receive_and_closes_the_connection(monkeypatch):
    with idle_reader(monkeypatch, ws_ping_interval_seconds=600, ws_ping_timeout_seconds=600) as (sim, reader, got):
        _wait(lambda: any(isinstance(m, ReaderEvent) and isinstance(m.event, ev.ShardConnected) for m in got))
        _wait(lambda: sim.live_connections() == 1)
        time.sleep(0.05)  # let the reader block in its receive
        reader.request_stop()
        reader.join(10)
        assert not reader._thread.is_alive(), "the stop did not wake the receive"
        _wait(lambda: sim.live_connections() == 0)
    disconnects = [m.event for m in got if isinstance(m, ReaderEvent) and isinstance(m.event, ev.ShardDisconnected)]
    assert [(d.cause, d.planned) for d in disconnects] == [("stop", True)]
    assert isinstance(got[-1], ReaderFinished) and got[-1].reason == "stop"


def test_an_idle_reader_still_pings_on_its_keepalive_deadline(monkeypatch):
    with idle_reader(monkeypatch, ws_ping_interval_seconds=0.05, ws_ping_timeout_seconds=5) as (sim, _reader, got):
        _wait(lambda: sum(1 for c in sim.connections.values() for r in c.received if r.strip() == b"PING") >= 3)
    assert not any(isinstance(m, ReaderEvent) and isinstance(m.event, ev.ShardDisconnected) and not m.event.planned for m in got)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 100, 4096, 256 * 1024])
def test_next_frame_returns_what_websocket_client_returns_whatever_the_read_boundaries(monkeypatch, chunk):
    import socket
    import threading

    monkeypatch.setattr(ws_reader, "RECV_CHUNK", chunk)
    payloads = [b"", b"{}", b"x" * 125, b"y" * 126, b"z" * 65535, b"w" * 65536, b"v" * 300_000, b"\xff\xfe binary"]
    wire = b""
    expected = []
    for i, p in enumerate(payloads):
        opcode = 2 if p.startswith(b"\xff") else 1
        wire += _ws_frame(0x80 | opcode, p)
        expected.append((opcode, p))
        if i == 2:  # a PING (answered inside, not returned) and a message in two fragments
            wire += _ws_frame(0x89, b"hb") + _ws_frame(0x01, b"[{") + _ws_frame(0x80, b"}]")
            expected.append((1, b"[{}]"))
    wire += _ws_frame(0x88, (1000).to_bytes(2, "big") + b"bye")
    expected.append((8, (1000).to_bytes(2, "big") + b"bye"))
    a, b = socket.socketpair()
    sender = threading.Thread(target=b.sendall, args=(wire,))
    sender.start()
    ws = ws_reader.BufferedWebSocket(skip_utf8_validation=True)
    ws.sock, ws.connected = a, True
    slow_path = []
    recv_data = ws.recv_data
    monkeypatch.setattr(ws, "recv_data", lambda: slow_path.append(1) or recv_data())
    a.settimeout(10)
    got = [ws.next_frame() for _ in expected]
    sender.join()
    assert [(op, bytes(p)) for op, p in got] == expected
    if chunk == 256 * 1024:  # only the fragmented message, the frame cut by the read and the close
        assert len(slow_path) == 3
    b.settimeout(10)
    assert b.recv(64)[0] == 0x8A  # the PING was answered with a PONG
    a.close()
    b.close()
