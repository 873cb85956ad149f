"""`pm_arb sim-exchange` (a real subprocess) against clients others wrote: websocket-client,
the `websockets` client and a hand-written socket, with odd subscriptions, a client that never
reads and clients that vanish mid-send. The server stays up, keeps serving everyone else, and
answers as Polymarket does (POLYMARKET_PROTOCOL.md 2.2-2.4)."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import subprocess
import time

import orjson
import pytest
import requests
import websocket
from websockets.asyncio.client import connect as ws_connect

from .conftest import start_sim_exchange


@pytest.fixture
def sim_cli():
    """(gamma_url, ws_url, tokens) of a `pm_arb sim-exchange` subprocess."""
    proc, gamma, ws = start_sim_exchange("--markets", "100", "--rate", "6000")
    try:
        rows = requests.get(gamma + "/markets/keyset", params={"limit": 1000, "closed": "false"}, timeout=5).json()["markets"]
        tokens = [t for r in rows if r.get("enableOrderBook") and r.get("clobTokenIds") for t in orjson.loads(r["clobTokenIds"])]
        yield gamma, ws, tokens
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    err = proc.stderr.read()
    assert "Traceback" not in err, err[-2000:]
    assert proc.returncode == 0, f"sim-exchange did not stop on SIGINT within 10 s (exit {proc.returncode})"


def _raw_connect(ws_url: str, rcvbuf: int | None = None) -> socket.socket:
    host, port = ws_url.split("//", 1)[1].split("/", 1)[0].split(":")
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16))
    s.sendall(b"GET /ws/market HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    return s


def _masked_text(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    elif n < 65536:
        head = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload  # a zero mask: the payload goes as is


def _count_for(ws: websocket.WebSocket, seconds: float) -> int:
    """Data messages received in `seconds`."""
    n = 0
    end = time.monotonic() + seconds
    ws.settimeout(0.2)
    while time.monotonic() < end:
        try:
            msg = ws.recv()
        except websocket.WebSocketTimeoutException:
            continue
        if msg[:1] in ("{", "["):
            n += 1
    return n


def _assert_a_new_client_is_served(ws_url: str, tokens: list[str]) -> None:
    ws = websocket.create_connection(ws_url, timeout=5)
    try:
        ws.send(orjson.dumps({"assets_ids": tokens[:4], "type": "market"}))
        assert _count_for(ws, 1.0) > 0
    finally:
        ws.close()


def _bytes_for(sock: socket.socket, seconds: float) -> bytes:
    """What arrives in `seconds` (large reads: this reader must not be the slow one on a busy machine)."""
    out = bytearray()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            break
        assert chunk, "the server closed the reading client"
        out += chunk
    return bytes(out)


def test_a_client_that_never_reads_does_not_stall_the_others(sim_cli):
    _gamma, ws_url, tokens = sim_cli
    stuck = _raw_connect(ws_url, rcvbuf=4096)
    stuck.sendall(_masked_text(orjson.dumps({"assets_ids": tokens, "type": "market"})))
    reader = _raw_connect(ws_url)
    reader.sendall(_masked_text(orjson.dumps({"assets_ids": tokens[:20], "type": "market"})))
    try:
        # The stuck client's backlog passes the server's write limit within seconds at this rate;
        # a server that waits for it stops sending to everyone (before the fix: nothing after ~3 s).
        got = [len(_bytes_for(reader, 1.0)) for _ in range(4)]
        assert all(n > 0 for n in got), got
        reader.sendall(_masked_text(b"PING"))
        seen = b""
        end = time.monotonic() + 10
        while b"\x81\x04PONG" not in seen:  # behind the messages already sent to it
            assert time.monotonic() < end, "no PONG"
            seen = seen[-8:] + _bytes_for(reader, 0.2)
        stuck.settimeout(5)  # the server cut the client that never read (a timeout here: it did not)
        try:
            while stuck.recv(1 << 20):
                pass
        except ConnectionResetError:
            pass
    finally:
        reader.close()
        stuck.close()


def test_clients_vanishing_mid_send_leave_the_server_serving(sim_cli):
    _gamma, ws_url, tokens = sim_cli
    sub = _masked_text(orjson.dumps({"assets_ids": tokens, "type": "market"}))
    for k in range(20):  # the initial dump of every token is in flight when each goes
        s = _raw_connect(ws_url, rcvbuf=4096)
        s.sendall(sub)
        s.recv(100)
        if k % 2:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # RST, not FIN
        s.close()
    _assert_a_new_client_is_served(ws_url, tokens)


def _first_answer(ws_url: str, first: bytes) -> tuple[int, bytes]:
    ws = websocket.create_connection(ws_url, timeout=5)
    try:
        ws.send(first)
        opcode, data = ws.recv_data(control_frame=True)
        return opcode, data
    finally:
        ws.close()


@pytest.mark.parametrize("first", [
    b"not json", b"PING", b"ping", b"[]", b'{"type":"market"}', b'{"assets_ids":"1","type":"market"}',
    b'{"assets_ids":[],"type":"user"}', b'{"operation":"subscribe","assets_ids":["1"]}',
])
def test_a_first_message_that_is_not_a_subscription_is_closed_1008(sim_cli, first):
    opcode, data = _first_answer(sim_cli[1], first)
    assert opcode == 8 and int.from_bytes(data[:2], "big") == 1008 and data[2:] == b"invalid subscription payload"


def test_subscriptions_of_many_ids_upper_case_type_and_operations_are_served(sim_cli):
    _gamma, ws_url, tokens = sim_cli

    async def go() -> dict:
        async with ws_connect(ws_url, compression=None, max_size=None, close_timeout=1) as ws:
            # 1000 ids, most unknown to the exchange; "MARKET" as older docs wrote it
            ids = tokens[:4] + [str(10**70 + i) for i in range(996)]
            await ws.send(orjson.dumps({"assets_ids": ids, "type": "MARKET", "initial_dump": True}).decode())
            dump = orjson.loads(await ws.recv())
            await ws.send(orjson.dumps({"assets_ids": tokens[:2], "type": "market"}).decode())  # the initial form again
            await ws.send(orjson.dumps({"operation": "unsubscribe", "assets_ids": tokens[:4]}).decode())
            await ws.send(orjson.dumps({"operation": "subscribe", "assets_ids": tokens[4:6]}).decode())
            await ws.send("{not json")
            await ws.send(orjson.dumps({"operation": "bogus", "assets_ids": tokens[6:8]}).decode())
            await ws.send("PING")
            texts, assets = [], set()
            end = time.monotonic() + 2
            while time.monotonic() < end:
                try:
                    msg = await asyncio.wait_for(ws.recv(), 0.5)
                except asyncio.TimeoutError:
                    continue
                if msg[:1] in "{[":
                    doc = orjson.loads(msg)
                    for d in doc if isinstance(doc, list) else [doc]:
                        assets.add(d.get("asset_id"))
                        assets.update(c["asset_id"] for c in d.get("price_changes", []))
                else:
                    texts.append(msg)
            return {"dump": dump, "texts": texts, "assets": assets}

    got = asyncio.run(go())
    assert sorted(d["asset_id"] for d in got["dump"]) == sorted(tokens[:4])  # books for the known ids only
    assert got["texts"].count("INVALID OPERATION") == 1 and "PONG" in got["texts"]
    assert set(tokens[4:6]) <= got["assets"]  # a fresh dump for the subscribed ones
    assert not got["assets"] & set(tokens[6:8])


def test_a_cursor_this_server_never_issued_is_422_not_500(sim_cli):
    gamma = sim_cli[0]
    for cursor in [base64.urlsafe_b64encode(b'{"id":"abc"}').decode(), base64.urlsafe_b64encode(b"[1]").decode(), "!!!",
                   base64.urlsafe_b64encode('{"id":"\u00b2"}'.encode()).decode()]:
        r = requests.get(gamma + "/markets/keyset", params={"after_cursor": cursor}, timeout=5)
        assert r.status_code == 422 and r.json() == {"type": "validation error", "error": "invalid after_cursor"}, (cursor, r.text)


def test_a_client_message_over_the_limit_is_closed_1009_and_others_stay_served(sim_cli):
    _gamma, ws_url, tokens = sim_cli
    big = websocket.create_connection(ws_url, timeout=5)
    big.send(orjson.dumps({"assets_ids": tokens[:2], "type": "market"}))
    big.send("x" * (17 * 1024 * 1024))
    closed = None
    for _ in range(100_000):
        opcode, data = big.recv_data(control_frame=True)
        if opcode == 8:
            closed = int.from_bytes(data[:2], "big")
            break
    big.close()
    assert closed == 1009
    _assert_a_new_client_is_served(ws_url, tokens)
