"""Which columnar engine decodes Polymarket payloads fastest (ADR/0009)?

    uv run python benchmarks/decode_engines.py [--run-dir DIR] [--rounds 3]

Each engine parses the same JSON-object payloads of a run into the fields the normalized
tables need, single-threaded, against a bare orjson.loads loop over the same payloads measured
in the same round. Without --run-dir it builds an offline run of the fixtures (repeat 20).
"""

from __future__ import annotations

import argparse
import io
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

from pm_arb.export.decode import MESSAGE_TYPE  # noqa: E402
from pm_arb.reader import open_run  # noqa: E402

S = pa.string()
_LV = pa.list_(pa.struct([("price", S), ("size", S)]))
ARROW_TYPE = pa.struct([("event_type", S), ("asset_id", S), ("market", S), ("timestamp", S), ("bids", _LV), ("asks", _LV),
                        ("price_changes", pa.list_(pa.struct([("asset_id", S), ("price", S), ("size", S), ("side", S)]))),
                        ("price", S), ("size", S), ("side", S), ("transaction_hash", S), ("best_bid", S), ("best_ask", S)])


def engines(payloads: list[bytes]):
    column = pa.array(payloads, pa.binary())
    text = b"\n".join(payloads)
    con = duckdb.connect(config={"threads": 1})
    con.register("f", pa.table({"payload": column}))
    polars_type = pl.from_arrow(pa.array([], ARROW_TYPE)).dtype

    def duckdb_from_json():
        con.sql(f"SELECT from_json(decode(payload), '{MESSAGE_TYPE}') AS j FROM f").to_arrow_table()

    def duckdb_arrow_operators():
        con.sql("SELECT j->>'event_type', j->>'asset_id', j->>'timestamp', j->'price_changes' FROM (SELECT json(decode(payload)) j FROM f)").to_arrow_table()

    def polars_json_decode():
        pl.Series(column.cast(pa.string())).str.json_decode(polars_type)

    def pyarrow_read_json():
        pj.read_json(io.BytesIO(text), read_options=pj.ReadOptions(use_threads=False),
                     parse_options=pj.ParseOptions(explicit_schema=pa.schema(list(ARROW_TYPE)), unexpected_field_behavior="ignore"))

    return {"duckdb from_json (one parse, typed struct)": duckdb_from_json,
            "duckdb ->/->> operators": duckdb_arrow_operators,
            "polars str.json_decode": polars_json_decode,
            "pyarrow json.read_json (NDJSON)": pyarrow_read_json}


def orjson_loop(payloads: list[bytes]) -> None:
    loads = orjson.loads
    for p in payloads:
        loads(p)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
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
        fns = engines(payloads)
        for fn in fns.values():
            fn()  # warm up: first calls load kernels
        ratios: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(a.rounds):
            for name, fn in fns.items():
                base = timed(lambda: orjson_loop(payloads))
                ratios[name].append(base / timed(fn))
        result = {"machine": machine(), "frames": len(payloads),
                  "ratio_vs_orjson_loop_median": {k: round(statistics.median(v), 2) for k, v in ratios.items()},
                  "rounds": {k: [round(x, 2) for x in v] for k, v in ratios.items()}}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
        print(orjson.dumps(result["ratio_vs_orjson_loop_median"], option=orjson.OPT_INDENT_2).decode())
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
