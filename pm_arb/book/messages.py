"""The market channel's messages as the book fold reads them: typed shapes for msgspec.

Decoding straight into these structs is faster than `orjson.loads` into dicts (no dict per
object, no Python object for fields nobody reads), and reading an attribute is cheaper than
`dict.get`: the audit's hot path (ADR/0010). They accept only the documented shapes
(POLYMARKET_PROTOCOL.md §3): every field known, every value a string (null where the fold
treats null as absent). Anything else (an unknown field, a number, a missing field, the
pre-2025 `changes` schema, another event type, a JSON error) fails to decode here, and the
fold takes its generic orjson path for that frame, with exactly the old semantics. Because
nothing is skipped unread, what decodes here is also valid JSON to orjson, with the same values
(strict grammar, UTF-8 checked in every string, the last of duplicate keys wins in both).
"""

from __future__ import annotations

from typing import Optional, Union

import msgspec

__all__ = ["BestBidAsk", "Book", "Change", "Level", "LastTrade", "PriceChange", "TickSizeChange", "decode"]


class _Strict(msgspec.Struct, forbid_unknown_fields=True):
    pass


class _Event(_Strict, kw_only=True):
    """What every market-channel event carries besides its own fields."""

    market: str = ""
    timestamp: str = ""


class Change(_Strict):
    asset_id: str
    price: str
    size: str
    side: str
    hash: str = ""
    best_bid: Optional[str] = None
    best_ask: Optional[str] = None


class Level(_Strict):
    price: str
    size: str


class PriceChange(_Event, tag_field="event_type", tag="price_change"):
    price_changes: list[Change]


class Book(_Event, tag_field="event_type", tag="book"):
    asset_id: str
    bids: Optional[list[Level]] = None
    asks: Optional[list[Level]] = None
    hash: str = ""


class BestBidAsk(_Event, tag_field="event_type", tag="best_bid_ask"):
    asset_id: str
    best_bid: Optional[str] = None
    best_ask: Optional[str] = None
    spread: str = ""


class LastTrade(_Event, tag_field="event_type", tag="last_trade_price"):
    asset_id: str
    price: str = ""
    size: str = ""
    side: str = ""
    fee_rate_bps: str = ""


class TickSizeChange(_Event, tag_field="event_type", tag="tick_size_change"):
    asset_id: str
    new_tick_size: Optional[str] = None
    old_tick_size: str = ""


Message = Union[PriceChange, Book, BestBidAsk, LastTrade, TickSizeChange]

# A frame is one message or an array of them (the initial dump).
decode = msgspec.json.Decoder(Union[PriceChange, Book, BestBidAsk, LastTrade, TickSizeChange, list[Message]]).decode
