"""Quotes: the top of each token's rebuilt book after every book change, and at every
best_bid_ask message (whose amounts the rebuilt book supplies).

The books are `pm_arb.book.OrderBook`, the one book the loss audit uses too. A book is kept per
(shard, token): each connection's stream is its own sequence of snapshots and changes, and a
token that moves to another shard starts there with a fresh snapshot.

This fold is the one Python loop per book change in the export (a book is a sequential
state); it keeps the loop to the book calls and one tuple per quote, and leaves exchange,
market and outcome to Arrow (decode.py `Decoder.finish`).
"""

from __future__ import annotations

from decimal import Decimal

import pyarrow as pa

from pm_arb.book import BookError, OrderBook, price_of

_BOOK_COLUMNS = ("shard", "seq", "idx", "local_us", "ts", "market", "symbol", "is_snapshot", "side", "price_s", "size_s")
_TOP_COLUMNS = ("shard", "seq", "idx", "local_us", "ts", "market", "symbol", "best_bid", "best_ask")
# What fold() returns, before Decoder.finish adds exchange, market and outcome.
FOLD_SCHEMA = pa.schema([
    ("symbol", pa.string()), ("timestamp", pa.int64()), ("local_timestamp", pa.int64()),
    ("ask_amount", pa.float64()), ("ask_price", pa.float64()), ("bid_price", pa.float64()), ("bid_amount", pa.float64()),
    ("market", pa.string()), ("shard", pa.int16()), ("seq", pa.int64()), ("source", pa.string()),
])


class QuoteFold:
    def __init__(self) -> None:
        self.books: dict[tuple[int, str], OrderBook] = {}
        self.rejected = 0  # changes the book refused (a price outside [0, 1], say)

    def fold(self, book_rows: pa.Table, best_bid_ask: pa.Table) -> pa.Table:
        """Quote rows for one batch: `book_rows` and `best_bid_ask` from decode.py, each in
        message order, merged here on (seq, idx)."""
        books = self.books
        quotes: list[tuple] = []
        add = quotes.append
        rows = zip(*(book_rows.column(n).to_pylist() for n in _BOOK_COLUMNS))
        tops = list(zip(*(best_bid_ask.column(n).to_pylist() for n in _TOP_COLUMNS)))
        t = 0
        snapshot = None  # (row, book, bids, asks) of a book message whose levels are still coming

        def top_of(row, book) -> tuple:
            bb, ba = book.best_bid(), book.best_ask()
            return (row[6], row[4], row[3], float(ba[1]) if ba else None, float(ba[0]) if ba else None,
                    float(bb[0]) if bb else None, float(bb[1]) if bb else None, row[5], row[0], row[1], "book")

        def best_bid_ask_quote(top) -> tuple:
            book = books.get((top[0], top[6]))
            bids, asks = book.levels() if book is not None else ({}, {})
            return (top[6], top[4], top[3], _size_at(asks, top[8]), _float(top[8]), _float(top[7]), _size_at(bids, top[7]),
                    top[5], top[0], top[1], "best_bid_ask")

        def apply_snapshot() -> None:
            row, book, bids, asks = snapshot
            try:
                book.apply_snapshot(bids, asks)
            except BookError:
                self.rejected += 1
                return
            add(top_of(row, book))

        for row in rows:
            shard, seq, idx, _, _, _, symbol, snap, side, price, size = row
            while t < len(tops) and (tops[t][1], tops[t][2]) < (seq, idx):
                if snapshot is not None:
                    apply_snapshot()
                    snapshot = None
                add(best_bid_ask_quote(tops[t]))
                t += 1
            book = books.get((shard, symbol))
            if book is None:
                book = books[(shard, symbol)] = OrderBook()
            if snap:
                if side is None:  # the reset row that starts a book message
                    if snapshot is not None:
                        apply_snapshot()
                    snapshot = (row, book, [], [])
                else:
                    snapshot[2 if side == "bid" else 3].append({"price": price, "size": size})
                continue
            if snapshot is not None:
                apply_snapshot()
                snapshot = None
            try:
                book.apply_change("BUY" if side == "bid" else "SELL", price, size)
            except BookError:
                self.rejected += 1
                continue
            add(top_of(row, book))
        if snapshot is not None:
            apply_snapshot()
        quotes.extend(best_bid_ask_quote(top) for top in tops[t:])
        columns = list(zip(*quotes)) if quotes else [[] for _ in FOLD_SCHEMA]
        return pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(columns, FOLD_SCHEMA)], schema=FOLD_SCHEMA)


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
