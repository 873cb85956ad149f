"""Decode a batch of frames into the normalized tables with DuckDB, in bulk.

Each payload is parsed once (`from_json` against one struct type that covers every message
kind; `try` turns a malformed payload into no rows). Single-object frames and array frames (the
initial book dumps) take separate paths, so the common case needs no unnest and no sort. Each
message then becomes a list of rows in SQL, and one `unnest` gives them in message order. The
rules are those of `wire/normalize.py`, the reference: tests compare the two on every fixture
frame. Decimal strings become DOUBLE only in the output (`price`, `amount`); the quotes fold gets
the exchange's own strings.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from pm_arb.export.schemas import EXCHANGE, SCHEMAS

_LEVELS = '[{"price":"VARCHAR","size":"VARCHAR"}]'
MESSAGE_TYPE = (
    '{"event_type":"VARCHAR","asset_id":"VARCHAR","market":"VARCHAR","timestamp":"VARCHAR",'
    f'"bids":{_LEVELS},"asks":{_LEVELS},"buys":{_LEVELS},"sells":{_LEVELS},'
    '"price_changes":[{"asset_id":"VARCHAR","price":"VARCHAR","size":"VARCHAR","side":"VARCHAR"}],'
    '"changes":[{"price":"VARCHAR","size":"VARCHAR","side":"VARCHAR"}],'
    '"price":"VARCHAR","size":"VARCHAR","side":"VARCHAR","transaction_hash":"VARCHAR",'
    '"best_bid":"VARCHAR","best_ask":"VARCHAR","old_tick_size":"VARCHAR","new_tick_size":"VARCHAR",'
    '"winning_asset_id":"VARCHAR","winning_outcome":"VARCHAR","question":"VARCHAR"}'
)

_TEXT = "SELECT shard, seq, wall_ns // 1000 AS local_us, try(decode(payload)) AS p FROM {frames} WHERE flags = 0 AND opcode = 1"
# The message's fields become columns (`unnest` of the struct), so each query below reads only
# the columns it uses (a STRUCT column is read whole: measured 2x slower for the small tables).
_OBJECTS = f"""
CREATE OR REPLACE TEMP TABLE m AS
SELECT shard, seq, local_us, 0 AS idx, unnest(try(from_json(p, '{MESSAGE_TYPE}')))
FROM ({_TEXT.format(frames="f")}) WHERE NOT starts_with(ltrim(p), '[')
"""
_ARRAYS = f"""
CREATE OR REPLACE TEMP TABLE a AS
SELECT shard, seq, local_us, idx, unnest(j) FROM (
    SELECT shard, seq, local_us, unnest(l) AS j, generate_subscripts(l, 1) - 1 AS idx
    FROM (SELECT shard, seq, local_us, try(from_json(p, '[{MESSAGE_TYPE}]')) AS l FROM ({_TEXT.format(frames="fa")}) WHERE starts_with(ltrim(p), '[')))
"""

# A decimal string a row may carry (wire/normalize.py `_number`).
_NUM = "(TRY_CAST({0} AS DOUBLE) IS NOT NULL AND isfinite(TRY_CAST({0} AS DOUBLE)))"
_TS = ("CASE WHEN regexp_full_match(j.timestamp, '[0-9]{1,15}') THEN CAST(j.timestamp AS BIGINT) * 1000 "
       "ELSE local_us END")

# Every book change of a message as one list, in the order the book must see them. A `book`
# starts with a reset row (side NULL): the quotes fold needs it even when no level is valid.
_BOOK_ROWS = f"""
SELECT shard, seq, idx, local_us, ts, market, r.symbol AS symbol, r.snap AS is_snapshot, r.side AS side,
       r.price AS price_s, r.size AS size_s
FROM (
    SELECT shard, seq, idx, local_us, {_TS} AS ts, j.market AS market, unnest(CASE
        WHEN j.event_type = 'book' AND j.asset_id IS NOT NULL THEN list_concat(
            [{{'symbol': j.asset_id, 'snap': true, 'side': NULL::VARCHAR, 'price': NULL::VARCHAR, 'size': NULL::VARCHAR}}],
            list_transform(coalesce(j.bids, j.buys), lambda v: {{'symbol': j.asset_id, 'snap': true, 'side': 'bid', 'price': v.price, 'size': v.size}}),
            list_transform(coalesce(j.asks, j.sells), lambda v: {{'symbol': j.asset_id, 'snap': true, 'side': 'ask', 'price': v.price, 'size': v.size}}))
        WHEN j.event_type = 'price_change' AND j.price_changes IS NOT NULL THEN
            list_transform(j.price_changes, lambda v: {{'symbol': v.asset_id, 'snap': false,
                'side': CASE v.side WHEN 'BUY' THEN 'bid' WHEN 'SELL' THEN 'ask' END, 'price': v.price, 'size': v.size}})
        WHEN j.event_type = 'price_change' THEN
            list_transform(j.changes, lambda v: {{'symbol': j.asset_id, 'snap': false,
                'side': CASE v.side WHEN 'BUY' THEN 'bid' WHEN 'SELL' THEN 'ask' END, 'price': v.price, 'size': v.size}})
    END) AS r
    FROM {{src}} WHERE j.event_type IN ('book', 'price_change')
)
WHERE (r.snap AND r.side IS NULL)
   OR (r.side IS NOT NULL AND (r.snap OR r.symbol <> '') AND {_NUM.format('r.price')} AND {_NUM.format('r.size')})
"""

_TRADES = f"""
SELECT j.asset_id AS symbol, {_TS} AS timestamp, local_us AS local_timestamp, coalesce(j.transaction_hash, '') AS id,
       lower(j.side) AS side, CAST(j.price AS DOUBLE) AS price, CAST(j.size AS DOUBLE) AS amount, j.market AS market, shard, seq
FROM {{src}} WHERE j.event_type = 'last_trade_price' AND j.asset_id <> '' AND j.side IN ('BUY', 'SELL')
      AND {_NUM.format('j.price')} AND {_NUM.format('j.size')}
"""

_MARKET_EVENTS = f"""
SELECT j.event_type, coalesce(nullif(j.asset_id, ''), j.winning_asset_id) AS symbol, {_TS} AS timestamp,
       local_us AS local_timestamp, j.old_tick_size, j.new_tick_size, j.winning_outcome, j.question, j.market AS market, shard, seq
FROM {{src}} WHERE j.event_type IN ('tick_size_change', 'new_market', 'market_resolved')
"""

_BEST_BID_ASK = f"""
SELECT shard, seq, idx, local_us, {_TS} AS ts, j.market AS market, j.asset_id AS symbol,
       CASE WHEN {_NUM.format('j.best_bid')} AND CAST(j.best_bid AS DOUBLE) <> 0 THEN j.best_bid END AS best_bid,
       CASE WHEN {_NUM.format('j.best_ask')} AND CAST(j.best_ask AS DOUBLE) <> 0 THEN j.best_ask END AS best_ask
FROM {{src}} WHERE j.event_type = 'best_bid_ask' AND j.asset_id <> ''
"""


class Decoder:
    """One DuckDB connection that turns frame batches into table rows (Arrow)."""

    def __init__(self, tokens: pa.Table, threads: int = 1) -> None:
        self.con = duckdb.connect(config={"threads": threads})
        self.token_ids = tokens.column("symbol")
        self.token_market = tokens.column("market")
        self.token_outcome = tokens.column("outcome")

    def close(self) -> None:
        self.con.close()

    def decode(self, batch: pa.RecordBatch, tables: set[str]) -> dict[str, pa.Table]:
        """Rows of the requested normalized tables for one batch of frames, plus the quotes
        fold's inputs ("book_rows" with reset rows, "best_bid_ask") when quotes are asked for."""
        frames = pa.table({
            "shard": batch.column("shard"), "seq": batch.column("seq"),
            "wall_ns": batch.column("rx_wall_ns_utc").cast(pa.int64()),
            "flags": batch.column("flags"), "opcode": batch.column("opcode"), "payload": batch.column("payload"),
        })
        con = self.con
        con.register("f", frames)
        # Array frames (initial dumps) are rare: only frames that do not start with "{" can be
        # one, so only those are parsed a second time, as arrays (the SQL applies the exact rule).
        maybe_arrays = frames.filter(pc.not_equal(pc.binary_slice(frames.column("payload"), 0, 1), pa.scalar(b"{", pa.binary())))
        try:
            con.execute(_OBJECTS)
            has_arrays = False
            if maybe_arrays.num_rows:
                con.register("fa", maybe_arrays)
                con.execute(_ARRAYS)
                con.unregister("fa")
                has_arrays = con.sql("SELECT count(*) FROM a").fetchall()[0][0] > 0
            # Message order is (seq, idx); arrays are rare, so only then a sort. The alias j
            # names the message's fields in the queries.
            src = "(SELECT * FROM m UNION ALL SELECT * FROM a ORDER BY seq, idx) AS j" if has_arrays else "m AS j"
            out: dict[str, pa.Table] = {}
            if tables & {"incremental_book_L2", "quotes"}:
                rows = con.sql(_BOOK_ROWS.replace("{src}", src)).to_arrow_table()
                if "incremental_book_L2" in tables:
                    out["incremental_book_L2"] = self._l2(rows)
                if "quotes" in tables:
                    out["book_rows"] = rows
                    out["best_bid_ask"] = con.sql(_BEST_BID_ASK.replace("{src}", src)).to_arrow_table()
            if "trades" in tables:
                out["trades"] = self.finish(con.sql(_TRADES.replace("{src}", src)).to_arrow_table(), "trades")
            if "market_events" in tables:
                out["market_events"] = self.finish(con.sql(_MARKET_EVENTS.replace("{src}", src)).to_arrow_table(), "market_events")
            return out
        finally:
            con.unregister("f")

    def _l2(self, rows: pa.Table) -> pa.Table:
        levels = rows.filter(pc.is_valid(rows.column("side")))
        table = pa.table({
            "symbol": levels.column("symbol"), "timestamp": levels.column("ts"), "local_timestamp": levels.column("local_us"),
            "is_snapshot": levels.column("is_snapshot"), "side": levels.column("side"),
            "price": levels.column("price_s").cast(pa.float64()), "amount": levels.column("size_s").cast(pa.float64()),
            "market": levels.column("market"), "shard": levels.column("shard"), "seq": levels.column("seq"),
        })
        return self.finish(table, "incremental_book_L2")

    def finish(self, table: pa.Table, name: str) -> pa.Table:
        """Add exchange, the outcome (and a missing market) from the universe, in schema order."""
        where = pc.index_in(table.column("symbol"), value_set=self.token_ids)
        columns = {"exchange": pa.array([EXCHANGE] * table.num_rows, pa.string()), **{n: table.column(n) for n in table.column_names}}
        if name == "quotes":  # the fold's times are integers (us)
            columns["timestamp"] = columns["timestamp"].cast(pa.timestamp("us"))
            columns["local_timestamp"] = columns["local_timestamp"].cast(pa.timestamp("us"))
        columns["market"] = pc.coalesce(table.column("market"), self.token_market.take(where))
        columns["outcome"] = self.token_outcome.take(where)
        schema = SCHEMAS[name]
        return pa.table({n: columns[n] for n in schema.names}).cast(schema)
