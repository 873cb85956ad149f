"""What a received frame is, decided cheaply, without parsing JSON on the capture path.

`frame_shape` is the one rule for flags and market events; it backs the reader thread's
per-frame path (`ReaderSink.frame` inlines its common case: a `{...}` text frame is one event).
`asset_ids` runs on the shard actor's thread, after the frame is on its way to the writer. All
scan bytes at C speed (a full JSON parse costs ~4 us a frame, measured).
Full parsing is for analysis of the recorded bytes, which are kept exactly as received.
"""

from __future__ import annotations

import re

import orjson

from pm_arb.store.frames_format import FLAG_CONTROL, FLAG_NOT_JSON, OPCODE_TEXT

CONTROL_TEXTS = frozenset({b"PONG", b"INVALID OPERATION", b"NO NEW ASSETS"})


_EVENT_KEY = b'"event_type"'
_ASSET_ID = re.compile(rb'"asset_id"\s*:\s*"([^"]+)"')
_CLOSER = {b"{": b"}", b"[": b"]"}
_LONGEST_CONTROL = max(map(len, CONTROL_TEXTS))


def frame_shape(opcode: int, payload: bytes) -> tuple[int, int]:
    """(flags, market events): the one rule for what a frame is and whether it is market data.

    Judged by the first and last non-whitespace bytes, never by a parse (ADR/0007):
    - a binary frame: not JSON, 0 events;
    - exactly `PONG`, `INVALID OPERATION` or `NO NEW ASSETS` (surrounding whitespace allowed):
      control text, 0 events;
    - `{ ... }`: one market event (the channel's single-event message);
    - `[ ... ]`: one event per `"event_type"` key, so the empty dump `[]` carries none;
    - anything else, including a JSON start without its matching end (a truncated message):
      not JSON, 0 events.
    Only a frame with events counts as market data: for confirmation, the data-idle watchdog
    and coverage alike. `ReaderSink.frame` inlines the `{...}` case. A frame that starts like
    JSON is never hashed or copied (initial dumps can be megabytes).
    """
    if opcode != OPCODE_TEXT:
        return FLAG_NOT_JSON, 0
    close = _CLOSER.get(payload[:1])
    if close is None:  # control text, leading whitespace, or garbage
        payload = payload.strip()
        if len(payload) <= _LONGEST_CONTROL and payload in CONTROL_TEXTS:
            return FLAG_CONTROL, 0
        close = _CLOSER.get(payload[:1])
        if close is None:
            return FLAG_NOT_JSON, 0
    elif payload[-1:].isspace():
        payload = payload.rstrip()
    if len(payload) < 2 or payload[-1:] != close:
        return FLAG_NOT_JSON, 0
    if close == b"}":
        return 0, 1
    return 0, payload.count(_EVENT_KEY)


def market_events(payload: bytes) -> int:
    """Market events in a text frame (0 for control text, garbage, `[]`): `frame_shape`'s count."""
    return frame_shape(OPCODE_TEXT, payload)[1]


def asset_ids(payload: bytes) -> list[str]:
    """Token ids the frame's events carry (`asset_id`, including inside `price_changes`)."""
    return [m.decode("ascii", "replace") for m in _ASSET_ID.findall(payload)]


def scan_market_events(payload: bytes) -> tuple[int, list[str], bool]:
    """Reference implementation by full parse: (events, token ids, valid JSON). Used by tests."""
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
