"""Decode a batch of frames into the normalized tables, in bulk.

Payloads are routed by message kind and parsed by PyArrow's JSON reader with each kind's
narrow schema (export/json_route.py); each kind's rows are then shaped with Arrow kernels
(lists flattened, checks as masks), and nothing runs in Python per frame. What the fast path
cannot vouch for (array frames: the initial dumps; anything odd) is decoded by the reference
mappers of `wire/normalize.py` themselves, so the rows are the reference's: tests compare the
two on every fixture frame. Decimal strings become DOUBLE only in the output (`price`,
`amount`); the quotes fold gets the exchange's own strings (`book_rows`, `best_bid_ask`).
"""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pm_arb.export.json_route import bools, braced, route
from pm_arb.export.schemas import EXCHANGE, SCHEMAS
from pm_arb.reader.columns import arrow_of, int64_values
from pm_arb.wire.normalize import BookRow, MarketEventRow, QuoteRow, TradeRow, exchange_timestamp_us, normalize

S, I64, F64 = pa.string(), pa.int64(), pa.float64()
_ROWS = [("pos", I64), ("shard", pa.int16()), ("seq", I64), ("idx", pa.int32()), ("local_us", I64), ("ts", I64), ("market", S)]
# Rows before the tables' final shape; `pos` (row in the batch) and `idx` (message in the
# frame) give message order. `book_rows` and `best_bid_ask` are the quotes fold's inputs
# (export/quotes.py `_BOOK_COLUMNS`, `_TOP_COLUMNS`): a `book` message starts with a reset row
# (side NULL), which the fold needs even when no level is valid.
BOOK = pa.schema(_ROWS + [("symbol", S), ("is_snapshot", pa.bool_()), ("side", S), ("price_s", S), ("size_s", S),
                          ("price", F64), ("amount", F64)])
TOP = pa.schema(_ROWS + [("symbol", S), ("best_bid", S), ("best_ask", S)])
TRADES = pa.schema(_ROWS + [("symbol", S), ("id", S), ("side", S), ("price", F64), ("amount", F64)])
EVENTS = pa.schema(_ROWS + [("event_type", S), ("symbol", S), ("old_tick_size", S), ("new_tick_size", S),
                            ("winning_outcome", S), ("question", S)])
BOOK_ROWS_COLUMNS = ("shard", "seq", "idx", "local_us", "ts", "market", "symbol", "is_snapshot", "side", "price_s", "size_s")
TOP_COLUMNS = ("shard", "seq", "idx", "local_us", "ts", "market", "symbol", "best_bid", "best_ask")
_MAX_MS_DIGITS = 15  # more digits could overflow int64 microseconds: the exact path decides


class Decoder:
    """Turns frame batches into table rows (Arrow)."""

    def __init__(self, tokens: pa.Table) -> None:
        self.token_ids = tokens.column("symbol")
        self.token_market = tokens.column("market")
        self.token_outcome = tokens.column("outcome")

    def close(self) -> None:
        pass

    def decode(self, batch: pa.RecordBatch, tables: set[str]) -> dict[str, pa.Table]:
        """Rows of the requested normalized tables for one batch of frames, plus the quotes
        fold's inputs ("book_rows" with reset rows, "best_bid_ask") when quotes are asked for."""
        kinds = set()
        if tables & {"incremental_book_L2", "quotes"}:
            kinds |= {"book", "price_change"}
        if "quotes" in tables:
            kinds.add("best_bid_ask")
        if "trades" in tables:
            kinds.add("last_trade_price")
        if "market_events" in tables:
            kinds.add("market_event")
        frames = _Frames(batch)
        parts: dict[str, list[pa.Table]] = {"book": [], "top": [], "trades": [], "events": []}
        for messages in frames.messages:
            _decode_messages(messages, kinds, parts, "quotes" in tables)
        out: dict[str, pa.Table] = {}
        if tables & {"incremental_book_L2", "quotes"}:
            book = _in_order(parts["book"], BOOK)
            if "incremental_book_L2" in tables:
                out["incremental_book_L2"] = self._l2(book)
            if "quotes" in tables:
                out["book_rows"] = book.select(BOOK_ROWS_COLUMNS)
                out["best_bid_ask"] = _in_order(parts["top"], TOP).select(TOP_COLUMNS)
        if "trades" in tables:
            t = _in_order(parts["trades"], TRADES)
            out["trades"] = self.finish(_rename(t).drop_columns(["pos", "idx"]), "trades")
        if "market_events" in tables:
            t = _in_order(parts["events"], EVENTS)
            out["market_events"] = self.finish(_rename(t).drop_columns(["pos", "idx"]), "market_events")
        return out

    def _l2(self, rows: pa.Table) -> pa.Table:
        levels = rows.filter(pc.is_valid(rows.column("side")))
        table = pa.table({
            "symbol": levels.column("symbol"), "timestamp": levels.column("ts"), "local_timestamp": levels.column("local_us"),
            "is_snapshot": levels.column("is_snapshot"), "side": levels.column("side"),
            "price": levels.column("price"), "amount": levels.column("amount"),
            "market": levels.column("market"), "shard": levels.column("shard"), "seq": levels.column("seq"),
        })
        return self.finish(table, "incremental_book_L2")

    def finish(self, table: pa.Table, name: str) -> pa.Table:
        """Add exchange, the outcome (and a missing market) from the universe, in schema order."""
        where = pc.index_in(table.column("symbol"), value_set=self.token_ids)
        columns = {"exchange": pa.repeat(pa.scalar(EXCHANGE, S), table.num_rows), **{n: table.column(n) for n in table.column_names}}
        if name == "quotes":  # the fold's times are integers (us)
            columns["timestamp"] = columns["timestamp"].cast(pa.timestamp("us"))
            columns["local_timestamp"] = columns["local_timestamp"].cast(pa.timestamp("us"))
        market = table.column("market")
        if market.null_count:  # a message without its market: the universe's
            columns["market"] = pc.coalesce(market, self.token_market.take(where))
        columns["outcome"] = self.token_outcome.take(where)
        schema = SCHEMAS[name]
        return pa.table({n: columns[n] for n in schema.names}).cast(schema)


class _Frames:
    """A batch's messages, in two sets: the payloads themselves (most are one object each,
    `braced`), and each object of any other text payload that is JSON (an array frame: the
    initial dumps; an object with white space around it), re-serialized by orjson (which
    also checks it is JSON)."""

    def __init__(self, batch: pa.RecordBatch) -> None:
        payload = batch.column("payload")
        shard, seq = batch.column("shard"), batch.column("seq")
        local_us = int64_values(batch.column("rx_wall_ns_utc").cast(I64)) // 1000
        # Text frames the capture did not flag: the only ones that may hold market data.
        text = (np.asarray(batch.column("flags")) == 0) & (np.asarray(batch.column("opcode")) == 1)
        objects = text & braced(payload)
        self.messages = [_Messages(payload, np.arange(len(payload)), np.zeros(len(payload), np.int32), objects, shard, seq, local_us)]
        others = np.nonzero(text & ~objects)[0]
        extra = _unpacked(payload.take(arrow_of(others, I64)).to_pylist(), others.tolist()) if len(others) else []
        if extra:
            self.messages.append(_Messages(pa.array([e[2] for e in extra], pa.binary()), np.array([e[0] for e in extra], np.int64),
                                           np.array([e[1] for e in extra], np.int32), None, shard, seq, local_us))


class _Messages:
    """Messages with the frame each came from (`pos`, its row in the batch) and their index
    in the frame (`idx`), which give message order."""

    def __init__(self, messages: pa.Array, pos: np.ndarray, idx: np.ndarray, eligible: np.ndarray | None,
                 shard: pa.Array, seq: pa.Array, local_us: np.ndarray) -> None:
        self.messages, self.pos, self.idx, self.eligible = messages, pos, idx, eligible
        self.shard, self.seq, self.local_us = shard, seq, local_us

    def head(self, rows: np.ndarray, msgs: pa.Table, ts: np.ndarray) -> dict[str, pa.Array]:
        """The columns every row of a message carries: where it came from, its times, market."""
        pos = self.pos[rows]
        taken = arrow_of(pos, I64)
        local = self.local_us[pos]
        return {"pos": taken, "shard": self.shard.take(taken), "seq": self.seq.take(taken),
                "idx": arrow_of(self.idx[rows], pa.int32()), "local_us": arrow_of(local, I64),
                "ts": arrow_of(ts, I64), "market": _chunk(msgs.column("market"))}


def _decode_messages(messages: _Messages, kinds: set[str], parts: dict[str, list[pa.Table]], for_quotes: bool) -> None:
    """Add the rows of these messages to `parts` (per table, each part in message order).
    Without `for_quotes`, book rows carry no reset rows and no price/size texts (only the
    quotes fold reads them)."""
    routed = route(messages.messages, kinds, messages.eligible)
    exact = [routed.exact]
    for kind, (rows, msgs) in routed.parsed.items():
        msgs = msgs.combine_chunks() if msgs.column(0).num_chunks > 1 else msgs
        ts, odd = _timestamps(msgs.column("timestamp"), messages.local_us[messages.pos[rows]])
        if kind == "book":
            odd |= _valid(msgs.column("buys")) | _valid(msgs.column("sells"))  # legacy keys: bids/buys precedence
        elif kind == "price_change":
            odd |= ~_valid(msgs.column("price_changes")) & _valid(msgs.column("changes"))  # the legacy schema
        if odd.any():
            exact.append(rows[odd])
            rows, msgs, ts = rows[~odd], msgs.filter(bools(~odd)), ts[~odd]
        if not len(rows):
            continue
        head = messages.head(rows, msgs, ts)
        if kind == "book":
            parts["book"] += _book(head, msgs, for_quotes)
        elif kind == "price_change":
            parts["book"].append(_price_changes(head, msgs, for_quotes))
        elif kind == "best_bid_ask":
            parts["top"].append(_best_bid_ask(head, msgs))
        elif kind == "last_trade_price":
            parts["trades"].append(_trades(head, msgs))
        else:
            parts["events"].append(_market_events(head, msgs))
    exact_rows = np.sort(np.concatenate(exact))
    if len(exact_rows):
        for name, table in _exact(messages, exact_rows).items():
            parts[name].append(table)


def _unpacked(payloads: list[bytes], rows: list[int]) -> list[tuple[int, int, bytes]]:
    """(row, index in the frame, object as JSON) of every object in these payloads (arrays,
    or objects after white space); what orjson cannot read has none, as in the reference."""
    out = []
    for row, payload in zip(rows, payloads):
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        for idx, msg in enumerate(doc if isinstance(doc, list) else [doc]):
            if isinstance(msg, dict):
                out.append((row, idx, orjson.dumps(msg)))
    return out


# --- the fast path: one kind's parsed messages to rows ------------------------------------------


def _chunk(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _field(items: pa.StructArray, name: str) -> pa.Array:
    """A struct field, null where the struct itself is (a JSON null in a list)."""
    return pc.struct_field(items, name)


def _valid(col) -> np.ndarray:
    return np.asarray(pc.is_valid(_chunk(col)))


def _mask(arr) -> np.ndarray:
    return np.asarray(_chunk(arr).fill_null(False)).astype(bool)


def _timestamps(ts, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """wire/normalize.py `exchange_timestamp_us` (epoch ms digits as us, else the receive
    time), and which messages the fast path leaves to the reference: digits that are not
    ASCII, or more of them than int64 us can surely hold."""
    ts = _chunk(ts)
    ok = _mask(pc.ascii_is_decimal(ts))
    if ok.all() and pc.max(pc.utf8_length(ts)).as_py() <= _MAX_MS_DIGITS:  # the usual batch
        return np.asarray(ts.cast(I64)) * 1000, np.zeros(len(ts), bool)
    odd = ~ok & _mask(pc.utf8_is_digit(ts)) | ok & (np.asarray(pc.utf8_length(ts).fill_null(0)) > _MAX_MS_DIGITS)
    ok &= ~odd
    if not ok.any():
        return local, odd
    ms = np.asarray(pc.if_else(bools(ok), ts, "0").cast(I64))
    return np.where(ok, ms * 1000, local), odd


def _numbers(col) -> tuple[np.ndarray, pa.Array]:
    """wire/normalize.py `_number`: which texts are finite decimals, and their values. Arrow's
    cast accepts a subset of what Python's float() does; the rest is judged by float() itself."""
    col = _chunk(col)
    try:
        values = col.cast(F64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        values = pa.array([_py_number(v) for v in col.to_pylist()], F64)
    return _mask(pc.is_finite(values)), values


def _py_number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _rows(head: dict[str, pa.Array], parents: pa.Array | None, keep: np.ndarray, schema: pa.Schema, **columns) -> pa.Table:
    """A table in `schema` of the rows `keep` says: message columns from `head`, repeated for
    each row by `parents` (the row's message; None: one row per message), and row columns."""
    sel = None if keep.all() else np.nonzero(keep)[0]
    if parents is None:
        message = None if sel is None else arrow_of(sel, I64)
    else:
        index = np.asarray(parents)
        message = arrow_of(index if sel is None else index[sel], I64)
    out = {}
    for f in schema:
        if f.name in head:
            out[f.name] = head[f.name] if message is None else head[f.name].take(message)
        else:
            c = columns[f.name]
            if c is None:  # a column nobody reads in this export
                out[f.name] = pa.nulls(len(keep) if sel is None else len(sel), f.type)
            else:
                c = _chunk(c)
                out[f.name] = c if sel is None else c.take(arrow_of(sel, I64))
    return pa.table(out, schema=schema)


def _book(head, msgs: pa.Table, for_quotes: bool) -> list[pa.Table]:
    """`book` -> a reset row, then a snapshot row per valid level: bids, then asks. Three parts
    (resets, bids, asks), each in message order, which `_in_order` merges in that order."""
    symbol = _chunk(msgs.column("asset_id"))
    has = _valid(symbol)
    n = len(symbol)
    parts = [_rows(head, None, has, BOOK, symbol=symbol, is_snapshot=pa.repeat(pa.scalar(True), n), side=None,
                   price_s=None, size_s=None, price=None, amount=None)] if for_quotes else []
    for side, key in (("bid", "bids"), ("ask", "asks")):
        levels = _chunk(msgs.column(key))
        items = pc.list_flatten(levels)
        parents = pc.list_parent_indices(levels)
        price_s, size_s = _field(items, "price"), _field(items, "size")
        price_ok, price = _numbers(price_s)
        size_ok, size = _numbers(size_s)
        keep = price_ok & size_ok & has[np.asarray(parents)]
        m = len(items)
        parts.append(_rows(head, parents, keep, BOOK, symbol=symbol.take(parents), is_snapshot=pa.repeat(pa.scalar(True), m),
                           side=pa.repeat(pa.scalar(side), m), price_s=price_s if for_quotes else None,
                           size_s=size_s if for_quotes else None, price=price, amount=size))
    return parts


def _price_changes(head, msgs: pa.Table, for_quotes: bool) -> pa.Table:
    """Each `price_changes` item -> an update row (amount 0 removes the level)."""
    lists = _chunk(msgs.column("price_changes"))
    items = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists)
    symbol = _field(items, "asset_id")
    side = _side(_field(items, "side"))
    price_s, size_s = _field(items, "price"), _field(items, "size")
    price_ok, price = _numbers(price_s)
    size_ok, size = _numbers(size_s)
    keep = _mask(pc.not_equal(symbol, "")) & _valid(side) & price_ok & size_ok
    m = len(items)
    return _rows(head, parents, keep, BOOK, symbol=symbol, is_snapshot=pa.repeat(pa.scalar(False), m), side=side,
                 price_s=price_s if for_quotes else None, size_s=size_s if for_quotes else None, price=price, amount=size)


def _side(side) -> pa.Array:
    """BUY -> bid, SELL -> ask, anything else NULL."""
    side = _chunk(side)
    return pc.if_else(pc.equal(side, "BUY"), "bid", pc.if_else(pc.equal(side, "SELL"), "ask", pa.scalar(None, S)))


def _trades(head, msgs: pa.Table) -> pa.Table:
    symbol, side = _chunk(msgs.column("asset_id")), _chunk(msgs.column("side"))
    price_ok, price = _numbers(msgs.column("price"))
    size_ok, size = _numbers(msgs.column("size"))
    keep = _mask(pc.not_equal(symbol, "")) & _valid(_side(side)) & price_ok & size_ok
    return _rows(head, None, keep, TRADES, symbol=symbol, id=pc.coalesce(_chunk(msgs.column("transaction_hash")), ""),
                 side=pc.utf8_lower(side), price=price, amount=size)


def _best_bid_ask(head, msgs: pa.Table) -> pa.Table:
    """A zero price is an empty side (tardis-node's asNonZeroNumberOrUndefined)."""
    symbol = _chunk(msgs.column("asset_id"))
    prices = {}
    for key in ("best_bid", "best_ask"):
        ok, value = _numbers(msgs.column(key))
        ok &= _mask(pc.not_equal(value, 0.0))
        prices[key] = pc.if_else(bools(ok), _chunk(msgs.column(key)), pa.scalar(None, S))
    return _rows(head, None, _mask(pc.not_equal(symbol, "")), TOP, symbol=symbol, **prices)


def _market_events(head, msgs: pa.Table) -> pa.Table:
    symbol = pc.coalesce(pc.if_else(pc.equal(_chunk(msgs.column("asset_id")), ""), pa.scalar(None, S), _chunk(msgs.column("asset_id"))),
                         _chunk(msgs.column("winning_asset_id")))
    n = msgs.num_rows
    return _rows(head, None, np.ones(n, bool), EVENTS, symbol=symbol,
                 **{k: msgs.column(k) for k in ("event_type", "old_tick_size", "new_tick_size", "winning_outcome", "question")})


def _in_order(parts: list[pa.Table], schema: pa.Schema) -> pa.Table:
    """Parts' rows in message order: by row in the batch, then message in the frame. Each part
    is in message order, and a message's rows are in one part or in consecutive parts (a
    book's resets, bids, asks), so a stable sort by (pos, idx) puts every row in its place."""
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return schema.empty_table()
    if len(parts) == 1:
        return parts[0]
    table = pa.concat_tables(parts)
    pos, idx = int64_values(table.column("pos").combine_chunks()), np.asarray(table.column("idx").combine_chunks())
    order = np.lexsort((idx, pos))
    return table.take(arrow_of(order, I64))


def _rename(t: pa.Table) -> pa.Table:
    return t.rename_columns([{"ts": "timestamp", "local_us": "local_timestamp"}.get(n, n) for n in t.column_names])


# --- the exact path: the reference mappers, for what the fast path leaves -------------------------


def _exact(frames: _Messages, rows: np.ndarray) -> dict[str, pa.Table]:
    """Rows of the messages `rows` by wire/normalize.py itself."""
    book, top, trades, events = [], [], [], []
    payloads = frames.messages.take(arrow_of(rows, I64)).to_pylist()
    positions = frames.pos[rows]
    taken = arrow_of(positions, I64)
    for pos, idx, payload, shard, seq in zip(positions.tolist(), frames.idx[rows].tolist(), payloads,
                                             frames.shard.take(taken).to_pylist(), frames.seq.take(taken).to_pylist()):
        try:
            msg = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(msg, dict):
            continue
        local = int(frames.local_us[pos])
        base = (pos, shard, seq, idx, local)
        if msg.get("event_type") == "book" and isinstance(msg.get("asset_id"), str):
            market = msg.get("market")
            book.append((*base, exchange_timestamp_us(msg, local), market if isinstance(market, str) else None,
                         msg["asset_id"], True, None, None, None, None, None))
        for r in normalize(msg, local):
            ts = r.timestamp
            if isinstance(r, BookRow):
                book.append((*base, ts, r.market, r.symbol, r.is_snapshot, r.side, r.price, r.amount, float(r.price), float(r.amount)))
            elif isinstance(r, QuoteRow):
                top.append((*base, ts, r.market, r.symbol, r.bid_price, r.ask_price))
            elif isinstance(r, TradeRow):
                trades.append((*base, ts, r.market, r.symbol, r.id, r.side, float(r.price), float(r.amount)))
            elif isinstance(r, MarketEventRow):
                events.append((*base, ts, r.market, r.event_type, r.symbol, r.old_tick_size, r.new_tick_size, r.winning_outcome, r.question))
    return {name: _table(rows_, schema) for name, rows_, schema in
            (("book", book, BOOK), ("top", top, TOP), ("trades", trades, TRADES), ("events", events, EVENTS)) if rows_}


def _table(rows: list[tuple], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(zip(*rows), schema)], schema=schema)
