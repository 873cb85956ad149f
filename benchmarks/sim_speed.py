"""Simulator speed: frames/s one simulated exchange sends to real loopback clients, flat out.

    uv run python benchmarks/sim_speed.py [--seconds 5] [--markets 2000] [--conns 4] [--pool 0]

The simulator runs as `pm_arb sim-exchange` in its own process (as the benchmarks run it);
each client is a websocket-client connection in this process subscribing an equal share of the
tokens and counting frames. The simulator prints what it sent when stopped.
"""

from __future__ import annotations

import argparse
import threading
import time

import orjson
import websocket

import requests
from _harness import sim_sent_fps, start_sim


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--markets", type=int, default=2000)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--pool", type=int, default=0)
    args = ap.parse_args()
    sim, gamma, ws_url = start_sim(args.markets, 10_000_000, pool=args.pool)
    try:
        rows = requests.get(f"{gamma}/markets/keyset", params={"limit": 1000}, timeout=10).json()["markets"]
        toks = [t for r in rows if r.get("clobTokenIds") for t in orjson.loads(r["clobTokenIds"])]
        counts = [0] * args.conns
        stop = threading.Event()

        def client(i: int) -> None:
            ws = websocket.create_connection(ws_url)
            ws.send(orjson.dumps({"assets_ids": toks[i :: args.conns], "type": "market", "initial_dump": True}))
            ws.settimeout(1)
            while not stop.is_set():
                try:
                    ws.recv()
                except websocket.WebSocketTimeoutException:
                    continue
                counts[i] += 1
            ws.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.conns)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        c0, t0 = sum(counts), time.monotonic()
        time.sleep(args.seconds)
        c1, t1 = sum(counts), time.monotonic()
        stop.set()
        for t in threads:
            t.join()
    finally:
        import signal

        cost = sim.finish(signal.SIGINT)
    fps = sim_sent_fps(cost) or 0
    print(f"simulator sent {fps:,.0f} frames/s over the whole run at {cost['cpu_pct']}% of a core: "
          f"{cost['cpu_pct'] * 1e4 / max(fps, 1):.1f} us of CPU per frame sent (ceiling {fps * 100 / max(cost['cpu_pct'], 1e-9):,.0f} frames/s a core)")
    print(f"simulator flat out, pool={args.pool}, {args.conns} connections: {(c1 - c0) / (t1 - t0):,.0f} frames/s received")


if __name__ == "__main__":
    main()
