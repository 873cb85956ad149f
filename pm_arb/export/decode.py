"""Decode a batch of frames into the normalized tables with DuckDB, in bulk.

Each payload is parsed once (`from_json` against one struct type that covers every message
kind; `try` turns a malformed payload into no rows), array frames are unnested with each
element's index, and plain SQL then gives the rows of each table. The rules are those of
`wire/normalize.py`, which is the reference: tests compare the two on every fixture frame.
Decimal strings become DOUBLE only in the output (`price`, `amount`); the book fold for quotes
gets the exchange's strings.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

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

_MESSAGES = f"""
CREATE OR REPLACE TEMP TABLE m AS
WITH d AS (
    SELECT shard, seq, wall_ns // 1000 AS local_us,
           try(CASE WHEN starts_with(ltrim(p), '[') THEN from_json(p, '[{MESSAGE_TYPE}]')
                    ELSE [from_json(p, '{MESSAGE_TYPE}')] END) AS l
    FROM (SELECT shard, seq, wall_ns, try(decode(payload)) AS p FROM f WHERE flags = 0 AND opcode = 1)
)
SELECT shard, seq, local_us, unnest(l) AS j, generate_subscripts(l, 1) - 1 AS idx FROM d
"""

# A decimal string a row may carry (wire/normalize.py `_number`).
_NUM = "(TRY_CAST({0} AS DOUBLE) IS NOT NULL AND isfinite(TRY_CAST({0} AS DOUBLE)))"
_TS = ("CASE WHEN regexp_full_match(j.timestamp, '[0-9]{1,15}') THEN CAST(j.timestamp AS BIGINT) * 1000 "
       "ELSE local_us END")

# One row per book change, in the order the book must see them: snapshot levels (part 0 bids,
# 1 asks), then price_change items (2), per message (seq, idx).
_BOOK_ROWS = f"""
CREATE OR REPLACE TEMP TABLE l2 AS
WITH snap AS (
    SELECT shard, seq, idx, local_us, {_TS} AS ts, j.asset_id AS symbol, j.market AS market,
           coalesce(j.bids, j.buys) AS bids, coalesce(j.asks, j.sells) AS asks
    FROM m WHERE j.event_type = 'book' AND j.asset_id IS NOT NULL
), levels AS (
    SELECT shard, seq, idx, local_us, ts, symbol, market, 0 AS part, unnest(bids) AS lv, generate_subscripts(bids, 1) AS k FROM snap
    UNION ALL
    SELECT shard, seq, idx, local_us, ts, symbol, market, 1 AS part, unnest(asks) AS lv, generate_subscripts(asks, 1) AS k FROM snap
), items AS (
    SELECT shard, seq, idx, local_us, {_TS} AS ts, j.market AS market, unnest(j.price_changes) AS it,
           generate_subscripts(j.price_changes, 1) AS k
    FROM m WHERE j.event_type = 'price_change' AND j.price_changes IS NOT NULL
    UNION ALL
    SELECT shard, seq, idx, local_us, {_TS} AS ts, j.market AS market,
           struct_pack(asset_id := j.asset_id, price := c.price, size := c.size, side := c.side) AS it, k
    FROM (SELECT *, unnest(j.changes) AS c, generate_subscripts(j.changes, 1) AS k
          FROM m WHERE j.event_type = 'price_change' AND j.price_changes IS NULL AND j.changes IS NOT NULL)
)
SELECT shard, seq, idx, part, k, local_us, ts, symbol, market, true AS is_snapshot,
       CASE part WHEN 0 THEN 'bid' ELSE 'ask' END AS side, lv.price AS price_s, lv.size AS size_s
FROM levels WHERE {_NUM.format('lv.price')} AND {_NUM.format('lv.size')}
UNION ALL
SELECT shard, seq, idx, 2 AS part, k, local_us, ts, it.asset_id, market, false,
       CASE it.side WHEN 'BUY' THEN 'bid' ELSE 'ask' END, it.price, it.size
FROM items WHERE it.asset_id <> '' AND it.side IN ('BUY', 'SELL') AND {_NUM.format('it.price')} AND {_NUM.format('it.size')}
"""

_L2_OUT = """
SELECT '{ex}' AS exchange, l2.symbol, make_timestamp(ts) AS timestamp, make_timestamp(local_us) AS local_timestamp,
       is_snapshot, side, CAST(price_s AS DOUBLE) AS price, CAST(size_s AS DOUBLE) AS amount,
       coalesce(l2.market, t.market) AS market, t.outcome, shard, seq
FROM l2 LEFT JOIN tokens t ON t.symbol = l2.symbol
ORDER BY seq, idx, part, k
"""

_TRADES_OUT = f"""
SELECT '{{ex}}' AS exchange, j.asset_id AS symbol, make_timestamp({_TS}) AS timestamp, make_timestamp(local_us) AS local_timestamp,
       coalesce(j.transaction_hash, '') AS id, lower(j.side) AS side, CAST(j.price AS DOUBLE) AS price,
       CAST(j.size AS DOUBLE) AS amount, coalesce(j.market, t.market) AS market, t.outcome, shard, seq
FROM m LEFT JOIN tokens t ON t.symbol = j.asset_id
WHERE j.event_type = 'last_trade_price' AND j.asset_id <> '' AND j.side IN ('BUY', 'SELL')
      AND {_NUM.format('j.price')} AND {_NUM.format('j.size')}
ORDER BY seq, idx
"""

_MARKET_EVENTS_OUT = f"""
SELECT '{{ex}}' AS exchange, j.event_type, coalesce(nullif(j.asset_id, ''), j.winning_asset_id) AS symbol,
       make_timestamp({_TS}) AS timestamp, make_timestamp(local_us) AS local_timestamp,
       j.old_tick_size, j.new_tick_size, j.winning_outcome, j.question,
       coalesce(j.market, t.market) AS market, t.outcome, shard, seq
FROM m LEFT JOIN tokens t ON t.symbol = coalesce(nullif(j.asset_id, ''), j.winning_asset_id)
WHERE j.event_type IN ('tick_size_change', 'new_market', 'market_resolved')
ORDER BY seq, idx
"""

# What the quotes fold needs, in book order: snapshots whole (their valid levels), changes one
# by one, and best_bid_ask messages (kind 0 snapshot, 1 change, 2 best_bid_ask).
_BOOK_EVENTS = f"""
WITH snaps AS (
    SELECT shard, seq, idx, 0 AS kind, 0 AS k, local_us, ts, symbol, market,
           list(struct_pack(price := price_s, size := size_s) ORDER BY k) FILTER (WHERE part = 0) AS bids,
           list(struct_pack(price := price_s, size := size_s) ORDER BY k) FILTER (WHERE part = 1) AS asks
    FROM l2 WHERE is_snapshot GROUP BY ALL
), empty_snaps AS (  -- a book with no valid level still empties the book
    SELECT shard, seq, idx, 0 AS kind, 0 AS k, local_us, {_TS} AS ts, j.asset_id AS symbol, j.market AS market,
           NULL AS bids, NULL AS asks
    FROM m WHERE j.event_type = 'book' AND j.asset_id IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM l2 WHERE l2.is_snapshot AND l2.seq = m.seq AND l2.idx = m.idx)
)
SELECT shard, seq, idx, kind, k, local_us, ts, symbol, market, NULL AS side, NULL AS price_s, NULL AS size_s, bids, asks,
       NULL AS best_bid, NULL AS best_ask FROM snaps
UNION ALL
SELECT shard, seq, idx, kind, k, local_us, ts, symbol, market, NULL, NULL, NULL, bids, asks, NULL, NULL FROM empty_snaps
UNION ALL
SELECT shard, seq, idx, 1, k, local_us, ts, symbol, market, CASE side WHEN 'bid' THEN 'BUY' ELSE 'SELL' END, price_s, size_s,
       NULL, NULL, NULL, NULL FROM l2 WHERE NOT is_snapshot
UNION ALL
SELECT shard, seq, idx, 2, 0, local_us, {_TS}, j.asset_id, j.market, NULL, NULL, NULL, NULL, NULL,
       CASE WHEN {_NUM.format('j.best_bid')} AND CAST(j.best_bid AS DOUBLE) <> 0 THEN j.best_bid END,
       CASE WHEN {_NUM.format('j.best_ask')} AND CAST(j.best_ask AS DOUBLE) <> 0 THEN j.best_ask END
FROM m WHERE j.event_type = 'best_bid_ask' AND j.asset_id <> ''
ORDER BY seq, idx, kind, k
"""


class Decoder:
    """One DuckDB connection that turns frame batches into table rows (Arrow)."""

    def __init__(self, tokens: pa.Table, threads: int = 1) -> None:
        self.con = duckdb.connect(config={"threads": threads})
        self.con.register("tokens", tokens)

    def close(self) -> None:
        self.con.close()

    def decode(self, batch: pa.RecordBatch, tables: set[str]) -> dict[str, pa.Table]:
        """Rows of the requested normalized tables for one batch of frames; "book_events" is
        the quotes fold's input (export/quotes.py)."""
        frames = pa.table({
            "shard": batch.column("shard"), "seq": batch.column("seq"),
            "wall_ns": batch.column("rx_wall_ns_utc").cast(pa.int64()),
            "flags": batch.column("flags"), "opcode": batch.column("opcode"), "payload": batch.column("payload"),
        })
        con = self.con
        con.register("f", frames)
        try:
            con.execute(_MESSAGES)
            out: dict[str, pa.Table] = {}
            if tables & {"incremental_book_L2", "quotes"}:
                con.execute(_BOOK_ROWS)
            if "incremental_book_L2" in tables:
                out["incremental_book_L2"] = self._query(_L2_OUT, "incremental_book_L2")
            if "trades" in tables:
                out["trades"] = self._query(_TRADES_OUT, "trades")
            if "market_events" in tables:
                out["market_events"] = self._query(_MARKET_EVENTS_OUT, "market_events")
            if "quotes" in tables:
                out["book_events"] = con.sql(_BOOK_EVENTS).to_arrow_table()
            return out
        finally:
            con.unregister("f")

    def _query(self, sql: str, table: str) -> pa.Table:
        return self.con.sql(sql.replace("{ex}", EXCHANGE)).to_arrow_table().cast(SCHEMAS[table])
