"""wire/normalize.py over every frame of the bundled fixtures: a golden file of every row, plus
checks computed here from the raw messages (counts per table, hand-written rows)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import orjson

from pm_arb.wire.normalize import BookRow, MarketEventRow, QuoteRow, TradeRow, normalize

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "fixtures" / "default" / "frames.ndjson"
GOLDEN = Path(__file__).resolve().parent / "golden" / "normalize_default.ndjson.gz"


def fixture_messages():
    """(frame number, index in frame, local_timestamp_us, message) for every JSON message."""
    for n, line in enumerate(FIXTURE.read_bytes().splitlines()):
        frame = orjson.loads(line)
        try:
            doc = orjson.loads(frame["text"])
        except orjson.JSONDecodeError:
            continue
        local_us = int(round(frame["t_ms"] * 1000)) + 1_767_000_000_000_000
        for i, msg in enumerate(doc if isinstance(doc, list) else [doc]):
            yield n, i, local_us, msg


def all_rows() -> list[dict]:
    return [
        {"frame": n, "index": i, "table": type(row).__name__, **row._asdict()}
        for n, i, local_us, msg in fixture_messages()
        for row in normalize(msg, local_us)
    ]


def test_every_fixture_frame_matches_the_golden_rows():
    got = b"".join(orjson.dumps(r) + b"\n" for r in all_rows())
    if os.environ.get("PM_ARB_REGENERATE_GOLDEN"):
        GOLDEN.write_bytes(gzip.compress(got, mtime=0))
    assert got == gzip.decompress(GOLDEN.read_bytes()), "normalize output changed; review, then regenerate with PM_ARB_REGENERATE_GOLDEN=1"


def test_row_counts_follow_the_messages():
    want = {"BookRow": 0, "TradeRow": 0, "QuoteRow": 0, "MarketEventRow": 0}
    for _, _, _, msg in fixture_messages():
        kind = msg.get("event_type")
        if kind == "book":
            want["BookRow"] += len(msg["bids"]) + len(msg["asks"])
        elif kind == "price_change":
            want["BookRow"] += len(msg["price_changes"])
        elif kind == "last_trade_price":
            want["TradeRow"] += 1
        elif kind == "best_bid_ask":
            want["QuoteRow"] += 1
        elif kind in ("tick_size_change", "new_market", "market_resolved"):
            want["MarketEventRow"] += 1
    got = dict.fromkeys(want, 0)
    for r in all_rows():
        got[r["table"]] += 1
    assert got == want
    assert all(want.values()), "the fixture should exercise every table"


def test_hand_written_messages():
    local = 1_767_000_000_500_000
    book = {"event_type": "book", "asset_id": "T1", "market": "0xM", "timestamp": "1767000000123",
            "bids": [{"price": "0.39", "size": "120"}], "asks": [{"price": "0.44", "size": "60"}]}
    assert list(normalize(book, local)) == [
        BookRow("T1", 1_767_000_000_123_000, local, True, "bid", "0.39", "120", "0xM"),
        BookRow("T1", 1_767_000_000_123_000, local, True, "ask", "0.44", "60", "0xM"),
    ]
    change = {"event_type": "price_change", "market": "0xM", "timestamp": "1767000001456", "price_changes": [
        {"asset_id": "T1", "price": "0.41", "size": "300", "side": "BUY"},
        {"asset_id": "T2", "price": "0.59", "size": "0", "side": "SELL"}]}
    assert list(normalize(change, local)) == [
        BookRow("T1", 1_767_000_001_456_000, local, False, "bid", "0.41", "300", "0xM"),
        BookRow("T2", 1_767_000_001_456_000, local, False, "ask", "0.59", "0", "0xM"),
    ]
    legacy = {"event_type": "price_change", "asset_id": "T1", "market": "0xM", "timestamp": "1729000000000",
              "changes": [{"price": "0.40", "side": "SELL", "size": "1500"}]}
    assert list(normalize(legacy, local)) == [BookRow("T1", 1_729_000_000_000_000, local, False, "ask", "0.40", "1500", "0xM")]
    trade = {"event_type": "last_trade_price", "asset_id": "T1", "market": "0xM", "price": "0.42", "size": "35.5",
             "side": "BUY", "timestamp": "1767000003000", "transaction_hash": "0xabc"}
    assert list(normalize(trade, local)) == [TradeRow("T1", 1_767_000_003_000_000, local, "0xabc", "buy", "0.42", "35.5", "0xM")]
    bba = {"event_type": "best_bid_ask", "asset_id": "T1", "market": "0xM", "best_bid": "0", "best_ask": "0.42", "timestamp": "x"}
    assert list(normalize(bba, local)) == [QuoteRow("T1", local, local, None, "0.42", None, None, "0xM")]
    tick = {"event_type": "tick_size_change", "asset_id": "T1", "market": "0xM", "old_tick_size": "0.01",
            "new_tick_size": "0.001", "timestamp": "1767000002000"}
    assert list(normalize(tick, local)) == [
        MarketEventRow("tick_size_change", "T1", "0xM", 1_767_000_002_000_000, local, "0.01", "0.001", None, None)]
    assert list(normalize({"event_type": "book"}, local)) == []
    assert list(normalize(["not", "a", "message"], local)) == []
    assert list(normalize({"event_type": "price_change", "price_changes": [{"asset_id": "T1", "side": "HOLD", "price": "1", "size": "1"}]}, local)) == []
