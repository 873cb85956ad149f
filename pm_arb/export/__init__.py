"""`capture-export`: a run as Parquet (frames, Tardis-format tables, market events, markets) or
Tardis-format CSV. Reads only through `pm_arb.reader`, maps messages as `wire/normalize.py`
defines, and folds quotes with `pm_arb.book`. Its engines (PyArrow for the decode and the
writers, DuckDB for the CSV day sort) load with the modules that need them, never with
`pm_arb` itself (ADR/0009)."""

__all__ = ["csv_out", "decode", "forked_workers", "json_route", "parquet_out", "quotes", "run_export", "schemas"]
