"""Quotes: the top of each token's rebuilt book after every book change, and at every
best_bid_ask message (whose amounts the rebuilt book supplies).

The books are `pm_arb.book.OrderBook`, the one book the loss audit uses too. A book is kept per
(shard, token): each connection's stream is its own sequence of snapshots and changes, and a
token that moves to another shard starts there with a fresh snapshot.
"""

from __future__ import annotations

from decimal import Decimal

import pyarrow as pa

from pm_arb.book import BookError, OrderBook, price_of
from pm_arb.export.schemas import EXCHANGE, SCHEMAS


class QuoteFold:
    def __init__(self, tokens: dict[str, tuple[str, str]]) -> None:
        self.tokens = tokens  # token -> (market, outcome)
        self.books: dict[tuple[int, str], OrderBook] = {}
        self.rejected = 0  # changes the book refused (a price outside [0, 1], say)

    def fold(self, events: pa.Table) -> pa.Table:
        """Quote rows for one batch of book events (decode.py `_BOOK_EVENTS`, in book order)."""
        cols = {name: events.column(name).to_pylist() for name in
                ("shard", "seq", "kind", "local_us", "ts", "symbol", "market", "side", "price_s", "size_s", "bids", "asks", "best_bid", "best_ask")}
        out: dict[str, list] = {name: [] for name in SCHEMAS["quotes"].names}
        books = self.books
        tokens = self.tokens
        for shard, seq, kind, local_us, ts, symbol, market, side, price, size, bids, asks, best_bid, best_ask in zip(*cols.values()):
            key = (shard, symbol)
            book = books.get(key)
            if book is None:
                book = books[key] = OrderBook()
            try:
                if kind == 0:
                    book.apply_snapshot(bids or (), asks or ())
                elif kind == 1:
                    book.apply_change(side, price, size)
            except BookError:
                self.rejected += 1
                continue
            if kind == 2:
                bid_p = _float(best_bid)
                ask_p = _float(best_ask)
                bids_now, asks_now = book.levels()
                bid_a = _size_at(bids_now, best_bid)
                ask_a = _size_at(asks_now, best_ask)
                source = "best_bid_ask"
            else:
                bb, ba = book.best_bid(), book.best_ask()
                bid_p, bid_a = (float(bb[0]), float(bb[1])) if bb else (None, None)
                ask_p, ask_a = (float(ba[0]), float(ba[1])) if ba else (None, None)
                source = "book"
            known = tokens.get(symbol)
            out["exchange"].append(EXCHANGE)
            out["symbol"].append(symbol)
            out["timestamp"].append(ts)
            out["local_timestamp"].append(local_us)
            out["ask_amount"].append(ask_a)
            out["ask_price"].append(ask_p)
            out["bid_price"].append(bid_p)
            out["bid_amount"].append(bid_a)
            out["market"].append(market if market is not None else (known[0] if known else None))
            out["outcome"].append(known[1] if known else None)
            out["shard"].append(shard)
            out["seq"].append(seq)
            out["source"].append(source)
        return pa.table(out, schema=_INPUT_SCHEMA).cast(SCHEMAS["quotes"])


_INPUT_SCHEMA = pa.schema([pa.field(f.name, pa.int64() if f.name in ("timestamp", "local_timestamp") else f.type) for f in SCHEMAS["quotes"]])


def _float(text: str | None) -> float | None:
    return None if text is None else float(text)


def _size_at(levels: dict[Decimal, Decimal], price: str | None) -> float | None:
    if price is None:
        return None
    try:
        size = levels.get(price_of(price))
    except BookError:
        return None
    return None if size is None else float(size)
