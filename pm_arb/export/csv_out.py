"""Tardis-format CSV: gzip files named as Tardis names its downloads,
`<exchange>_<data_type>_<YYYY-MM-DD>_<symbol>.csv.gz`, one per table, UTC day (of
local_timestamp, as Tardis splits) and symbol; timestamps in microseconds since the epoch.

Built from the export's own Parquet (staged, then removed) by DuckDB, which sorts each day by
symbol and receive time out of core, so a day larger than memory is fine.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv

from pm_arb.export.schemas import EXCHANGE, TARDIS_COLUMNS

_TS_COLUMNS = ("timestamp", "local_timestamp")
# Tardis's files have no quoted fields; the free-text market_events columns need quoting.
_QUOTING = {"market_events": "needed"}


def _select(table: str, names: list[str]) -> str:
    return ", ".join(f"epoch_us({c}) AS {c}" if c in _TS_COLUMNS else c for c in names)


def staging_to_csv(staging: Path, out: Path, tables: list[str]) -> list[Path]:
    written: list[Path] = []
    con = duckdb.connect()
    try:
        for table in tables:
            root = staging / table
            if not any(root.rglob("*.parquet")):
                continue
            columns = TARDIS_COLUMNS.get(table) or [c for c in pq_names(con, root) if c not in ("market", "outcome", "shard", "seq")]
            glob = f"{root.as_posix()}/**/*.parquet"
            dates = [r[0] for r in con.sql(f"SELECT DISTINCT date FROM read_parquet('{glob}', hive_partitioning=true) ORDER BY 1").fetchall()]
            for date in dates:
                day = f"{root.as_posix()}/date={date}/**/*.parquet"
                if table == "market_events":
                    rel = con.sql(f"SELECT {_select(table, columns)} FROM read_parquet('{day}', filename=true, file_row_number=true, hive_partitioning=false) "
                                  "ORDER BY local_timestamp, filename, file_row_number")
                    written.append(_write(rel.to_arrow_reader(1 << 16), out / f"{EXCHANGE}_{table}_{date}.csv.gz", _QUOTING.get(table, "none")))
                    continue
                rel = con.sql(f"SELECT {_select(table, columns)} FROM read_parquet('{day}', filename=true, file_row_number=true, hive_partitioning=false) "
                              "ORDER BY symbol, local_timestamp, filename, file_row_number")
                written += _write_per_symbol(rel.to_arrow_reader(1 << 16), out, table, str(date))
    finally:
        con.close()
    return written


def pq_names(con, root: Path) -> list[str]:
    return [r[0] for r in con.sql(f"DESCRIBE SELECT * FROM read_parquet('{root.as_posix()}/**/*.parquet', hive_partitioning=false)").fetchall()]


def _open_csv(path: Path, schema: pa.Schema, quoting: str):
    """A gzip CSV file with Tardis's plain header line (Arrow would quote the names)."""
    sink = pa.CompressedOutputStream(str(path), "gzip")
    sink.write(",".join(schema.names).encode() + b"\n")
    return sink, pacsv.CSVWriter(sink, schema, write_options=pacsv.WriteOptions(include_header=False, quoting_style=quoting))


def _write(reader: pa.RecordBatchReader, path: Path, quoting: str) -> Path:
    sink, writer = _open_csv(path, reader.schema, quoting)
    try:
        for batch in reader:
            writer.write_batch(batch)
    finally:
        writer.close()
        sink.close()
    return path


def _write_per_symbol(reader: pa.RecordBatchReader, out: Path, table: str, date: str) -> list[Path]:
    """Rows arrive sorted by symbol: one open file at a time, switched when the symbol changes."""
    written: list[Path] = []
    sink = writer = None
    current = None
    try:
        for batch in reader:
            symbols = batch.column(batch.schema.get_field_index("symbol"))
            start = 0
            n = batch.num_rows
            while start < n:
                symbol = symbols[start].as_py()
                stop = start
                # the run of this symbol inside the batch (sorted, so it is contiguous)
                lo, hi = start, n
                while lo < hi:
                    mid = (lo + hi) // 2
                    if symbols[mid].as_py() == symbol:
                        lo = mid + 1
                    else:
                        hi = mid
                stop = lo
                if symbol != current:
                    if writer is not None:
                        writer.close()
                        sink.close()
                    path = out / f"{EXCHANGE}_{table}_{date}_{symbol}.csv.gz"
                    sink, writer = _open_csv(path, batch.schema, "none")
                    written.append(path)
                    current = symbol
                writer.write_batch(batch.slice(start, stop - start))
                start = stop
    finally:
        if writer is not None:
            writer.close()
            sink.close()
    return written


def write_markets_csv(markets: pa.Table, out: Path) -> Path:
    path = out / "markets.csv.gz"
    with pa.CompressedOutputStream(str(path), "gzip") as sink:
        pacsv.write_csv(markets, sink, write_options=pacsv.WriteOptions(quoting_style="needed"))
    return path
