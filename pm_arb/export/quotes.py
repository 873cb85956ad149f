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

from typing import Any

import pyarrow as pa

from pm_arb.book import BookError, OrderBook
from pm_arb.book.order_book import _KEYS, decimal_of_key, key_of, size_of

_BOOK_COLUMNS = ("shard", "seq", "idx", "local_us", "ts", "market", "symbol", "is_snapshot", "side", "price_s", "size_s")
_TOP_COLUMNS = ("shard", "seq", "idx", "local_us", "ts", "market", "symbol", "best_bid", "best_ask")
# What fold() returns, before Decoder.finish adds exchange, market and outcome.
FOLD_SCHEMA = pa.schema([
    ("symbol", pa.string()), ("timestamp", pa.int64()), ("local_timestamp", pa.int64()),
    ("ask_amount", pa.float64()), ("ask_price", pa.float64()), ("bid_price", pa.float64()), ("bid_amount", pa.float64()),
    ("market", pa.string()), ("shard", pa.int16()), ("seq", pa.int64()), ("source", pa.string()),
])


_EMPTY = (None, None, None)  # one side's top: (price key, price, amount), all None when empty


def _side_top(book: OrderBook, side: str, k: Any) -> tuple:
    """(key, price, amount) of the level at key `k` (the side's best), _EMPTY for an empty side."""
    return _EMPTY if k is None else (k, float(decimal_of_key(k)), float(size_of(book.size_at(side, k))))


class QuoteFold:
    def __init__(self) -> None:
        self.books: dict[tuple[int, str], OrderBook] = {}
        # The last top of each book, [bid, ask] (see _EMPTY). A change below the best bid (above
        # the best ask) cannot move the top nor its amount, and a change on one side leaves the
        # other alone, so only a change at or past the top reads the book again: reading a top
        # parses its size (Decimal), which cost more than the change itself (measured, ADR/0009).
        # Prices are the book's exact keys (pm_arb.book.order_book.key_of), compared as such.
        self.tops: dict[tuple[int, str], list[tuple]] = {}
        self.rejected = 0  # changes the book refused (a price outside [0, 1], say)

    def fold(self, book_rows: pa.Table, best_bid_ask: pa.Table) -> pa.Table:
        """Quote rows for one batch: `book_rows` and `best_bid_ask` from decode.py, each in
        message order, merged here on (seq, idx)."""
        books, tops = self.books, self.tops
        quotes: list[tuple] = []
        add = quotes.append
        rows = zip(*(book_rows.column(n).to_pylist() for n in _BOOK_COLUMNS))
        bbas = list(zip(*(best_bid_ask.column(n).to_pylist() for n in _TOP_COLUMNS)))
        t = 0
        snapshot = None  # (row, key, bids, asks) of a book message whose levels are still coming

        def quote(row, top) -> tuple:
            bid, ask = top
            return (row[6], row[4], row[3], ask[2], ask[1], bid[1], bid[2], row[5], row[0], row[1], "book")

        def best_bid_ask_quote(q) -> tuple:
            key = (q[0], q[6])
            book = books.get(key)
            amounts = [None, None]  # bid, ask: the book's size at the message's prices
            if book is not None:
                top = tops[key]
                for i, text in ((0, q[7]), (1, q[8])):
                    if text is None:
                        continue
                    try:
                        price = key_of(text)
                    except BookError:
                        continue
                    if price == top[i][0]:
                        amounts[i] = top[i][2]
                    else:
                        size = book.size_at("BUY" if i == 0 else "SELL", price)
                        amounts[i] = None if size is None else float(size_of(size))
            return (q[6], q[4], q[3], amounts[1], _float(q[8]), _float(q[7]), amounts[0], q[5], q[0], q[1], "best_bid_ask")

        def apply_snapshot() -> None:
            row, key, bids, asks = snapshot
            book = books[key]
            try:
                book.apply_snapshot(bids, asks)
            except BookError:
                self.rejected += 1
                return
            bid, ask = book.top_keys()
            top = tops[key] = [_side_top(book, "BUY", bid), _side_top(book, "SELL", ask)]
            add(quote(row, top))

        for row in rows:
            shard, seq, idx, _, _, _, symbol, snap, side, price, size = row
            while t < len(bbas) and (bbas[t][1], bbas[t][2]) < (seq, idx):
                if snapshot is not None:
                    apply_snapshot()
                    snapshot = None
                add(best_bid_ask_quote(bbas[t]))
                t += 1
            key = (shard, symbol)
            book = books.get(key)
            if book is None:
                book = books[key] = OrderBook()
                tops[key] = [_EMPTY, _EMPTY]
            if snap:
                if side is None:  # the reset row that starts a book message
                    if snapshot is not None:
                        apply_snapshot()
                    snapshot = (row, key, [], [])
                else:
                    snapshot[2 if side == "bid" else 3].append({"price": price, "size": size})
                continue
            if snapshot is not None:
                apply_snapshot()
                snapshot = None
            wire_side = "BUY" if side == "bid" else "SELL"
            try:
                bid, ask = book.change_top(wire_side, price, size)
            except BookError:
                self.rejected += 1
                continue
            top = tops[key]
            if side == "bid":
                if bid != top[0][0] or bid == _KEYS.get(price):  # the key change_top just cached
                    top[0] = _side_top(book, wire_side, bid)
            elif ask != top[1][0] or ask == _KEYS.get(price):
                top[1] = _side_top(book, wire_side, ask)
            add(quote(row, top))
        if snapshot is not None:
            apply_snapshot()
        quotes.extend(best_bid_ask_quote(q) for q in bbas[t:])
        columns = list(zip(*quotes)) if quotes else [[] for _ in FOLD_SCHEMA]
        return pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(columns, FOLD_SCHEMA)], schema=FOLD_SCHEMA)


def _float(text: str | None) -> float | None:
    return None if text is None else float(text)
