"""Which engine parses Polymarket payloads into typed columns fastest (ADR/0009 section 6)?

    uv run python benchmarks/decode_engines.py [--run-dir DIR] [--rounds 5]

Each engine parses the same messages (the JSON-object payloads of a run) into the fields the
normalized tables read, single-threaded, against a bare orjson.loads loop over the same
payloads measured just before it (ratio > 1: faster than the loop). Without --run-dir it builds
an offline run of the fixtures (repeat 20). "routed" is what capture-export runs: messages
routed by their event_type bytes, each kind parsed with its own narrow schema.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.json as pj

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, Proc, machine  # noqa: E402

from pm_arb.export.json_route import KINDS, SCHEMAS, _ndjson, route  # noqa: E402
from pm_arb.reader import open_run  # noqa: E402

# One schema for every kind: the union of the narrow ones (what a single-pass engine reads).
WIDE = pa.schema(list({f.name: f for s in SCHEMAS.values() for f in s}.values()))


def duckdb_type(t: pa.DataType) -> str:
    if pa.types.is_list(t):
        return duckdb_type(t.value_type) + "[]"
    if pa.types.is_struct(t):
        return "STRUCT(" + ", ".join(f"{f.name} {duckdb_type(f.type)}" for f in t) + ")"
    return "VARCHAR"


def json_structure(t: pa.DataType) -> str:
    """The same type in from_json's notation (a JSON sample of the structure)."""
    if pa.types.is_list(t):
        return "[" + json_structure(t.value_type) + "]"
    if pa.types.is_struct(t):
        return "{" + ",".join(f'"{f.name}":{json_structure(f.type)}' for f in t) + "}"
    return '"VARCHAR"'


def engines(payloads: list[bytes], work: Path):
    column = pa.array(payloads, pa.binary())
    lines = _ndjson(column)
    ndjson_file = work / "messages.ndjson"
    con = duckdb.connect(config={"threads": 1})
    con.register("f", pa.table({"payload": column}))
    struct = json_structure(pa.struct(list(WIDE)))
    columns = "{" + ", ".join(f"'{f.name}': '{duckdb_type(f.type)}'" for f in WIDE) + "}"
    polars_type = pl.from_arrow(WIDE.empty_table()).schema
    text = lines.to_pybytes()

    def duckdb_read_json():  # the buffer goes through a file: DuckDB reads JSON only from files
        ndjson_file.write_bytes(text)
        con.sql(f"SELECT * FROM read_json('{ndjson_file}', format='newline_delimited', columns={columns})").to_arrow_table()

    return {
        "routed: PyArrow read_json, a narrow schema per kind (capture-export)": lambda: route(column, set(KINDS)),
        "PyArrow read_json, one schema for all kinds": lambda: pj.read_json(
            pa.BufferReader(lines), read_options=pj.ReadOptions(use_threads=False, block_size=1 << 30),
            parse_options=pj.ParseOptions(explicit_schema=WIDE, unexpected_field_behavior="ignore")),
        "DuckDB read_json over NDJSON (one schema)": duckdb_read_json,
        "DuckDB from_json per value (one struct type; the previous engine)": lambda: con.sql(
            f"SELECT try(from_json(decode(payload), '{struct}')) FROM f").to_arrow_table(),
        "Polars str.json_decode (one struct dtype)": lambda: pl.Series(column.cast(pa.string())).str.json_decode(pl.Struct(polars_type)),
        "Polars read_ndjson (one schema)": lambda: pl.read_ndjson(io.BytesIO(text), schema=polars_type),
    }


def orjson_loop(payloads: list[bytes]) -> None:
    loads = orjson.loads
    for p in payloads:
        loads(p)


def cpu_seconds(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS / "decode_engines.json")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pm_arb_decode_bench_"))
    try:
        run_dir = a.run_dir
        if run_dir is None:
            cost = Proc(["capture", "--offline", "--offline-speed", "0", "--offline-repeat", "20", "--data-dir", str(work), "--run-id", "b"]).finish()
            assert cost["exit_code"] == 0, cost["stderr_tail"]
            run_dir = work / "runs" / "b"
        payloads = [f.payload for f in open_run(run_dir).frames(verify=False) if f.flags == 0 and f.payload[:1] == b"{"]
        fns = engines(payloads, work)
        for fn in fns.values():
            fn()  # warm up: first calls load kernels
        ratios: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(a.rounds):
            for name, fn in fns.items():
                base = cpu_seconds(lambda: orjson_loop(payloads))
                ratios[name].append(base / cpu_seconds(fn))
        result = {"machine": machine(), "frames": len(payloads), "load_avg_1m": round(os.getloadavg()[0], 2),
                  "ratio_vs_orjson_loop_median": {k: round(statistics.median(v), 2) for k, v in ratios.items()},
                  "rounds": {k: [round(x, 2) for x in v] for k, v in ratios.items()}}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
        print(orjson.dumps({"load_avg_1m": result["load_avg_1m"], **result["ratio_vs_orjson_loop_median"]}, option=orjson.OPT_INDENT_2).decode())
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
