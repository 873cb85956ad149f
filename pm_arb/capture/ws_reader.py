"""A shard's WebSocket reader thread: connect, subscribe, receive, keep alive, reconnect.

Socket I/O only; what is due (PING, dead connection) comes from `Keepalive`, and every fact is
reported to the shard actor as a ReaderEvent. The receive blocks until the next thing due (a
PING, a dead-connection deadline, a token change, at most 1 s away); a stop request shuts the
socket's read side so the receive returns at once. An idle connection wakes about once a second
instead of ten times (ADR/0006).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import orjson
import websocket
from websocket._abnf import continuous_frame, frame_buffer

from pm_arb.actors.messages import ReaderEvent, ReaderFinished
from pm_arb.capture.keepalive import DATA_IDLE, PING, PING_TIMEOUT, Keepalive, backoff_seconds
from pm_arb.capture.reader_sink import ReaderSink
from pm_arb.clock import Clock
from pm_arb.config import Config
from pm_arb.events import types as ev
from pm_arb.store.frames_format import MAX_PAYLOAD

MAX_RECV_TIMEOUT_S = 1.0  # bounds how late a token change (set from another thread) is noticed
MIN_RECV_TIMEOUT_S = 0.0005
RCVBUF_BYTES = 4 * 1024 * 1024
RECV_CHUNK = 256 * 1024
CLOSE_WAIT_NS = 1_000_000_000  # the close handshake's whole budget
CONNECT_WATCH_S = 0.05  # how often a connect in progress looks at its deadline and the stop


class ConnectTimeout(websocket.WebSocketTimeoutException):
    """The connect, handshake and subscription did not finish within the connect timeout."""


def _over_limit(length: int) -> websocket.WebSocketPayloadException:
    return websocket.WebSocketPayloadException(
        f"a message of {length} bytes or more is over the {MAX_PAYLOAD >> 20} MiB a frame can hold; not buffered"
    )


class _LimitedFrames(frame_buffer):
    """websocket-client's frame parser, refusing a frame longer than a record can hold as soon
    as its length field is read, before buffering its payload (a peer could announce 2^63)."""

    def recv_length(self) -> None:
        super().recv_length()
        if self.length is not None and self.length > MAX_PAYLOAD:
            raise _over_limit(self.length)


class _LimitedMessage(continuous_frame):
    """websocket-client's fragment assembly, bounded like one frame, and linear: fragments are
    appended to a bytearray, where `bytes +=` copied the whole message for every fragment."""

    def add(self, frame) -> None:
        data = self.cont_data
        if data:
            if len(data[1]) + len(frame.data) > MAX_PAYLOAD:
                raise _over_limit(len(data[1]) + len(frame.data))
            if not isinstance(data[1], bytearray):
                data[1] = bytearray(data[1])
        super().add(frame)

    def extract(self, frame) -> tuple:
        opcode, frame = super().extract(frame)
        if isinstance(frame.data, bytearray):
            frame.data = bytes(frame.data)
        return opcode, frame


class BufferedWebSocket(websocket.WebSocket):
    """websocket-client's WebSocket with a read buffer under its frame parser.

    The parser asks for exactly what the next field needs (2 header bytes, the length, the
    payload): three recv() calls per frame, each releasing the GIL to a dozen waiting threads
    (strace of a 8-shard capture: ~13 futex calls per recvfrom). Reading up to 256 KiB at a time
    serves most frames from memory. The read goes into one reused buffer: `sock.recv(256 KiB)`
    allocated a fresh 256 KiB object per read, above malloc's mmap threshold, so every read also
    cost an mmap, an mremap and later an munmap (strace at 1k frames/s: one of each per
    recvfrom, ADR/0006). The protocol handling stays websocket-client's.
    """

    _rbuf = b""
    _rpos = 0
    _chunk: bytearray | None = None
    # When set (monotonic ns, `mono` the clock), a socket read that would start at or after it
    # raises the receive timeout instead: bytes trickling into an unfinished message never let a
    # socket timeout expire, and the reader's housekeeping must still run.
    read_deadline_ns: int | None = None
    mono: Callable[[], int] = staticmethod(time.monotonic_ns)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        skip = kwargs.get("skip_utf8_validation", False)
        self.frame_buffer = _LimitedFrames(self._recv, skip)
        self.cont_frame = _LimitedMessage(kwargs.get("fire_cont_frame", False), skip)

    def drained(self) -> bool:
        """True when every byte the last socket read returned has been parsed."""
        return self._rpos >= len(self._rbuf)

    def _recv(self, bufsize: int) -> bytes:
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf):
            buf = self._read_chunk()
            pos = 0
        out = buf[pos : pos + bufsize]
        self._rbuf, self._rpos = buf, pos + len(out)
        return out

    def next_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next data frame, as `recv_data()` returns it.

        The common frame, a whole unmasked, unfragmented text or binary frame already in the
        buffer, is sliced out here (~1 us); everything else (control frames, fragments, a frame
        cut by the read, a header parse a timeout interrupted) goes through websocket-client's
        own parser, which reads on from the same buffer. Its ABNF objects, locks and validation
        cost ~6 us per frame, 20-30 % of a core flat out (ADR/0006).
        """
        if self._rpos >= len(self._rbuf) and self._parser_idle():
            self._rbuf, self._rpos = self._read_chunk(), 0  # raises on a timeout, as recv_data does
        buf, pos = self._rbuf, self._rpos
        end = len(buf)
        if end - pos >= 2 and (buf[pos] == 0x81 or buf[pos] == 0x82) and self._parser_idle():
            n = buf[pos + 1]  # the mask bit (servers never mask) makes this > 127: not taken below
            start = pos + 2
            if n == 126:
                n = int.from_bytes(buf[start : start + 2], "big")
                start += 2
            elif n == 127:
                n = int.from_bytes(buf[start : start + 8], "big")
                start += 8
            elif n > 127:
                return self.recv_data()
            stop = start + n
            if stop <= end:
                self._rpos = stop
                return buf[pos] & 0x0F, buf[start:stop]
        return self.recv_data()

    def _parser_idle(self) -> bool:
        """websocket-client holds no partial frame header/payload and no unfinished fragments."""
        fb = self.frame_buffer
        return fb.header is None and not fb.recv_buffer and not self.cont_frame.recving_frames

    def _read_chunk(self) -> bytes:
        """One socket read, raising what websocket-client's own `_recv` raises."""
        sock = self.sock
        if sock is None:
            raise websocket.WebSocketConnectionClosedException("Connection is closed")
        deadline = self.read_deadline_ns
        if deadline is not None and self.mono() >= deadline:
            raise websocket.WebSocketTimeoutException("read deadline passed")
        if self._chunk is None:
            self._chunk = bytearray(RECV_CHUNK)
            self._view = memoryview(self._chunk)
        try:
            n = sock.recv_into(self._chunk)
        except TimeoutError as exc:  # socket.timeout, also an ssl socket's read timeout
            raise websocket.WebSocketTimeoutException(str(exc) or "Connection timed out") from None
        if n == 0:  # the pump returns and _close() releases the socket (after a close frame if it can)
            raise websocket.WebSocketConnectionClosedException("Connection to remote host was lost.")
        return self._view[:n].tobytes()


def subscribe_messages(tokens: tuple[str, ...], chunk: int) -> list[bytes]:
    """The initial `type: market` subscription, then `operation: subscribe` for further chunks."""
    out: list[bytes] = []
    for i in range(0, len(tokens), chunk):
        ids = list(tokens[i : i + chunk])
        if i == 0:
            doc = {"assets_ids": ids, "type": "market", "initial_dump": True, "level": 2, "custom_feature_enabled": True}
        else:
            doc = {"operation": "subscribe", "assets_ids": ids, "initial_dump": True, "custom_feature_enabled": True}
        out.append(orjson.dumps(doc))
    return out


@dataclass
class _PendingTokens:
    tokens: tuple[str, ...]
    not_before_mono_ns: int
    added: int
    removed: int


class WsReader:
    def __init__(self, shard: int, tokens: tuple[str, ...], sink: ReaderSink, tell: Callable[[Any], None], clock: Clock, config: Config) -> None:
        self.shard = shard
        self.tokens = tokens
        self.tell = tell
        self.clock = clock
        self.config = config
        self.sink = sink
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pending: _PendingTokens | None = None
        self._thread = threading.Thread(target=self._run, name=f"ws-reader-{shard:02d}", daemon=True)
        self._ws: websocket.WebSocket | None = None
        self._not_before_mono_ns = 0

    # -- called from the shard actor's thread ---------------------------------------------
    def start(self, not_before_mono_ns: int = 0) -> None:
        """Start the thread; it opens its first connection no earlier than `not_before_mono_ns`
        (connections open staggered: many sockets at once draw HTTP 429)."""
        self._not_before_mono_ns = not_before_mono_ns
        self._thread.start()

    def request_stop(self) -> None:
        self._stop.set()
        # Wake a receive blocked for up to MAX_RECV_TIMEOUT_S: with the read side shut, it
        # returns end-of-stream at once and the pump sees the stop. The close handshake still
        # goes out (the write side stays open). A socket the reader closed meanwhile raises.
        ws = self._ws
        sock = ws.sock if ws is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass

    def set_tokens(self, tokens: tuple[str, ...], not_before_mono_ns: int, added: int, removed: int) -> None:
        with self._lock:
            self._pending = _PendingTokens(tuple(tokens), not_before_mono_ns, added, removed)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # -- reader thread ----------------------------------------------------------------------
    def _report(self, event: ev.Event) -> None:
        self.tell(ReaderEvent(self.clock.mono_ns(), self.clock.wall_ns(), event))

    def _run(self) -> None:
        reason = "stop"
        try:
            self._loop()
        except Exception as exc:  # a bug here must not vanish with the thread: record it
            reason = "error"
            self._report(ev.ShardDisconnected(shard=self.shard, cause="error", detail=f"reader crashed: {exc!r}", planned=False))
        finally:
            self.sink.flush()
            self.tell(ReaderFinished(reason))

    def _loop(self) -> None:
        cfg = self.config
        failures = 0
        connects = 0
        refresh: tuple[int, int, int] | None = None  # (began mono, added, removed)
        wait_s = (self._not_before_mono_ns - self.clock.mono_ns()) / 1e9
        if wait_s > 0:
            self._stop.wait(wait_s)
        while not self._stop.is_set():
            if not self.tokens:
                # Every market of this shard was delisted: no connection (a subscription of no
                # tokens is refused) until a refresh places markets here again.
                now = self.clock.mono_ns()
                due = self._take_due_tokens(now)
                if due is None:
                    pending = self._pending
                    wait = MAX_RECV_TIMEOUT_S if pending is None else (pending.not_before_mono_ns - now) / 1e9
                    self._stop.wait(min(MAX_RECV_TIMEOUT_S, max(MIN_RECV_TIMEOUT_S, wait)))
                    continue
                self._report(ev.ShardRefreshBegin(shard=self.shard, added_count=due.added, removed_count=due.removed, tokens=len(due.tokens)))
                self.tokens = due.tokens
                refresh = (self.clock.mono_ns(), due.added, due.removed)
                continue
            connects += 1
            self._report(ev.ShardConnecting(shard=self.shard, url=cfg.clob_ws_url, attempt=connects, tokens=len(self.tokens)))
            t0 = self.clock.mono_ns()
            try:
                ws = self._connect()
            except Exception as exc:
                if self._stop.is_set():  # the stop cut the handshake
                    self._report(ev.ShardDisconnected(shard=self.shard, cause="stop", detail="stop requested while connecting", planned=True))
                    break
                failures += 1
                self._report(ev.ShardDisconnected(shard=self.shard, cause="connect_failed", detail=_describe(exc), planned=False))
                backoff = backoff_seconds(failures, cfg.ws_reconnect_backoff_initial_seconds, cfg.ws_reconnect_backoff_max_seconds)
                self._report(ev.ShardReconnect(shard=self.shard, attempt=connects + 1, backoff_seconds=backoff, cause="connect_failed", planned=False))
                self._stop.wait(backoff)
                continue
            self._report(
                ev.ShardConnected(
                    shard=self.shard,
                    attempt=connects,
                    connect_ms=round((self.clock.mono_ns() - t0) / 1e6, 3),
                    subscribe_messages=len(subscribe_messages(self.tokens, cfg.ws_subscribe_chunk_size)),
                )
            )
            if refresh is not None:
                self._report(
                    ev.ShardRefreshApplied(shard=self.shard, tokens=len(self.tokens), duration_ms=round((self.clock.mono_ns() - refresh[0]) / 1e6, 3))
                )
                refresh = None
            keepalive = Keepalive(self.clock.mono_ns(), cfg.ws_ping_interval_seconds, cfg.ws_ping_timeout_seconds, cfg.ws_data_idle_reconnect_seconds)
            self._ws = ws
            if self._stop.is_set():  # a stop requested while connecting found no socket to wake
                cause, detail, planned, refresh_began = "stop", "stop requested", True, None
            else:
                cause, detail, planned, refresh_began = self._pump(ws, keepalive)
            self._ws = None
            _close(ws)
            self.sink.flush()
            self._report(ev.ShardDisconnected(shard=self.shard, cause=cause, detail=detail, planned=planned))
            if refresh_began is not None:
                refresh = refresh_began
            if self._stop.is_set():
                break
            if keepalive.market_frames:
                failures = 0
            if planned:
                backoff = 0.0
            else:
                failures += 1
                backoff = backoff_seconds(failures, cfg.ws_reconnect_backoff_initial_seconds, cfg.ws_reconnect_backoff_max_seconds)
            self._report(ev.ShardReconnect(shard=self.shard, attempt=connects + 1, backoff_seconds=backoff, cause=cause, planned=planned))
            if backoff:
                self._stop.wait(backoff)

    def _connect(self) -> websocket.WebSocket:
        """Connect, handshake and subscribe within `ws_connect_timeout_seconds` in all, and give
        way at once to a stop. websocket-client's timeout bounds each socket read, not the
        handshake: a peer that trickles its answer a byte at a time held it for ever, and a stop
        had no socket to wake. A watchdog thread cuts the socket at the deadline or the stop."""
        cfg = self.config
        ws = BufferedWebSocket(
            skip_utf8_validation=True,  # payloads are stored as received; validation costs ~6x throughput
            sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES), (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)),
            enable_multithread=False,
        )
        ws.settimeout(cfg.ws_connect_timeout_seconds)
        done, expired = threading.Event(), threading.Event()
        watchdog = threading.Thread(
            target=self._watch_connect, args=(ws, done, expired, cfg.ws_connect_timeout_seconds), name=f"ws-connect-{self.shard:02d}", daemon=True
        )
        watchdog.start()
        try:
            ws.connect(cfg.clob_ws_url, timeout=cfg.ws_connect_timeout_seconds)
            for msg in subscribe_messages(self.tokens, cfg.ws_subscribe_chunk_size):
                ws.send(msg)
        except Exception as exc:
            done.set()
            _close(ws)
            if expired.is_set():
                raise ConnectTimeout(f"connect, handshake and subscription not done within {cfg.ws_connect_timeout_seconds:g} s ({_describe(exc)})") from None
            raise
        finally:
            done.set()
            watchdog.join()
        if expired.is_set():  # the deadline fell between the last send and the watchdog's end
            _close(ws)
            raise ConnectTimeout(f"connect, handshake and subscription not done within {cfg.ws_connect_timeout_seconds:g} s")
        return ws

    def _watch_connect(self, ws: BufferedWebSocket, done: threading.Event, expired: threading.Event, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not done.wait(CONNECT_WATCH_S):
            stop = self._stop.is_set()
            if stop or time.monotonic() >= deadline:
                if not stop:
                    expired.set()
                sock = ws.sock
                if sock is not None:  # None until the TCP connect returns: cut it on the next turn
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def _take_due_tokens(self, now: int) -> _PendingTokens | None:
        if self._pending is None:  # the common case, without taking the lock
            return None
        with self._lock:
            p = self._pending
            if p is not None and now >= p.not_before_mono_ns:
                self._pending = None
                return p
        return None

    def _pump(self, ws: BufferedWebSocket, keepalive: Keepalive) -> tuple[str, str, bool, tuple[int, int, int] | None]:
        sink = self.sink
        clock_mono = self.clock.mono_ns
        current_timeout = None
        recv = ws.next_frame
        drained = ws.drained
        ws.mono = clock_mono
        on_frame = keepalive.on_frame
        between_reads = True
        while True:
            if between_reads:
                # Housekeeping runs when the frames of the last socket read are all parsed, not
                # per frame: a read can hold hundreds of frames at high rates.
                if self._stop.is_set():
                    return "stop", "stop requested", True, None
                now = clock_mono()
                due_tokens = self._take_due_tokens(now)
                if due_tokens is not None:
                    self._report(
                        ev.ShardRefreshBegin(shard=self.shard, added_count=due_tokens.added, removed_count=due_tokens.removed, tokens=len(due_tokens.tokens))
                    )
                    self.tokens = due_tokens.tokens
                    return "refresh", "token set changed by universe refresh", True, (now, due_tokens.added, due_tokens.removed)
                action = keepalive.due(now)
                if action == PING:
                    try:
                        ws.send("PING")
                    except Exception as exc:
                        return "error", f"sending PING failed: {_describe(exc)}", False, None
                    keepalive.ping_sent(now)
                elif action == PING_TIMEOUT:
                    return PING_TIMEOUT, f"no PONG within {self.config.ws_ping_timeout_seconds:g} s", False, None
                elif action == DATA_IDLE:
                    return DATA_IDLE, f"no market data for {self.config.ws_data_idle_reconnect_seconds:g} s", False, None
                if sink.batch:  # frames wait (a read ended inside a frame): their hand-off is due
                    want = max(self.config.batch_max_delay_ms / 1000, MIN_RECV_TIMEOUT_S)
                else:
                    deadline = keepalive.next_deadline_ns()
                    pending = self._pending
                    if pending is not None:
                        deadline = min(deadline, pending.not_before_mono_ns)
                    want = recv_timeout_s((deadline - now) / 1e9)
                if want != current_timeout:
                    ws.settimeout(want)
                    current_timeout = want
                ws.read_deadline_ns = now + int(want * 1e9)
            try:
                opcode, data = recv()
            except websocket.WebSocketTimeoutException:
                sink.flush()
                between_reads = True
                continue
            except websocket.WebSocketConnectionClosedException as exc:
                if self._stop.is_set():  # request_stop shut the read side down
                    return "stop", "stop requested", True, None
                return "server_close", f"connection closed ({_describe(exc)})", False, None
            except (OSError, websocket.WebSocketException) as exc:
                if self._stop.is_set():
                    return "stop", "stop requested", True, None
                return "error", _describe(exc), False, None
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                reason = data[2:].decode("utf-8", "replace")
                return "server_close", f"close frame code={code} reason={reason!r}", False, None
            events = sink.frame(opcode, data)
            on_frame(sink.last_mono_ns, events, data, opcode)
            between_reads = drained()
            if between_reads:
                # Everything the socket had is parsed: hand the batch off now. At low rates this
                # sends each frame at once; at high rates one read holds many frames, so batches
                # grow by themselves and the hand-offs (thread wake-ups) stay few.
                sink.flush()


def recv_timeout_s(remaining_s: float) -> float:
    """The socket timeout for a receive that must return by `remaining_s` from now.

    Powers of two below MAX_RECV_TIMEOUT_S: the timeout only changes (a syscall) when the next
    deadline crosses a level, about a dozen times per deadline, instead of on every read while
    a deadline approaches. The receive wakes at most half the remaining time early.
    """
    if remaining_s >= MAX_RECV_TIMEOUT_S:
        return MAX_RECV_TIMEOUT_S
    if remaining_s <= MIN_RECV_TIMEOUT_S:
        return MIN_RECV_TIMEOUT_S
    level = MAX_RECV_TIMEOUT_S
    while level > remaining_s:
        level /= 2
    return max(level, MIN_RECV_TIMEOUT_S)


def _close(ws: BufferedWebSocket) -> None:
    """Close handshake when still possible, then always release the socket.

    websocket-client answers a server's close frame inside recv and marks itself disconnected,
    after which its close() returns without closing the socket: shutdown() is what frees it.
    """
    # The close handshake gets its own second, as a deadline over all its reads: a peer trickling
    # bytes would keep a per-read timeout from ever expiring.
    ws.read_deadline_ns = ws.mono() + CLOSE_WAIT_NS
    try:
        ws.close(timeout=1)
    except Exception:
        pass
    ws.shutdown()


def _describe(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"[:300]


def ws_reader_factory(config: Config):
    def make(shard: int, tokens: tuple[str, ...], sink: ReaderSink, tell: Callable[[Any], None], clock: Clock) -> WsReader:
        return WsReader(shard, tokens, sink, tell, clock, config)

    return make
