"""The capture client against WebSocket servers that are not our simulator.

A hand-written RFC 6455 server (tests/raw_ws_server.py) on loopback misbehaves in the ways a
real peer, a proxy or a broken deployment can: fragments, frames cut across TCP segments,
control frames, resets, bad handshakes, stalls, unasked compression, huge messages. The
reader must store every data message byte for byte, record every disconnect and reconnect as
an event, and stop at once whatever the peer is doing.
"""

from __future__ import annotations

import contextlib
import socket
import time
import zlib

import pytest

from pm_arb.actors.gauge import DepthGauge
from pm_arb.actors.messages import AppendFrames, ReaderEvent, ReaderFinished
from pm_arb.capture.reader_sink import ReaderSink
from pm_arb.capture.ws_reader import WsReader
from pm_arb.clock import SystemClock
from pm_arb.config import Config
from pm_arb.events import types as ev
from pm_arb.store.frames_format import FLAG_CONTROL, FLAG_NOT_JSON, MAX_PAYLOAD

from .raw_ws_server import Peer, RawWsServer, close_frame, frame, text

BOOK = b'{"event_type":"book","asset_id":"t1","market":"0xm","bids":[],"asks":[],"timestamp":"1","hash":"h"}'


class Writer:
    def __init__(self) -> None:
        self.batches: list[AppendFrames] = []

    def tell(self, msg) -> None:
        self.batches.append(msg)

    def frames(self) -> list[tuple[int, int, bytes]]:
        """(flags, opcode, payload) of every frame handed to the writer, in order."""
        return [(f[2], f[3], bytes(f[4])) for b in self.batches for f in b.frames]


class Run:
    def __init__(self, reader: WsReader, got: list, writer: Writer) -> None:
        self.reader, self.got, self.writer = reader, got, writer

    def events(self, kind=None) -> list:
        out = [m.event for m in list(self.got) if isinstance(m, ReaderEvent)]
        return [e for e in out if kind is None or isinstance(e, kind)]

    def wait(self, cond, seconds: float = 10.0) -> None:
        deadline = time.monotonic() + seconds
        while not cond():
            assert time.monotonic() < deadline, f"condition not reached; events: {self.events()}"
            time.sleep(0.01)

    def payloads(self) -> list[bytes]:
        return [p for _f, _o, p in self.writer.frames()]

    def stop(self, seconds: float = 5.0) -> float:
        """Stop the reader; returns how long the stop took (the test asserts it ended)."""
        t0 = time.monotonic()
        self.reader.request_stop()
        self.reader.join(seconds)
        assert not self.reader._thread.is_alive(), f"the reader did not stop within {seconds} s; events: {self.events()}"
        assert isinstance(self.got[-1], ReaderFinished)
        return time.monotonic() - t0


@contextlib.contextmanager
def reading(url: str, **cfg):
    """A WsReader on one token against `url`, with short timeouts unless `cfg` says otherwise."""
    settings = dict(
        ws_ping_interval_seconds=600, ws_ping_timeout_seconds=600, ws_data_idle_reconnect_seconds=600,
        ws_reconnect_backoff_initial_seconds=0.05, ws_reconnect_backoff_max_seconds=0.1, ws_connect_timeout_seconds=5,
    )
    settings.update(cfg)
    got: list = []
    writer = Writer()
    clock = SystemClock()
    sink = ReaderSink(0, got.append, writer, clock, DepthGauge(), 100_000, DepthGauge(), 100_000, 100, 1.0, 1)
    reader = WsReader(0, ("t1",), sink, got.append, clock, Config(clob_ws_url=url, **settings))
    reader.start()
    run = Run(reader, got, writer)
    try:
        yield run
    finally:
        reader.request_stop()
        reader.join(10)


def subscribed(peer: Peer) -> bytes:
    peer.handshake()
    return peer.read_text()


def hold(peer: Peer) -> None:
    """Keep the connection open until the client leaves; answer its close frame, so the
    client's close handshake does not wait out its timeout."""
    try:
        while peer.read_frame()[0] != 8:
            pass
        peer.send(close_frame(1000))
    except (ValueError, StopIteration):  # not frames (a handshake test): wait for the end
        while peer.sock.recv(65536):
            pass


def test_fragments_split_segments_control_frames_and_odd_messages_are_stored_exactly():
    big = b'[' + b",".join([BOOK] * 60_000) + b']'  # ~6 MB, one message
    messages = [
        (text(BOOK), (0, 1, BOOK)),
        # one text message in three fragments, a PING with a 125-byte payload and an unsolicited
        # PONG between them (control frames may interleave fragments, RFC 6455 5.4)
        (frame(0x01, BOOK[:10]) + frame(0x89, b"p" * 125) + frame(0x00, BOOK[10:50]) + frame(0x8A, b"unasked")
         + frame(0x80, BOOK[50:]), (0, 1, BOOK)),
        (frame(0x82, b"\x00\xffbinary"), (FLAG_NOT_JSON, 2, b"\x00\xffbinary")),
        (text(b""), (FLAG_NOT_JSON, 1, b"")),
        (frame(0x01, b"") + frame(0x80, b""), (FLAG_NOT_JSON, 1, b"")),  # an empty message in two empty fragments
        (text(b"PONG"), (FLAG_CONTROL, 1, b"PONG")),
        (text(b"\xff\xfe not utf-8"), (FLAG_NOT_JSON, 1, b"\xff\xfe not utf-8")),
        (text(big), (0, 1, big)),
        (frame(0x02, b"bin") + frame(0x80, b"ary"), (FLAG_NOT_JSON, 2, b"binary")),
    ]
    pongs: list[bytes] = []

    def script(peer: Peer, n: int) -> None:
        subscribed(peer)
        if n:
            return hold(peer)
        peer.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for k, (wire, _) in enumerate(messages):
            if k == 1:  # this message one byte per TCP segment
                for i in range(len(wire)):
                    peer.send(wire[i : i + 1])
                    time.sleep(0.0005)
            else:
                peer.send(wire)
        peer.send(close_frame(4000, b"bye now"))
        while True:
            opcode, data = peer.read_frame()
            if opcode == 0xA:
                pongs.append(data)
            if opcode == 8:
                return hold(peer)

    with RawWsServer(script) as server, reading(server.url) as run:
        run.wait(lambda: run.events(ev.ShardDisconnected))
        run.stop()
    assert run.writer.frames() == [want for _, want in messages]
    first = run.events(ev.ShardDisconnected)[0]
    assert (first.cause, first.planned) == ("server_close", False)
    assert "4000" in first.detail and "bye now" in first.detail
    assert pongs == [b"p" * 125]  # the PING's payload echoed in a protocol PONG
    assert not server.errors


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\n\r\nforbidden",
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/html\r\n\r\n<h1>oops</h1>",
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 301 Moved Permanently\r\nLocation: /ws/market\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: d3Jvbmc=\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x00\x01\x02garbage without an end of headers",
        b"HTTP/1.1 abc What\r\n\r\n",
        b"",  # closes right after reading the request
    ],
    ids=["403", "404", "500", "429", "301-loop", "200", "bad-accept", "ssh", "binary", "bad-status", "eof"],
)
def test_a_refused_or_garbled_handshake_is_a_connect_failure_with_backoff(answer):
    def script(peer: Peer, n: int) -> None:
        peer.read_request()
        peer.send(answer)
        peer.sock.shutdown(socket.SHUT_WR)
        hold(peer)

    with RawWsServer(script) as server, reading(server.url) as run:
        run.wait(lambda: len(run.events(ev.ShardReconnect)) >= 3)
        run.stop()
    fails = run.events(ev.ShardDisconnected)
    assert fails and all(f.cause == "connect_failed" and not f.planned for f in fails[:3]), fails
    assert all("\n" not in f.detail and len(f.detail) <= 300 for f in fails)
    assert [r.backoff_seconds for r in run.events(ev.ShardReconnect)[:3]] == [0.05, 0.1, 0.1]
    assert not run.events(ev.ShardConnected) and not run.writer.frames()


@pytest.mark.parametrize("ending", ["close-no-code", "close-bad-code", "reset-mid-frame", "fin-mid-frame", "close-1-byte"])
def test_a_connection_ending_any_way_is_one_disconnect_then_a_reconnect(ending):
    def script(peer: Peer, n: int) -> None:
        subscribed(peer)
        if n:
            return hold(peer)
        peer.send(text(BOOK))
        if ending == "close-no-code":
            peer.send(close_frame())
        elif ending == "close-bad-code":
            peer.send(close_frame(999, b"not a code"))
        elif ending == "close-1-byte":
            peer.send(frame(0x88, b"\x03"))
        elif ending == "reset-mid-frame":
            peer.send(text(BOOK)[:20])
            time.sleep(0.05)
            return peer.reset()
        else:
            peer.send(text(BOOK)[:20])
            time.sleep(0.05)
            peer.sock.shutdown(socket.SHUT_WR)
        hold(peer)

    with RawWsServer(script) as server, reading(server.url) as run:
        run.wait(lambda: len(run.events(ev.ShardConnected)) >= 2)
        run.stop()
    first = run.events(ev.ShardDisconnected)[0]
    assert first.cause in ("server_close", "error") and not first.planned, first
    assert run.payloads()[:1] == [BOOK]
    assert BOOK[:10] not in b"".join(p for p in run.payloads() if p != BOOK)  # a cut message is not a frame
    assert run.events(ev.ShardReconnect)[0].backoff_seconds == 0.05


def test_a_server_that_accepts_then_never_sends_is_caught_by_the_data_idle_watchdog():
    def script(peer: Peer, n: int) -> None:
        subscribed(peer)
        while True:  # answers text PINGs, never sends data: the silent stall
            if peer.read_text() == b"PING":
                peer.send(text(b"PONG"))

    with RawWsServer(script) as server, reading(server.url, ws_ping_interval_seconds=0.05, ws_ping_timeout_seconds=5,
                                                ws_data_idle_reconnect_seconds=0.4) as run:
        run.wait(lambda: len(run.events(ev.ShardDisconnected)) >= 2)
        run.stop()
    causes = [d.cause for d in run.events(ev.ShardDisconnected)]
    assert causes[:2] == ["data_idle", "data_idle"]
    assert {p for p in run.payloads()} == {b"PONG"}
    assert all(f == FLAG_CONTROL for f, _o, _p in run.writer.frames())


def test_a_server_answering_ping_with_a_protocol_pong_or_a_binary_pong_is_dead_by_the_ping_timeout():
    # Polymarket answers the text PING with the text PONG; a protocol-level PONG frame, or
    # "PONG" in a binary frame (which is recorded as not JSON), is not that answer.
    def script(peer: Peer, n: int) -> None:
        subscribed(peer)
        peer.send(text(BOOK))
        while True:
            if peer.read_text() == b"PING":
                peer.send(frame(0x8A, b"PONG") if n % 2 == 0 else frame(0x82, b"PONG"))

    with RawWsServer(script) as server, reading(server.url, ws_ping_interval_seconds=0.05, ws_ping_timeout_seconds=0.3) as run:
        run.wait(lambda: len(run.events(ev.ShardDisconnected)) >= 2)
        run.stop()
    assert [d.cause for d in run.events(ev.ShardDisconnected)][:2] == ["ping_timeout", "ping_timeout"]


def test_a_message_trickled_forever_is_caught_by_the_data_idle_watchdog():
    # A frame header announcing 1 MB, then one byte every 20 ms: the message never completes,
    # yet bytes keep arriving, so no receive ever times out. Liveness is judged by market data.
    def script(peer: Peer, n: int) -> None:
        subscribed(peer)
        if n:
            peer.send(text(BOOK))
            return hold(peer)
        peer.send(bytes([0x81, 127]) + (1 << 20).to_bytes(8, "big"))
        while True:
            peer.send(b" ")
            time.sleep(0.02)

    with RawWsServer(script) as server, reading(server.url, ws_data_idle_reconnect_seconds=0.5, ws_ping_interval_seconds=0.2,
                                                ws_ping_timeout_seconds=0.3) as run:
        run.wait(lambda: run.events(ev.ShardDisconnected), seconds=10)
        run.wait(lambda: run.payloads() == [BOOK])
        run.stop()
    assert run.events(ev.ShardDisconnected)[0].cause in ("data_idle", "ping_timeout")


@pytest.mark.parametrize("phase", ["tcp-accepted", "request-read", "headers-trickled"])
def test_stop_is_prompt_while_the_handshake_is_never_answered(phase):
    def script(peer: Peer, n: int) -> None:
        if phase != "tcp-accepted":
            peer.read_request()
        if phase == "headers-trickled":
            for b in b"HTTP/1.1 101 Switching Protocols\r\nX-Slow: " + b"a" * 10_000:
                peer.send(bytes([b]))
                time.sleep(0.05)
        hold(peer)

    with RawWsServer(script) as server, reading(server.url, ws_connect_timeout_seconds=60) as run:
        run.wait(lambda: server.accepted == 1)
        time.sleep(0.2)
        took = run.stop(seconds=10)
    assert took < 5
    assert [d.cause for d in run.events(ev.ShardDisconnected)] in ([], ["stop"])


def test_a_handshake_trickled_past_the_connect_timeout_is_a_connect_failure():
    def script(peer: Peer, n: int) -> None:
        peer.read_request()
        for b in b"HTTP/1.1 101 Switching Protocols\r\nX-Slow: " + b"a" * 10_000:
            peer.send(bytes([b]))
            time.sleep(0.05)

    with RawWsServer(script) as server, reading(server.url, ws_connect_timeout_seconds=0.5) as run:
        run.wait(lambda: run.events(ev.ShardDisconnected))
        run.stop()
    assert run.events(ev.ShardDisconnected)[0].cause == "connect_failed"


def test_a_message_over_the_frame_limit_is_refused_without_buffering_it():
    def script(peer: Peer, n: int) -> None:
        subscribed(peer)
        if n:
            peer.send(text(BOOK))
            return hold(peer)
        peer.send(bytes([0x81, 127]) + (MAX_PAYLOAD + 1).to_bytes(8, "big"))
        chunk = b" " * 65536
        for _ in range((MAX_PAYLOAD + 1) // len(chunk) + 1):
            peer.send(chunk)
        hold(peer)

    with RawWsServer(script) as server, reading(server.url) as run:
        run.wait(lambda: run.payloads() == [BOOK], seconds=20)
        run.stop()
    first = run.events(ev.ShardDisconnected)[0]
    assert first.cause == "error" and "64 MiB" in first.detail, first


def test_a_message_in_many_small_fragments_is_stored_whole():
    body = b"[" + b",".join([BOOK] * 60_000) + b"]"  # 6 MB in 300,000 fragments of 20 bytes
    parts = [body[i : i + 20] for i in range(0, len(body), 20)]
    wire = frame(0x01, parts[0]) + b"".join(frame(0x00, p) for p in parts[1:-1]) + frame(0x80, parts[-1])

    def script(peer: Peer, n: int) -> None:
        subscribed(peer)
        peer.send(wire)
        hold(peer)

    with RawWsServer(script) as server, reading(server.url) as run:
        # ~2 s here; websocket-client alone copied the whole message per fragment (~30 s)
        run.wait(lambda: run.payloads(), seconds=20)
        run.stop()
    assert run.payloads() == [body]


def test_a_server_that_compresses_frames_nobody_negotiated_is_an_error_and_a_reconnect():
    def script(peer: Peer, n: int) -> None:
        peer.handshake(b"Sec-WebSocket-Extensions: permessage-deflate\r\n")
        peer.read_text()
        c = zlib.compressobj(wbits=-15)
        peer.send(frame(0xC1, c.compress(BOOK) + c.flush(zlib.Z_SYNC_FLUSH)[:-4]))
        hold(peer)

    with RawWsServer(script) as server, reading(server.url) as run:
        run.wait(lambda: len(run.events(ev.ShardDisconnected)) >= 2 or server.errors)
        run.stop()
    assert not server.errors
    fails = run.events(ev.ShardDisconnected)
    assert all(not f.planned and f.cause in ("error", "connect_failed") for f in fails), fails


@pytest.mark.parametrize("stamp, want", [("1767000003000", 1767000003000 * 1000), ("\u0661\u0662", 12_000), ("\u00b2", 5), ("\u00b2\u00b3", 5)])
def test_a_peer_timestamp_of_odd_digits_is_read_or_replaced_by_the_receive_time(stamp, want):
    # The export's reference decoder reads what a peer sent; "²" passes str.isdigit() but not int().
    from pm_arb.wire.normalize import exchange_timestamp_us

    assert exchange_timestamp_us({"timestamp": stamp}, 5) == want


def test_a_capture_against_an_odd_peer_records_every_message_and_every_reconnect_then_stops_cleanly(data_dir):
    """`pm_arb capture` as a subprocess: Gamma from the simulator, the WebSocket from the raw
    server. Connection 1 sends odd but valid messages then trickles a message for ever; 2 closes
    with a code; 3 sends a frame over the limit; 4 holds, silent. Every data message is in the files as
    sent, every disconnect is in the runlog with its cause and a reconnect, and SIGINT ends it."""
    from pm_arb.sim.exchange import SimExchange

    from .conftest import read_runlog_dicts, records_by_shard, start_cli, stop_with, wait_for_line, wait_for_runlog

    odd = [frame(0x01, BOOK[:7]) + frame(0x89, b"x" * 125) + frame(0x80, BOOK[7:]), frame(0x82, b"\x00bin"), text(b"")]
    sent: list[bytes] = []

    def script(peer: Peer, n: int) -> None:
        subscribed(peer)
        if n >= 3:  # sends nothing, so what the capture holds at the stop is known
            return hold(peer)
        peer.send(text(BOOK))
        sent.append(BOOK)
        if n == 0:
            for wire, payload in zip(odd, [BOOK, b"\x00bin", b""]):
                peer.send(wire)
                sent.append(payload)
            peer.send(bytes([0x81, 127]) + (1 << 20).to_bytes(8, "big"))
            while True:
                peer.send(b" ")
                time.sleep(0.02)
        elif n == 1:
            peer.send(close_frame(4000, b"maintenance"))
        elif n == 2:
            peer.send(bytes([0x81, 127]) + (MAX_PAYLOAD + 1).to_bytes(8, "big") + b" " * 1000)
        hold(peer)

    with SimExchange(markets=2, rate=0) as sim, RawWsServer(script) as server:
        proc = start_cli(
            "capture", "--gamma-base-url", sim.gamma_url, "--clob-ws-url", server.url, "--run-id", "odd-peer",
            "--data-dir", str(data_dir), "--ws-shards", "1", "--no-capture-universe-refresh-enable",
            "--ws-reconnect-backoff-initial-seconds", "0.05", "--ws-reconnect-backoff-max-seconds", "0.2",
            "--ws-data-idle-reconnect-seconds", "1", "--ws-ping-interval-seconds", "0.3", "--ws-ping-timeout-seconds", "5",
            "--capture-confirm-timeout-seconds", "10",
        )
        run_dir = data_dir / "runs" / "odd-peer"
        assert wait_for_line(proc) == str(run_dir)
        wait_for_runlog(run_dir, lambda r: r["type"] == "shard_connected" and r["attempt"] == 4, timeout=30)
        code, _, err = stop_with(proc, timeout=30)
    assert code == 0 and "Traceback" not in err, err
    runlog = read_runlog_dicts(run_dir)
    causes = [r["cause"] for r in runlog if r["type"] == "shard_disconnected"]
    assert causes[:3] == ["data_idle", "server_close", "error"] and causes[-1] == "stop", causes
    details = [r["detail"] for r in runlog if r["type"] == "shard_disconnected"]
    assert "4000" in details[1] and "maintenance" in details[1] and "64 MiB" in details[2]
    assert [r["cause"] for r in runlog if r["type"] == "shard_reconnect"][:3] == causes[:3]
    assert runlog[-1]["type"] == "run_stop"
    stored = [(r.opcode, r.payload) for r in records_by_shard(run_dir)[0]]
    assert [p for _o, p in stored] == sent
    assert [o for o, _p in stored][2] == 2  # the binary frame kept its opcode


def test_frames_sent_in_the_same_segment_as_the_handshake_answer_are_kept():
    def script(peer: Peer, n: int) -> None:
        peer.read_request()
        peer.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Accept: " + peer.accept_key() + b"\r\n\r\n" + text(BOOK) + text(b"[]"))
        hold(peer)

    with RawWsServer(script) as server, reading(server.url) as run:
        run.wait(lambda: len(run.payloads()) >= 2)
        run.stop()
    assert run.payloads()[:2] == [BOOK, b"[]"]


def test_a_trade_stamped_with_odd_digits_exports_with_the_receive_time(tmp_path, data_dir):
    """A peer's `"timestamp":"²"` (a digit to str.isdigit, not to int) went to the export's
    reference decoder and ended capture-export with an error; now the row takes the receive time."""
    import shutil

    from .conftest import REPO, export, run_cli

    fixtures = tmp_path / "fx"
    shutil.copytree(REPO / "fixtures" / "default", fixtures)
    lines = (fixtures / "frames.ndjson").read_bytes().splitlines()
    k = next(i for i, ln in enumerate(lines) if b"last_trade_price" in ln)
    lines[k] = lines[k].replace(b'\\"timestamp\\":\\"1767000000194\\"', b'\\"timestamp\\":\\"\\u00b2\\"')
    assert b"u00b2" in lines[k]
    (fixtures / "frames.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    proc = run_cli("capture", "--offline", "--fixtures", str(fixtures), "--offline-speed", "0", "--run-id", "odd-ts", "--data-dir", str(data_dir))
    assert proc.returncode == 0, proc.stderr
    summary = export(data_dir / "runs" / "odd-ts", tmp_path / "out", "--tables", "trades")
    assert summary["tables"]
