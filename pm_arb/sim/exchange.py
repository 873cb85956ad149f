"""A loopback simulated Polymarket: Gamma REST and the CLOB market WebSocket on one port.

It speaks the public protocol (../shared/spec/POLYMARKET_PROTOCOL.md): `GET /markets` with
offset paging capped at 2000 (HTTP 422 past it), `GET /markets/keyset` with `after_cursor`
(422 on `offset`, `cursor=` silently ignored), JSON-encoded string fields; `/ws/market` with the
`type: market` subscription first (anything else, including an early PING, closes with 1008),
`operation: subscribe/unsubscribe` afterwards, `INVALID OPERATION` for a second initial form,
text PING -> PONG, initial book dumps as arrays, and a paced stream of market messages.

It is one exchange (pm_arb/sim/market_data.py:Exchange): one book per market, changed by one
stream of events that every subscriber of a token receives alike, on every connection and
after every reconnect. `best_bid_ask`, `new_market` and `market_resolved` go only to
subscriptions with `custom_feature_enabled`.

Tests script faults through the public attributes and methods (refuse connections, stop PONGs,
stop data, close connections, send garbage, change the market list, cap assets per
connection, fail Gamma requests) and the server-side losses the book audit must find
(`drop_fraction`, `silent_tokens`, `send_stale_snapshot`, `withhold_dump_on_resubscribe`;
each logged in `fault_log` with each affected connection's frame index). Every payload sent on
each connection is logged when `record_sent` is on, so a test can compare it with what was
captured.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from pm_arb.sim.market_data import Exchange, Message, SimMarket, make_gamma_rows, markets_of_rows

OFFSET_CAP = 2000
KEYSET_MAX_LIMIT = 1000
DEFAULT_LIMIT = 20
SUBSCRIBE_TIMEOUT_S = 10.0
# Outgoing bytes a connection may have waiting (websockets' high-water mark). The one event
# stream is sent to every connection in turn, so a send that waited for a client that does not
# read stalled everyone: a connection this far behind is cut as a slow consumer instead.
WRITE_LIMIT = 2**22
MAX_CLIENT_MESSAGE = 16 * 1024 * 1024  # a subscription of 1000 ids is ~80 KB
STALL_GARBAGE = b'{"asset_id":"7132","event_type":"pri'  # a message cut short


@dataclass
class SimConnection:
    conn_id: int
    tokens: list[str] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    sent_count: int = 0
    closed: bool = False
    close_reason: str = ""
    received: list[bytes] = field(default_factory=list)
    custom: bool = False  # the subscription set custom_feature_enabled
    served: set[str] = field(default_factory=set)  # subscribed tokens this connection gets data for


def _json_response(status: int, doc: Any) -> Response:
    body = orjson.dumps(doc)
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Connection", "close")])
    return Response(status, HTTPStatus(status).phrase, headers, body)


def _raw_response(status: int, body: bytes, ctype: str = "application/json") -> Response:
    headers = Headers([("Content-Type", ctype), ("Content-Length", str(len(body))), ("Connection", "close")])
    return Response(status, HTTPStatus(status).phrase, headers, body)


def _encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"id": last_id})).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int | None:
    """The market id a cursor continues after; None when it is not one this server issued
    (answered 422, as Gamma does, never a 500)."""
    try:
        pad = "=" * (-len(cursor) % 4)
        obj = orjson.loads(base64.urlsafe_b64decode(cursor + pad))
        last = str(obj["id"])
    except Exception:
        return None
    return int(last) if last.isascii() and last.isdigit() else None


class SimExchange:
    def __init__(
        self,
        markets: int = 40,
        rate: float = 200.0,
        seed: int = 7,
        host: str = "127.0.0.1",
        port: int = 0,
        record_sent: bool = False,
        extras: bool = True,
        pool: int = 0,
    ) -> None:
        self.host = host
        self.port = port
        self.rate = rate
        self.seed = seed
        self.record_sent = record_sent
        # Benchmarks: pre-generate this many messages per connection and cycle them, so the
        # simulator spends its CPU on sending, not on building JSON (payload timestamps repeat).
        self.pool = pool
        self._rows = make_gamma_rows(markets, seed=seed, extras=extras)
        self._rows_lock = threading.Lock()
        # fault knobs, read by the server's event loop
        self.refuse_connections = False
        self.answer_ping = True
        self.send_data = True
        self.initial_dump = True
        # Polymarket past ~500 tokens on one connection: the socket stays up and PONGs come, but
        # tokens past this many (in subscription order) get no message at all.
        self.max_assets_per_connection: int | None = None
        # A stall that is not silent: while > 0, no market data; every this many seconds a `[]`,
        # and every third time a truncated JSON frame instead (PONGs still answered).
        self.stall_noise_seconds = 0.0
        self.silent_tokens: set[str] = set()  # subscribed but get no message, from now on (per-asset silent loss)
        # Server-side losses (the book audit's oracle): drop this fraction of a token's messages;
        # subscribing again (a reconnect) gets no fresh book dump for tokens dumped before.
        self.drop_fraction: dict[str, float] = {}
        self.withhold_dump_on_resubscribe = False
        self.fault_log: list[dict] = []  # {"kind", "token", "at": {conn_id: index in its sent frames}, ...}
        self.gamma_script: deque[str] = deque()  # "500", "bad_json", "sleep:SECONDS", "loop" consumed one per request
        self.gamma_loop = False
        self.gamma_requests: list[str] = []
        self.slow_consumers_cut = 0  # connections cut for not reading (WRITE_LIMIT)
        self.connections: dict[int, SimConnection] = {}
        self._served: dict[int, int] = {}  # live connection -> tokens it gets data for (pool mode pacing)
        self.exchange = Exchange(markets_of_rows(self._rows), seed=seed)
        self._subs: dict[str, set[int]] = {}  # token -> live connections it is served on
        self._active: list[SimMarket] = []  # markets with at least one served token
        self._active_dirty = False
        self._serve_key: tuple = ()
        self._rows_changed = False
        self._dumped: set[str] = set()  # tokens some connection already got a book dump for
        self._fault_rng = random.Random(seed * 31 + 1)
        self._pick_rng = random.Random(seed * 31 + 2)
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._live: dict[int, ServerConnection] = {}
        self._error: BaseException | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def gamma_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws/market"

    def start(self) -> "SimExchange":
        self._thread = threading.Thread(target=self._run, name="sim-exchange", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("simulated exchange did not start within 10 s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "SimExchange":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(
            self._handle_ws,
            self.host,
            self.port,
            process_request=self._process_request,
            compression=None,
            ping_interval=None,
            max_size=MAX_CLIENT_MESSAGE,
            write_limit=WRITE_LIMIT,
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            pump = asyncio.create_task(self._pump())
            self._ready.set()
            await self._stop.wait()
            pump.cancel()
            for ws in list(self._live.values()):
                ws.transport.abort()

    # -- control from tests (thread-safe) ---------------------------------------------------
    def rows(self) -> list[dict]:
        with self._rows_lock:
            return list(self._rows)

    def set_rows(self, rows: list[dict]) -> None:
        with self._rows_lock:
            self._rows = list(rows)
            self._rows_changed = True  # the event loop adds books for new markets

    def list_new_market(self) -> dict:
        """A new active binary market: listed by Gamma from now on, announced by `new_market`."""
        with self._rows_lock:
            next_id = max((int(r["id"]) for r in self._rows), default=500_000) + 1
            row = make_gamma_rows(1, seed=self.seed * 7919 + next_id, first_id=next_id, extras=False)[0]
            self._rows.append(row)

        async def announce():
            yes, no = orjson.loads(row["clobTokenIds"])
            self.exchange.add_market(row["conditionId"], yes, no)
            await self._broadcast_custom(self.exchange.new_market_message(row, int(time.time() * 1000)))

        self._call(announce)
        return row

    def resolve_market(self, condition_id: str, winner: int = 0) -> dict:
        """Resolve a market: `market_resolved` now, closed in Gamma from now on, no more book events."""
        with self._rows_lock:
            row = next((r for r in self._rows if r.get("conditionId") == condition_id), None)
            if row is None:
                raise KeyError(condition_id)
            row.update(closed=True, acceptingOrders=False, umaResolutionStatuses='["resolved"]')

        async def announce():
            await self._broadcast_custom(self.exchange.resolve(row, int(time.time() * 1000), winner))
            self._active_dirty = True

        self._call(announce)
        return row

    def send_stale_snapshot(self, token: str) -> dict:
        """Send again the token's most recent `book` that the book has since moved away from (a
        stale snapshot). `differs` is False, and nothing is sent, when every kept one is current."""

        async def send():
            current = self.exchange.book_doc(token, 0, record=False)
            kept = self.exchange.token_market[token].books_sent.get(token, ())
            doc = next((d for d in reversed(kept) if (d["bids"], d["asks"]) != (current["bids"], current["asks"])), None)
            entry["differs"] = doc is not None
            if doc is None:
                return
            entry["at"] = {cid: self.connections[cid].sent_count for cid in sorted(self._subs.get(token, ()))}
            payload = orjson.dumps(doc)
            for cid in entry["at"]:
                await self._send_safe(cid, payload)

        entry: dict = {"kind": "stale_snapshot", "token": token, "at": {}}
        self.fault_log.append(entry)
        self._call(send)
        return entry

    def _call(self, fn, *args) -> None:
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(fn(*args), self._loop)
        fut.result(timeout=10)

    def close_all_connections(self, code: int = 1001, reason: str = "going away") -> int:
        """Close every live connection with a close frame; returns how many were closed."""
        live = list(self._live.items())

        async def close_all():
            await asyncio.gather(*(ws.close(code, reason) for _, ws in live), return_exceptions=True)

        self._call(close_all)
        return len(live)

    def drop_all_connections(self) -> int:
        """Cut every connection without a close frame (a dead peer)."""
        live = list(self._live.values())

        async def abort():
            for ws in live:
                ws.transport.abort()

        self._call(abort)
        return len(live)

    def send_to_all(self, payload: bytes | str, binary: bool = False) -> int:
        """Send one frame as-is to every live connection (garbage tests); logged like any frame."""
        live = list(self._live.items())

        async def send():
            for cid, ws in live:
                if binary:
                    await ws.send(payload if isinstance(payload, bytes) else payload.encode())
                elif isinstance(payload, bytes):
                    # websockets sends bytes as a binary frame; a text frame with arbitrary bytes
                    # (e.g. invalid UTF-8) needs the low-level API.
                    await ws.send(payload, text=True)
                else:
                    await ws.send(payload)
                self._log_sent(cid, payload if isinstance(payload, bytes) else payload.encode())

        self._call(send)
        return len(live)

    def live_connections(self) -> int:
        return len(self._live)

    def sent_payloads(self, tokens: set[str] | None = None) -> list[list[bytes]]:
        """Per connection (in connect order), the payloads sent; optionally only connections on these tokens."""
        out = []
        for cid in sorted(self.connections):
            c = self.connections[cid]
            if tokens is None or set(c.tokens) & tokens:
                out.append(list(c.sent))
        return out

    # -- HTTP (Gamma) ---------------------------------------------------------------------------
    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        if parts.path == "/ws/market":
            if self.refuse_connections:
                return _json_response(503, {"error": "service unavailable (simulated)"})
            return None
        if parts.path in ("/ws", "/ws/"):
            return _json_response(404, {"error": "not found"})
        query = parse_qs(parts.query, keep_blank_values=True)
        self.gamma_requests.append(request.path)
        if parts.path in ("/markets", "/markets/keyset"):
            if self.gamma_script:
                action = self.gamma_script.popleft()
                if action.startswith("sleep:"):
                    await asyncio.sleep(float(action.split(":", 1)[1]))
                elif action == "bad_json":
                    return _raw_response(200, b'{"markets": [ {"id": "1", trunc')
                elif action.isdigit():
                    return _json_response(int(action), {"error": f"simulated HTTP {action}"})
            return self._markets(parts.path, query)
        return _json_response(404, {"error": f"no route for {parts.path}"})

    def _filtered(self, query: dict[str, list[str]]) -> list[dict]:
        def flag(name: str) -> bool | None:
            vals = query.get(name)
            if not vals:
                return None
            return vals[-1].lower() == "true"

        closed = flag("closed")
        closed = False if closed is None else closed  # Gamma's documented default hides closed markets
        active, archived = flag("active"), flag("archived")
        out = []
        for row in self.rows():
            if bool(row.get("closed")) != closed:
                continue
            if active is not None and bool(row.get("active")) != active:
                continue
            if archived is not None and bool(row.get("archived")) != archived:
                continue
            out.append(row)
        return sorted(out, key=lambda r: int(r["id"]))

    def _markets(self, path: str, query: dict[str, list[str]]) -> Response:
        def intparam(name: str, default: int) -> int | None:
            vals = query.get(name)
            if not vals:
                return default
            try:
                return int(vals[-1])
            except ValueError:
                return None

        limit = intparam("limit", DEFAULT_LIMIT)
        if limit is None or limit < 0:
            return _json_response(422, {"type": "validation error", "error": "limit must be a non-negative integer"})
        rows = self._filtered(query)
        if path == "/markets":
            offset = intparam("offset", 0)
            if offset is None or offset < 0:
                return _json_response(422, {"type": "validation error", "error": "offset must be a non-negative integer"})
            if offset > OFFSET_CAP:
                return _json_response(422, {"type": "validation error", "error": "offset too large, use /markets/keyset for deeper pagination"})
            return _json_response(200, rows[offset : offset + limit])
        if "offset" in query:
            return _json_response(422, {"type": "validation error", "error": "offset is not supported on keyset endpoints; use after_cursor"})
        if limit > KEYSET_MAX_LIMIT:
            return _json_response(422, {"type": "validation error", "error": f"limit must be <= {KEYSET_MAX_LIMIT}"})
        start = 0
        cursor = (query.get("after_cursor") or [None])[-1]
        if cursor:
            last_id = _decode_cursor(cursor)
            if last_id is None:
                return _json_response(422, {"type": "validation error", "error": "invalid after_cursor"})
            start = next((i for i, r in enumerate(rows) if int(r["id"]) > last_id), len(rows))
        page = rows[start : start + limit]
        doc: dict[str, Any] = {"markets": page}
        if self.gamma_loop and page:
            doc["next_cursor"] = _encode_cursor(str(int(rows[0]["id"]) - 1))
        elif len(page) == limit and page:
            doc["next_cursor"] = _encode_cursor(page[-1]["id"])
        return _json_response(200, doc)

    # -- WebSocket (CLOB market channel) ------------------------------------------------------
    def _log_sent(self, cid: int, payload: bytes) -> None:
        c = self.connections.get(cid)
        if c is None:
            return
        c.sent_count += 1
        if self.record_sent:
            c.sent.append(payload)

    async def _send(self, ws: ServerConnection, cid: int, payload: bytes) -> None:
        await ws.send(payload, text=True)
        self._log_sent(cid, payload)

    async def _send_safe(self, cid: int, payload: bytes) -> None:
        """Send from the shared stream (or a test's fault): never waits on one slow client."""
        ws = self._live.get(cid)
        if ws is None:
            return
        waiting = ws.transport.get_write_buffer_size()
        if waiting and waiting + len(payload) + 14 > WRITE_LIMIT:  # 14: a frame header; one big dump alone goes
            self._cut_slow_consumer(cid, ws)
            return
        try:
            await self._send(ws, cid, payload)
        except ConnectionClosed:
            pass

    def _cut_slow_consumer(self, cid: int, ws: ServerConnection) -> None:
        conn = self.connections[cid]
        if not conn.close_reason:
            conn.close_reason = f"slow consumer: over {WRITE_LIMIT} bytes waiting to be sent"
            self.slow_consumers_cut += 1
        self._live.pop(cid, None)
        self._unserve(conn)
        ws.transport.abort()  # a close frame would wait behind the backlog

    async def _handle_ws(self, ws: ServerConnection) -> None:
        cid = next(self._ids)
        conn = SimConnection(cid)
        self.connections[cid] = conn
        self._live[cid] = ws
        try:
            try:
                first = await asyncio.wait_for(ws.recv(decode=False), SUBSCRIBE_TIMEOUT_S)
            except asyncio.TimeoutError:
                await ws.close(1008, "no subscription")
                return
            conn.received.append(first)
            sub = _parse_json(first)
            if not isinstance(sub, dict) or not isinstance(sub.get("assets_ids"), list) or str(sub.get("type", "")).lower() != "market":
                await ws.close(1008, "invalid subscription payload")
                return
            conn.custom = sub.get("custom_feature_enabled") is True
            self._sync_markets()

            subscribed: set[str] = set()

            def add(ids: list) -> list[str]:
                fresh = list(dict.fromkeys(t for t in ids if isinstance(t, str) and t not in subscribed))
                subscribed.update(fresh)
                conn.tokens = conn.tokens + fresh
                return fresh

            fresh = add(sub["assets_ids"])
            self._serve(conn)
            if sub.get("initial_dump", True):
                await self._dump(conn, fresh)
            sender = asyncio.create_task(self._stream_pool(ws, cid, conn)) if self.pool else None
            try:
                async for msg in ws:
                    raw = msg if isinstance(msg, bytes) else msg.encode()
                    conn.received.append(raw)
                    if raw.strip() == b"PING":
                        if self.answer_ping:
                            await self._send(ws, cid, b"PONG")
                        continue
                    doc = _parse_json(raw)
                    if not isinstance(doc, dict):
                        continue
                    if "type" in doc and "operation" not in doc:
                        await self._send(ws, cid, b"INVALID OPERATION")
                        continue
                    op = doc.get("operation")
                    ids = doc.get("assets_ids") if isinstance(doc.get("assets_ids"), list) else []
                    if op == "subscribe":
                        self._sync_markets()
                        fresh = add(ids)
                        self._serve(conn)
                        if doc.get("initial_dump", True):
                            await self._dump(conn, fresh)
                    elif op == "unsubscribe":
                        gone = {t for t in ids if isinstance(t, str)}
                        subscribed.difference_update(gone)
                        conn.tokens = [t for t in conn.tokens if t not in gone]
                        self._serve(conn)
            finally:
                if sender is not None:
                    sender.cancel()
        except ConnectionClosed:
            pass
        finally:
            conn.closed = True
            self._live.pop(cid, None)
            self._unserve(conn)

    # -- one exchange: who gets what -----------------------------------------------------------
    def _sync_markets(self) -> None:
        if self._rows_changed:
            self._rows_changed = False
            self.exchange.add_markets(markets_of_rows(self.rows()))

    def _serve(self, conn: SimConnection) -> None:
        """Recompute the tokens a connection gets data for, and the token -> connections index."""
        cap = self.max_assets_per_connection
        known = self.exchange.token_market
        silent = self.silent_tokens
        new = {t for t in (conn.tokens[:cap] if cap else conn.tokens) if t in known and t not in silent}
        gone, added = conn.served - new, new - conn.served
        conn.served = gone
        self._unserve(conn)
        for t in added:
            self._subs.setdefault(t, set()).add(conn.conn_id)
        conn.served = new

    def _unserve(self, conn: SimConnection) -> None:
        for t in conn.served:
            subs = self._subs.get(t)
            if subs is not None:
                subs.discard(conn.conn_id)
                if not subs:
                    del self._subs[t]
        conn.served = set()
        self._active_dirty = True

    def _refresh_serving(self) -> None:
        """Follow the knobs tests set from their thread (silent tokens, the per-connection cap)."""
        self._sync_markets()
        key = (id(self.silent_tokens), len(self.silent_tokens), self.max_assets_per_connection)
        if key != self._serve_key:
            self._serve_key = key
            for cid in list(self._live):
                self._serve(self.connections[cid])
        if self._active_dirty:
            self._active_dirty = False
            subs = self._subs
            self._active = [m for m in self.exchange.markets.values() if not m.resolved and (m.yes in subs or m.no in subs)]

    async def _dump(self, conn: SimConnection, fresh: list[str]) -> None:
        if not self.initial_dump:
            return
        dump = [t for t in fresh if t in conn.served]
        if self.withhold_dump_on_resubscribe:
            withheld = [t for t in dump if t in self._dumped]
            for t in withheld:
                self.fault_log.append({"kind": "withheld_dump", "token": t, "at": {conn.conn_id: conn.sent_count}})
            dump = [t for t in dump if t not in self._dumped]
        self._dumped.update(dump)
        if dump:
            await self._send_safe(conn.conn_id, self.exchange.initial_dump(dump, int(time.time() * 1000)))

    async def _pump(self) -> None:
        """The exchange's one event stream, paced at `rate` messages/s over markets someone is served."""
        tick = 0.01
        start = time.monotonic()
        sent = 0
        step, pick = self.exchange.step, self._pick_rng.choice
        noise_at, noise_count = 0.0, 0
        try:
            while True:
                await asyncio.sleep(tick)
                self._refresh_serving()
                if self.stall_noise_seconds > 0:
                    if time.monotonic() >= noise_at:
                        noise_count += 1
                        for cid in [c for c in self._live if self.connections[c].tokens]:  # subscribed ones
                            await self._send_safe(cid, STALL_GARBAGE if noise_count % 3 == 0 else b"[]")
                        noise_at = time.monotonic() + self.stall_noise_seconds
                    start, sent = time.monotonic(), 0
                    continue
                if self.pool or not self.send_data or self.rate <= 0 or not self._active:
                    start = time.monotonic()
                    sent = 0
                    continue
                due = int((time.monotonic() - start) * self.rate) - sent
                if due <= 0:
                    continue
                now_ms = int(time.time() * 1000)
                made = 0
                while made < min(due, 5000):
                    msgs = step(pick(self._active), now_ms)
                    made += len(msgs)
                    for m in msgs:
                        await self._deliver(m)
                sent += made
        except asyncio.CancelledError:
            return

    async def _deliver(self, msg: Message) -> None:
        """Send one exchange message to every connection served one of its tokens (each sees only its own)."""
        subs = self._subs
        if len(msg.tokens) == 1:
            tok = msg.tokens[0]
            cids = subs.get(tok)
            if not cids or (tok in self.drop_fraction and self._lose(msg, tok)):
                return
            for cid in list(cids):
                if msg.custom and not self.connections[cid].custom:
                    continue
                await self._send_safe(cid, msg.payload)
            return
        per_conn: dict[int, list[str]] = {}
        for tok in msg.tokens:
            cids = subs.get(tok)
            if cids and not (tok in self.drop_fraction and self._lose(msg, tok)):
                for cid in cids:
                    per_conn.setdefault(cid, []).append(tok)
        for cid, toks in per_conn.items():
            if msg.custom and not self.connections[cid].custom:
                continue
            await self._send_safe(cid, msg.payload_for(tuple(toks)))

    def _lose(self, msg: Message, token: str) -> bool:
        """Server-side loss: the token's part of this message reaches no one."""
        if self._fault_rng.random() >= self.drop_fraction.get(token, 0.0):
            return False
        at = {cid: self.connections[cid].sent_count for cid in sorted(self._subs.get(token, ()))}
        self.fault_log.append({"kind": "drop", "token": token, "event_type": msg.kind, "top_changed": msg.top_changed, "at": at})
        return True

    async def _broadcast_custom(self, msg: Message) -> None:
        for cid in list(self._live):
            if self.connections[cid].custom:
                await self._send_safe(cid, msg.payload)

    async def _stream_pool(self, ws: ServerConnection, cid: int, conn: SimConnection) -> None:
        """Benchmarks: cycle pre-generated messages, this connection's share by tokens served of `rate`.

        The books behind a pool are not followed (messages repeat): only for throughput runs.
        """
        tick = 0.01
        start = time.monotonic()
        sent = 0.0
        pool: list[bytes] = []
        pool_tokens: set[str] = set()
        k = 0
        try:
            while True:
                await asyncio.sleep(tick)
                if self.stall_noise_seconds > 0:  # the pump sends the noise
                    start, sent = time.monotonic(), 0.0
                    continue
                tokens = conn.served
                self._served[cid] = len(tokens)
                if not tokens or not self.send_data or self.rate <= 0:
                    start = time.monotonic()
                    sent = 0.0
                    continue
                rate = self.rate * len(tokens) / max(1, sum(self._served.values()))
                due = (time.monotonic() - start) * rate - sent
                n = int(due)
                if n <= 0:
                    continue
                if tokens != pool_tokens:
                    pool_tokens = set(tokens)
                    pool = self._pool_for(conn, int(time.time() * 1000))
                for _ in range(min(n, 5000)):
                    await self._send(ws, cid, pool[k % len(pool)])
                    k += 1
                sent += n
        except (ConnectionClosed, asyncio.CancelledError):
            return
        finally:
            self._served.pop(cid, None)

    def _pool_for(self, conn: SimConnection, now_ms: int) -> list[bytes]:
        ordered = sorted(conn.served)
        markets = self.exchange.token_market
        pool: list[bytes] = []
        while len(pool) < self.pool:
            for m in self.exchange.step(markets[self._pick_rng.choice(ordered)], now_ms):
                toks = tuple(t for t in m.tokens if t in conn.served)
                if toks and (conn.custom or not m.custom):
                    pool.append(m.payload_for(toks))
        return pool[: self.pool]


def _parse_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
