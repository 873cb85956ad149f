"""The recorder a competent user would write instead of pm_arb: the baseline of vs_handwritten.py.

    python benchmarks/handwritten_recorder.py --gamma-base-url URL --clob-ws-url URL \
        --shards 8 --duration-seconds 20 --out DIR

Written the obvious way, without pm_arb's code: page Gamma's keyset endpoint with requests,
keep active Yes/No markets with an order book, spread their tokens over N connections (both
tokens of a market on one), and give each connection one thread that subscribes like pm_arb
does (the `type: market` message, then `operation: subscribe` per 100 tokens), blocks in
websocket-client's recv (skip_utf8_validation, as any throughput-minded user would set), sends
the text PING Polymarket wants every 10 s, and appends each frame with its two receive
timestamps to a buffered file. No checksum, no index, no metrics, no reconnect logic: what it
leaves out is what pm_arb adds. Prints one JSON line with its counts when it stops.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import threading
import time

import requests
import websocket

PING_EVERY_S = 10.0
HEADER = struct.Struct("<qqI")  # rx monotonic ns, rx wall ns, payload length


def fetch_tokens(gamma: str) -> list[list[str]]:
    """Token pairs of every active, open Yes/No market with an order book."""
    pairs, cursor = [], None
    with requests.Session() as s:
        while True:
            params = {"active": "true", "closed": "false", "archived": "false", "limit": "500"}
            if cursor:
                params["after_cursor"] = cursor
            body = s.get(gamma.rstrip("/") + "/markets/keyset", params=params, timeout=10).json()
            for row in body["markets"]:
                if not (row.get("active") and not row.get("closed") and row.get("enableOrderBook")):
                    continue
                try:  # Gamma sends these as strings holding JSON; some rows hold garbage
                    outcomes, ids = json.loads(row["outcomes"]), json.loads(row["clobTokenIds"])
                except (KeyError, TypeError, ValueError):
                    continue
                if outcomes == ["Yes", "No"] and isinstance(ids, list) and len(ids) == 2:
                    pairs.append(ids)
            cursor = body.get("next_cursor")
            if not body["markets"] or not cursor:
                return pairs


def record(url: str, tokens: list[str], path: str, conns: list, counts: list[int], i: int) -> None:
    ws = conns[i] = websocket.create_connection(url, skip_utf8_validation=True, timeout=10,
                                                sockopt=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),))
    ws.send(json.dumps({"assets_ids": tokens[:100], "type": "market", "initial_dump": True, "level": 2}))
    for k in range(100, len(tokens), 100):
        ws.send(json.dumps({"operation": "subscribe", "assets_ids": tokens[k : k + 100], "initial_dump": True}))
    # Blocks in recv until a frame arrives or a PING interval passes; main() stops it by shutting
    # the socket down, so an idle connection costs one wake-up per PING.
    ws.settimeout(PING_EVERY_S)
    mono, wall, pack = time.monotonic_ns, time.time_ns, HEADER.pack
    next_ping = mono() + int(PING_EVERY_S * 1e9)
    n = 0
    with open(path, "wb", buffering=1 << 20) as out:
        while True:
            try:
                _op, data = ws.recv_data()
                rx = mono()
                out.write(pack(rx, wall(), len(data)))
                out.write(data)
                n += 1
            except websocket.WebSocketTimeoutException:
                rx = mono()
            except (websocket.WebSocketException, OSError):
                break
            if rx >= next_ping:
                ws.send("PING")
                next_ping = rx + int(PING_EVERY_S * 1e9)
    counts[i] = n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gamma-base-url", required=True)
    ap.add_argument("--clob-ws-url", required=True)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--duration-seconds", type=float, default=20.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    pairs = fetch_tokens(args.gamma_base_url)
    shards: list[list[str]] = [[] for _ in range(args.shards)]
    for k, pair in enumerate(pairs):
        shards[k % args.shards].extend(pair)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    counts = [0] * args.shards
    conns: list = [None] * args.shards
    threads = [threading.Thread(target=record, args=(args.clob_ws_url, toks, os.path.join(args.out, f"shard_{i:02d}.bin"), conns, counts, i))
               for i, toks in enumerate(shards)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    stop.wait(args.duration_seconds)
    for ws in conns:
        if ws is not None:
            ws.sock.shutdown(socket.SHUT_RDWR)
    for t in threads:
        t.join()
    print(json.dumps({"frames": sum(counts), "seconds": round(time.monotonic() - t0, 3), "tokens": sum(map(len, shards))}), flush=True)


if __name__ == "__main__":
    main()
