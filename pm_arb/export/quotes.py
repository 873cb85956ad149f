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

    def fold(self, book_rows: pa.Table, best_bid_ask: pa.Table) -> pa.Table:
        """Quote rows for one batch: `book_rows` and `best_bid_ask` from decode.py, each in
        message order, merged here on (seq, idx)."""
        out: dict[str, list] = {name: [] for name in SCHEMAS["quotes"].names}
        books = self.books
        tokens = self.tokens
        rows = zip(*(book_rows.column(n).to_pylist() for n in ("shard", "seq", "idx", "local_us", "ts", "market", "symbol", "is_snapshot", "side", "price_s", "size_s")))
        tops = list(zip(*(best_bid_ask.column(n).to_pylist() for n in ("shard", "seq", "idx", "local_us", "ts", "market", "symbol", "best_bid", "best_ask"))))
        t = 0
        pending_snapshot = None  # (key, book, row) of a book message whose levels are still coming

        def emit(shard, seq, local_us, ts, market, symbol, ask_a, ask_p, bid_p, bid_a, source) -> None:
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

        def emit_top(row, book) -> None:
            bb, ba = book.best_bid(), book.best_ask()
            emit(row[0], row[1], row[3], row[4], row[5], row[6], float(ba[1]) if ba else None, float(ba[0]) if ba else None,
                 float(bb[0]) if bb else None, float(bb[1]) if bb else None, "book")

        def emit_best_bid_ask(top) -> None:
            book = books.get((top[0], top[6]))
            bids, asks = book.levels() if book is not None else ({}, {})
            emit(top[0], top[1], top[3], top[4], top[5], top[6], _size_at(asks, top[8]), _float(top[8]), _float(top[7]),
                 _size_at(bids, top[7]), "best_bid_ask")

        def flush_snapshot() -> None:
            key, book, row, bids, asks = pending_snapshot
            try:
                book.apply_snapshot(bids, asks)
            except BookError:
                self.rejected += 1
                return
            emit_top(row, book)

        for row in rows:
            shard, seq, idx, _, _, _, symbol, snap, side, price, size = row
            while t < len(tops) and (tops[t][1], tops[t][2]) < (seq, idx):
                if pending_snapshot is not None:
                    flush_snapshot()
                    pending_snapshot = None
                emit_best_bid_ask(tops[t])
                t += 1
            key = (shard, symbol)
            book = books.get(key)
            if book is None:
                book = books[key] = OrderBook()
            if snap:
                if side is None:  # the reset row that starts a book message
                    if pending_snapshot is not None:
                        flush_snapshot()
                    pending_snapshot = (key, book, row, [], [])
                else:
                    pending_snapshot[3 if side == "bid" else 4].append({"price": price, "size": size})
                continue
            if pending_snapshot is not None:
                flush_snapshot()
                pending_snapshot = None
            try:
                book.apply_change("BUY" if side == "bid" else "SELL", price, size)
            except BookError:
                self.rejected += 1
                continue
            emit_top(row, book)
        if pending_snapshot is not None:
            flush_snapshot()
        for top in tops[t:]:
            emit_best_bid_ask(top)
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
