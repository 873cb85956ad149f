"""What a received frame is, decided cheaply on the receive path and fully off it.

`classify` runs on the socket reader thread for every frame: a few byte comparisons, no JSON.
`scan_market_events` runs on the shard actor's thread, after the frame is already on its way to
the writer: it counts market events and collects the token ids that produced them.
"""

from __future__ import annotations

import orjson

from pm_arb.store.frames_format import FLAG_CONTROL, FLAG_NOT_JSON, OPCODE_TEXT

CONTROL_TEXTS = frozenset({b"PONG", b"INVALID OPERATION", b"NO NEW ASSETS"})
_JSON_STARTS = (b"{"[0], b"["[0])


def classify(opcode: int, payload: bytes) -> int:
    if opcode != OPCODE_TEXT:
        return FLAG_NOT_JSON
    if payload and payload[0] in _JSON_STARTS:
        return 0
    if payload in CONTROL_TEXTS:
        return FLAG_CONTROL
    stripped = payload.strip()
    if stripped and stripped[0] in _JSON_STARTS:
        return 0
    return FLAG_CONTROL if stripped in CONTROL_TEXTS else FLAG_NOT_JSON


def scan_market_events(payload: bytes) -> tuple[int, list[str], bool]:
    """(market events in the frame, token ids they carry, frame was valid JSON)."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return 0, [], False
    items = obj if isinstance(obj, list) else [obj]
    events = 0
    tokens: list[str] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        events += 1
        asset = item.get("asset_id")
        if isinstance(asset, str):
            tokens.append(asset)
        changes = item.get("price_changes")
        if isinstance(changes, list):
            for ch in changes:
                if isinstance(ch, dict) and isinstance(ch.get("asset_id"), str):
                    tokens.append(ch["asset_id"])
    return events, tokens, True
