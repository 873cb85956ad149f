"""Polymarket market-channel messages as Tardis.dev rows, one small pure mapper per data type.

Shaped like tardis-node's `src/mappers/polymarket.ts` (`canHandle` / `map`): each mapper says
whether it handles a message and yields rows for it. Rows carry the exchange's timestamp and our
receive time, both in microseconds since the epoch (UTC), the unit of Tardis's CSV files; prices
and amounts stay the decimal strings Polymarket sent, so nothing is rounded here.

This is the reference definition of the normalized tables: `capture-export` computes the same
rows in bulk with a columnar engine, and its tests compare the two.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, NamedTuple

EXCHANGE = "polymarket"
SIDE_OF_LEVEL = {"BUY": "bid", "SELL": "ask"}  # price_change: BUY is a bid level, SELL an ask level
MARKET_EVENT_TYPES = ("tick_size_change", "new_market", "market_resolved")


class BookRow(NamedTuple):
    """incremental_book_L2: exchange, symbol, timestamp, local_timestamp, is_snapshot, side, price, amount."""

    symbol: str
    timestamp: int
    local_timestamp: int
    is_snapshot: bool
    side: str  # "bid" | "ask"
    price: str
    amount: str  # "0" removes the level
    market: str | None


class TradeRow(NamedTuple):
    """trades: exchange, symbol, timestamp, local_timestamp, id, side, price, amount."""

    symbol: str
    timestamp: int
    local_timestamp: int
    id: str  # the transaction hash when the message has one, else ""
    side: str  # the taker's side: "buy" | "sell"
    price: str
    amount: str
    market: str | None


class QuoteRow(NamedTuple):
    """quotes: exchange, symbol, timestamp, local_timestamp, ask_amount, ask_price, bid_price, bid_amount.
    `best_bid_ask` carries no amounts; the export fills them from the rebuilt book."""

    symbol: str
    timestamp: int
    local_timestamp: int
    ask_amount: str | None
    ask_price: str | None
    bid_price: str | None
    bid_amount: str | None
    market: str | None


class MarketEventRow(NamedTuple):
    """market_events (Polymarket only): tick_size_change, new_market, market_resolved."""

    event_type: str
    symbol: str | None  # asset_id for tick_size_change, the winning asset for market_resolved
    market: str | None
    timestamp: int
    local_timestamp: int
    old_tick_size: str | None
    new_tick_size: str | None
    winning_outcome: str | None
    question: str | None


Row = BookRow | TradeRow | QuoteRow | MarketEventRow


def exchange_timestamp_us(message: dict[str, Any], local_timestamp: int) -> int:
    """Polymarket's `timestamp` (epoch milliseconds as text) in microseconds; our receive time
    when it is missing, unreadable or out of range (Tardis: timestamp == local_timestamp means
    'not given')."""
    t = message.get("timestamp")
    if isinstance(t, str) and t.isdigit():
        try:
            us = int(t) * 1000
        except ValueError:  # "²" is a digit to str.isdigit(), not to int()
            return local_timestamp
    elif isinstance(t, int) and not isinstance(t, bool):
        us = t * 1000
    else:
        return local_timestamp
    return us if -(2**63) <= us < 2**63 else local_timestamp  # what a timestamp[us] column holds


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _number(v: Any) -> str | None:
    """A price or size: the exchange's decimal string, when it is one (finite); else None."""
    if not isinstance(v, str):
        return None
    try:
        return v if math.isfinite(float(v)) else None
    except ValueError:
        return None


class BookChangeMapper:
    """`book` -> snapshot rows (one per level); `price_change` -> one update row per item (the
    current schema's `price_changes`, and the legacy single-asset `changes`)."""

    def can_handle(self, message: dict[str, Any]) -> bool:
        return message.get("event_type") in ("book", "price_change")

    def map(self, message: dict[str, Any], local_timestamp: int) -> Iterator[BookRow]:
        ts = exchange_timestamp_us(message, local_timestamp)
        market = _text(message.get("market"))
        if message.get("event_type") == "book":
            symbol = _text(message.get("asset_id"))
            if symbol is None:
                return
            for side, key, legacy in (("bid", "bids", "buys"), ("ask", "asks", "sells")):
                levels = message.get(key, message.get(legacy))
                for level in levels if isinstance(levels, list) else []:
                    if isinstance(level, dict) and _number(level.get("price")) and _number(level.get("size")):
                        yield BookRow(symbol, ts, local_timestamp, True, side, level["price"], level["size"], market)
            return
        items = message.get("price_changes")
        if not isinstance(items, list):  # legacy schema: one asset, `changes` without asset_id
            legacy = message.get("changes")
            items = [dict(c, asset_id=message.get("asset_id")) for c in legacy if isinstance(c, dict)] if isinstance(legacy, list) else []
        for item in items:
            if not isinstance(item, dict):
                continue
            symbol, side = _text(item.get("asset_id")), SIDE_OF_LEVEL.get(item.get("side"))
            price, size = _number(item.get("price")), _number(item.get("size"))
            if symbol and side and price and size:
                yield BookRow(symbol, ts, local_timestamp, False, side, price, size, market)


class TradesMapper:
    def can_handle(self, message: dict[str, Any]) -> bool:
        return message.get("event_type") == "last_trade_price"

    def map(self, message: dict[str, Any], local_timestamp: int) -> Iterator[TradeRow]:
        symbol, price, size = _text(message.get("asset_id")), _number(message.get("price")), _number(message.get("size"))
        side = message.get("side")
        if symbol and price and size and side in ("BUY", "SELL"):
            yield TradeRow(symbol, exchange_timestamp_us(message, local_timestamp), local_timestamp,
                           _text(message.get("transaction_hash")) or "", side.lower(), price, size, _text(message.get("market")))


class BestBidAskMapper:
    """`best_bid_ask` -> a quote without amounts. A zero price is an empty side and is left
    empty, as tardis-node does (`asNonZeroNumberOrUndefined`)."""

    def can_handle(self, message: dict[str, Any]) -> bool:
        return message.get("event_type") == "best_bid_ask"

    def map(self, message: dict[str, Any], local_timestamp: int) -> Iterator[QuoteRow]:
        symbol = _text(message.get("asset_id"))
        if not symbol:
            return
        bid, ask = _number(message.get("best_bid")), _number(message.get("best_ask"))
        bid = None if bid is None or float(bid) == 0 else bid
        ask = None if ask is None or float(ask) == 0 else ask
        yield QuoteRow(symbol, exchange_timestamp_us(message, local_timestamp), local_timestamp, None, ask, bid, None,
                       _text(message.get("market")))


class MarketEventsMapper:
    def can_handle(self, message: dict[str, Any]) -> bool:
        return message.get("event_type") in MARKET_EVENT_TYPES

    def map(self, message: dict[str, Any], local_timestamp: int) -> Iterator[MarketEventRow]:
        kind = message["event_type"]
        symbol = _text(message.get("asset_id")) or _text(message.get("winning_asset_id"))
        yield MarketEventRow(kind, symbol, _text(message.get("market")), exchange_timestamp_us(message, local_timestamp),
                             local_timestamp, _text(message.get("old_tick_size")), _text(message.get("new_tick_size")),
                             _text(message.get("winning_outcome")), _text(message.get("question")))


MAPPERS = (BookChangeMapper(), TradesMapper(), BestBidAskMapper(), MarketEventsMapper())


def normalize(message: Any, local_timestamp: int) -> Iterator[Row]:
    """Every row one decoded message gives (an array frame's elements are mapped one by one by
    the caller, so each row keeps its element's index). `local_timestamp` is our receive time
    in microseconds. Anything that is not a known message gives no rows."""
    if not isinstance(message, dict):
        return
    for mapper in MAPPERS:
        if mapper.can_handle(message):
            yield from mapper.map(message, local_timestamp)

