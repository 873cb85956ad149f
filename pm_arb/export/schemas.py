"""Column names and types of every exported table, in one place.

The normalized tables have exactly the columns of Tardis.dev's downloadable CSV data types
(docs.tardis.dev, "Data Types"), in Tardis's order, so Tardis-format loaders read them; Parquet
adds provenance after them: the market (condition id), the outcome, and the stored frame
(shard, seq) each row came from.
"""

from __future__ import annotations

import pyarrow as pa

EXCHANGE = "polymarket"
US_UTC = pa.timestamp("us", tz="UTC")

TARDIS_COLUMNS = {
    "incremental_book_L2": ["exchange", "symbol", "timestamp", "local_timestamp", "is_snapshot", "side", "price", "amount"],
    "trades": ["exchange", "symbol", "timestamp", "local_timestamp", "id", "side", "price", "amount"],
    "quotes": ["exchange", "symbol", "timestamp", "local_timestamp", "ask_amount", "ask_price", "bid_price", "bid_amount"],
}
PROVENANCE = [("market", pa.string()), ("outcome", pa.string()), ("shard", pa.int16()), ("seq", pa.int64())]

_TYPES = {
    "exchange": pa.string(), "symbol": pa.string(), "timestamp": US_UTC, "local_timestamp": US_UTC,
    "is_snapshot": pa.bool_(), "side": pa.string(), "price": pa.float64(), "amount": pa.float64(), "id": pa.string(),
    "ask_amount": pa.float64(), "ask_price": pa.float64(), "bid_price": pa.float64(), "bid_amount": pa.float64(),
}

SCHEMAS: dict[str, pa.Schema] = {
    name: pa.schema([(c, _TYPES[c]) for c in cols] + PROVENANCE) for name, cols in TARDIS_COLUMNS.items()
}
# Which rebuilt-book event a quote follows: a book change, or Polymarket's own best_bid_ask.
SCHEMAS["quotes"] = SCHEMAS["quotes"].append(pa.field("source", pa.string()))
SCHEMAS["market_events"] = pa.schema([
    ("exchange", pa.string()), ("event_type", pa.string()), ("symbol", pa.string()), ("timestamp", US_UTC),
    ("local_timestamp", US_UTC), ("old_tick_size", pa.string()), ("new_tick_size", pa.string()),
    ("winning_outcome", pa.string()), ("question", pa.string()),
] + PROVENANCE)
# One row per token: the manifest's universe at start ("manifest"), and tokens a universe
# refresh assigned later ("refresh"; from the runlog's market_assigned records, which carry the
# question, slug and Gamma id since issue 14; older runlogs give ids and shards only).
SCHEMAS["markets"] = pa.schema([
    ("token", pa.string()), ("outcome", pa.string()), ("condition_id", pa.string()), ("question", pa.string()),
    ("shard", pa.int16()), ("gamma_id", pa.string()), ("slug", pa.string()), ("source", pa.string()),
])

NORMALIZED = ("incremental_book_L2", "trades", "quotes", "market_events")
ALL_TABLES = ("frames", *NORMALIZED, "markets")
CSV_TABLES = (*NORMALIZED, "markets")  # the frames table is Parquet only: its payloads are bytes
