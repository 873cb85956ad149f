"""capture-export on real runs, read back by real engines (DuckDB, Polars, PyArrow).

The frames table must hold every stored frame byte for byte; the normalized tables must equal
wire/normalize.py (the reference) on every frame of the fixture run, and an independent
computation in this file (its own book, its own parsing) on a simulator run.
"""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest

from pm_arb.reader import open_run
from pm_arb.wire.normalize import BookRow, MarketEventRow, QuoteRow, TradeRow, normalize
from tests.conftest import assert_one_line_error, export, records_by_shard, run_cli

@pytest.fixture(scope="session")
def sim_run(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("sim") / "data"
    proc = run_cli("capture", "--sim", "--sim-markets", "6", "--sim-rate", "400", "--duration-seconds", "2.5",
                   "--ws-shards", "2", "--run-id", "sim", "--data-dir", str(data))
    assert proc.returncode == 0, proc.stderr
    return data / "runs" / "sim"


def table_rows(out: Path, table: str) -> list[dict]:
    """Rows of one exported table, in stored order within each frame, ordered by (shard, seq)."""
    files = sorted((out / table).rglob("*.parquet"))
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    rows.sort(key=lambda r: (r["shard"], r["seq"]))  # stable: keeps each frame's own row order
    return rows


def us(dt) -> int:
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


# --- the frames table -------------------------------------------------------------------


def test_frames_table_counts_and_bytes_match_the_run(offline_run, offline_export):
    out, summary = offline_export
    verify = json.loads(run_cli("capture-verify", "--run-dir", str(offline_run), "--json").stdout)
    n = verify["totals"]["frames"]
    glob = f"{out}/frames/**/*.parquet"
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}', hive_partitioning=true)").fetchall()[0][0] == n
    assert pl.scan_parquet(glob, hive_partitioning=True).select(pl.len()).collect().item() == n
    assert summary["frames"] == summary["rows"]["frames"] == n
    stored = {(s, r.seq): r for s, recs in records_by_shard(offline_run).items() for r in recs}
    got = duckdb.sql(f"SELECT shard, seq, rx_mono_ns, epoch_ns(rx_wall_ns_utc), flags, opcode, payload, date, hour "
                     f"FROM read_parquet('{glob}', hive_partitioning=true)").fetchall()
    assert len(got) == len(stored)
    for shard, seq, mono, wall, flags, opcode, payload, date, hour in got:
        r = stored[(shard, seq)]
        assert (mono, wall, flags, opcode, bytes(payload)) == (r.rx_mono_ns, r.rx_wall_ns_utc, r.flags, r.opcode, r.payload)
    schema = pq.read_schema(next((out / "frames").rglob("*.parquet")))
    assert str(schema.field("rx_wall_ns_utc").type) == "timestamp[ns, tz=UTC]"
    assert str(schema.field("payload").type) == "binary"
    meta = pq.ParquetFile(next((out / "frames").rglob("*.parquet"))).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"


def test_hive_partitions_follow_receive_time(offline_export):
    out, _ = offline_export
    rows = duckdb.sql(f"SELECT strftime(rx_wall_ns_utc AT TIME ZONE 'UTC', '%Y-%m-%d') AS d, strftime(rx_wall_ns_utc AT TIME ZONE 'UTC', '%H') AS h, "
                      f"date, hour FROM read_parquet('{out}/frames/**/*.parquet', hive_partitioning=true)").fetchall()
    assert rows and all(d == str(date) and int(h) == int(hour) for d, h, date, hour in rows)


# --- the normalized tables against the reference mappers, on every fixture frame ---------


def reference_rows(run_dir: Path) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {"BookRow": [], "TradeRow": [], "QuoteRow": [], "MarketEventRow": []}
    for e in open_run(run_dir).events():
        for row in normalize(e.message, e.rx_wall_ns_utc // 1000):
            out[type(row).__name__].append((e.shard, e.seq, row))
    for rows in out.values():
        rows.sort(key=lambda t: (t[0], t[1]))  # stable: each frame keeps its own row order
    return out


def test_normalized_tables_equal_the_reference_mappers(offline_run, offline_export):
    out, summary = offline_export
    ref = reference_rows(offline_run)
    book = [(r["shard"], r["seq"], BookRow(r["symbol"], us(r["timestamp"]), us(r["local_timestamp"]), r["is_snapshot"], r["side"],
                                           r["price"], r["amount"], r["market"])) for r in table_rows(out, "incremental_book_L2")]
    assert book == [(s, q, r._replace(price=float(r.price), amount=float(r.amount))) for s, q, r in ref["BookRow"]]
    trades = [(r["shard"], r["seq"], TradeRow(r["symbol"], us(r["timestamp"]), us(r["local_timestamp"]), r["id"], r["side"],
                                              r["price"], r["amount"], r["market"])) for r in table_rows(out, "trades")]
    assert trades == [(s, q, r._replace(price=float(r.price), amount=float(r.amount))) for s, q, r in ref["TradeRow"]]
    events = [(r["shard"], r["seq"], MarketEventRow(r["event_type"], r["symbol"], r["market"], us(r["timestamp"]), us(r["local_timestamp"]),
                                                    r["old_tick_size"], r["new_tick_size"], r["winning_outcome"], r["question"]))
              for r in table_rows(out, "market_events")]
    assert events == ref["MarketEventRow"]
    bba = [(r["shard"], r["seq"], QuoteRow(r["symbol"], us(r["timestamp"]), us(r["local_timestamp"]), None, r["ask_price"], r["bid_price"], None, r["market"]))
           for r in table_rows(out, "quotes") if r["source"] == "best_bid_ask"]
    assert bba == [(s, q, r._replace(ask_price=r.ask_price and float(r.ask_price), bid_price=r.bid_price and float(r.bid_price)))
                   for s, q, r in ref["QuoteRow"]]
    assert summary["rows"]["incremental_book_L2"] == len(ref["BookRow"]) > 0
    assert summary["rows"]["trades"] == len(ref["TradeRow"]) > 0
    assert summary["rows"]["market_events"] == len(ref["MarketEventRow"]) > 0


def test_outcome_and_market_come_from_the_universe(offline_run, offline_export):
    out, _ = offline_export
    run = open_run(offline_run)
    rows = table_rows(out, "incremental_book_L2")
    assert rows and all((r["market"], r["outcome"]) == (run.tokens[r["symbol"]][0].condition_id, run.tokens[r["symbol"]][1]) for r in rows)
    assert [p.name for p in (out / "markets").iterdir()] == [f"{run.manifest['run_id']}.parquet"]  # named by run: trees merge
    markets = pq.read_table(out / "markets").to_pylist()
    assert {m["token"] for m in markets} == set(run.tokens)
    assert all(m["source"] == "manifest" and m["question"] for m in markets)


# --- the simulator run against an independent computation ---------------------------------


def independent_tables(run_dir: Path) -> dict[str, list[tuple]]:
    """L2, trades and quotes computed here from the stored payloads: own parsing, own book."""
    l2, trades, quotes = [], [], []
    books: dict[tuple[int, str], tuple[dict, dict]] = {}

    def top(side: dict, best) -> tuple:
        if not side:
            return None, None
        p = best(side)
        return float(p), float(side[p])

    for shard, recs in sorted(records_by_shard(run_dir).items()):
        for r in recs:
            try:
                doc = json.loads(r.payload)
            except ValueError:
                continue
            local = r.rx_wall_ns_utc // 1000
            for msg in doc if isinstance(doc, list) else [doc]:
                kind = msg.get("event_type")
                ts = int(msg["timestamp"]) * 1000
                if kind == "book":
                    bids = {Decimal(x["price"]): Decimal(x["size"]) for x in msg["bids"] if Decimal(x["size"]) > 0}
                    asks = {Decimal(x["price"]): Decimal(x["size"]) for x in msg["asks"] if Decimal(x["size"]) > 0}
                    books[(shard, msg["asset_id"])] = (bids, asks)
                    for side, levels in (("bid", msg["bids"]), ("ask", msg["asks"])):
                        l2 += [(shard, r.seq, msg["asset_id"], ts, local, True, side, float(x["price"]), float(x["size"])) for x in levels]
                    changed = [msg["asset_id"]]
                elif kind == "price_change":
                    changed = []
                    for it in msg["price_changes"]:
                        side = "bid" if it["side"] == "BUY" else "ask"
                        l2.append((shard, r.seq, it["asset_id"], ts, local, False, side, float(it["price"]), float(it["size"])))
                        bids, asks = books.setdefault((shard, it["asset_id"]), ({}, {}))
                        levels = bids if side == "bid" else asks
                        if Decimal(it["size"]) == 0:
                            levels.pop(Decimal(it["price"]), None)
                        else:
                            levels[Decimal(it["price"])] = Decimal(it["size"])
                        bp, ba = top(bids, max)
                        ap, aa = top(asks, min)
                        quotes.append((shard, r.seq, it["asset_id"], ts, local, aa, ap, bp, ba, "book"))
                    continue
                elif kind == "last_trade_price":
                    trades.append((shard, r.seq, msg["asset_id"], ts, local, msg.get("transaction_hash", ""), msg["side"].lower(),
                                   float(msg["price"]), float(msg["size"])))
                    continue
                elif kind == "best_bid_ask":
                    bids, asks = books.setdefault((shard, msg["asset_id"]), ({}, {}))
                    bp = float(msg["best_bid"]) if float(msg["best_bid"]) else None
                    ap = float(msg["best_ask"]) if float(msg["best_ask"]) else None
                    ba = float(bids[Decimal(msg["best_bid"])]) if Decimal(msg["best_bid"]) in bids else None
                    aa = float(asks[Decimal(msg["best_ask"])]) if Decimal(msg["best_ask"]) in asks else None
                    quotes.append((shard, r.seq, msg["asset_id"], ts, local, aa, ap, bp, ba, "best_bid_ask"))
                    continue
                else:
                    continue
                for asset in changed:
                    bids, asks = books[(shard, asset)]
                    bp, ba = top(bids, max)
                    ap, aa = top(asks, min)
                    quotes.append((shard, r.seq, asset, ts, local, aa, ap, bp, ba, "book"))
    return {"incremental_book_L2": l2, "trades": trades, "quotes": quotes}


def test_simulator_run_normalized_tables_equal_an_independent_computation(sim_run, tmp_path):
    out = tmp_path / "sim_export"
    summary = export(sim_run, out, "--tables", "incremental_book_L2,trades,quotes")
    want = independent_tables(sim_run)
    got_l2 = [(r["shard"], r["seq"], r["symbol"], us(r["timestamp"]), us(r["local_timestamp"]), r["is_snapshot"], r["side"], r["price"], r["amount"])
              for r in table_rows(out, "incremental_book_L2")]
    got_trades = [(r["shard"], r["seq"], r["symbol"], us(r["timestamp"]), us(r["local_timestamp"]), r["id"], r["side"], r["price"], r["amount"])
                  for r in table_rows(out, "trades")]
    got_quotes = [(r["shard"], r["seq"], r["symbol"], us(r["timestamp"]), us(r["local_timestamp"]), r["ask_amount"], r["ask_price"],
                   r["bid_price"], r["bid_amount"], r["source"]) for r in table_rows(out, "quotes")]
    assert got_l2 == want["incremental_book_L2"] and got_l2
    assert got_trades == want["trades"] and got_trades
    assert got_quotes == want["quotes"] and got_quotes
    assert summary["rows"] == {"incremental_book_L2": len(got_l2), "trades": len(got_trades), "quotes": len(got_quotes)}
    assert not (out / "frames").exists()


# --- Tardis CSV -------------------------------------------------------------------------------


def test_csv_is_tardis_shaped_and_holds_the_parquet_rows(offline_run, offline_export, tmp_path):
    pq_out, _ = offline_export
    out = tmp_path / "csv"
    summary = export(offline_run, out, "--format", "csv")
    assert "frames" not in summary["tables"]
    for table, header in (("incremental_book_L2", "exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount"),
                          ("trades", "exchange,symbol,timestamp,local_timestamp,id,side,price,amount"),
                          ("quotes", "exchange,symbol,timestamp,local_timestamp,ask_amount,ask_price,bid_price,bid_amount")):
        files = sorted(out.glob(f"polymarket_{table}_*.csv.gz"))
        assert files
        csv_rows = []
        for f in files:
            lines = gzip.decompress(f.read_bytes()).decode().splitlines()
            assert lines[0] == header
            _, _, date, symbol = f.name[: -len(".csv.gz")].rsplit("_", 3)
            for line in lines[1:]:
                cells = line.split(",")
                assert cells[0] == "polymarket" and cells[1] == symbol
                csv_rows.append(tuple(cells[1:]))
            locals_ = [int(line.split(",")[3]) for line in lines[1:]]
            assert locals_ == sorted(locals_)
        cols = ", ".join(f"epoch_us({c})" if c.endswith("timestamp") else c for c in header.split(",")[1:])
        pq_rows = duckdb.sql(f"SELECT {cols} FROM read_parquet('{pq_out}/{table}/**/*.parquet', hive_partitioning=true)").fetchall()
        names = header.split(",")[1:]
        parsed = [tuple(_number(n, c) for n, c in zip(names, row)) for row in csv_rows]
        assert sorted(parsed, key=repr) == sorted([tuple(_number(n, _csv_cell(v)) for n, v in zip(names, row)) for row in pq_rows], key=repr)
        assert summary["rows"][table] == len(csv_rows)


def _number(name: str, cell: str):
    """A CSV cell as a value: floats compare as numbers (Arrow writes 0 where Python says 0.0)."""
    if name in ("price", "amount", "ask_amount", "ask_price", "bid_price", "bid_amount"):
        return float(cell) if cell else None
    return cell


def _csv_cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if hasattr(v, "timestamp"):
        return str(us(v))
    return str(v)


# --- options and bad input ------------------------------------------------------------------


def test_refuses_to_overwrite_without_force(offline_run, tmp_path):
    out = tmp_path / "o"
    export(offline_run, out, "--tables", "trades")
    line = assert_one_line_error(run_cli("capture-export", "--run-dir", str(offline_run), "--out", str(out), "--tables", "trades"), 2)
    assert "--force" in line
    again = export(offline_run, out, "--tables", "trades", "--force")
    assert again["rows"]["trades"] > 0
    # the summary is the last thing written (an export dir without it was interrupted)
    assert json.loads((out / "export_summary.json").read_bytes()) == again
    newest = max((p for p in out.rglob("*") if p.is_file()), key=lambda p: p.stat().st_mtime_ns)
    assert newest.name == "export_summary.json"


@pytest.mark.parametrize("args, needle", [
    (["--tables", "nope"], "unknown table 'nope'"),
    (["--format", "csv", "--tables", "frames"], "Parquet only"),
    (["--from-wall", "yesterday"], "--from-wall"),
    (["--from-wall", "2026-01-02T00:00:00Z", "--to-wall", "2026-01-01T00:00:00Z"], "range is empty"),
    (["--tokens", ""], "holds no token id"),
    (["--tokens", " , "], "holds no token id"),
    (["--tokens", "not-a-token-of-this-run"], "none of the 1 token(s)"),
])
def test_bad_usage_is_one_line_exit_2(offline_run, tmp_path, args, needle):
    line = assert_one_line_error(run_cli("capture-export", "--run-dir", str(offline_run), "--out", str(tmp_path / "x"), *args), 2)
    assert needle in line


def test_damaged_record_stops_the_export_or_is_skipped_and_listed(run_copy, tmp_path):
    victim = records_by_shard(run_copy)[1][17]
    path = run_copy / "capture" / "shard_01.frames"
    data = bytearray(path.read_bytes())
    data[victim.offset + 44 + 2] ^= 0x20
    path.write_bytes(bytes(data))
    line = assert_one_line_error(run_cli("capture-export", "--run-dir", str(run_copy), "--out", str(tmp_path / "a")), 1)
    assert f"shard 1 seq {victim.seq}" in line and "--skip-damaged" in line
    summary = export(run_copy, tmp_path / "b", "--skip-damaged", "--tables", "frames")
    assert [(d["shard"], d["seq"], d["reason"]) for d in summary["damaged_skipped"]] == [(1, victim.seq, "checksum mismatch")]
    total = sum(len(v) for v in records_by_shard(run_copy).values())  # the scan skips the damaged one too
    assert summary["rows"]["frames"] == total


def test_time_bounds_and_tokens(offline_run, tmp_path):
    run = open_run(offline_run)
    frames = list(run.frames())
    walls = sorted(f.rx_wall_ns_utc for f in frames)
    lo, hi = walls[500], walls[1500]
    window = [row for e in run.events(start=lo, end=hi) for row in normalize(e.message, e.rx_wall_ns_utc // 1000) if isinstance(row, BookRow)]
    token = max({r.symbol for r in window}, key=lambda s: sum(r.symbol == s for r in window))
    summary = export(offline_run, tmp_path / "t", "--from-wall", str(lo), "--to-wall", str(hi), "--tokens", token)
    assert summary["rows"]["frames"] == sum(1 for w in walls if lo <= w <= hi)
    ref = [r for r in window if r.symbol == token]
    assert summary["rows"]["incremental_book_L2"] == len(ref) > 0
    assert summary["rows"]["markets"] == 1
    assert summary["warnings"] == []
    mixed = export(offline_run, tmp_path / "u", "--tables", "markets", "--tokens", f"{token},no-such-token")
    assert mixed["rows"]["markets"] == 1 and mixed["warnings"] == ["1 token(s) given with --tokens never appear in this run: no-such-toke..."]
    text = run_cli("capture-export", "--run-dir", str(offline_run), "--out", str(tmp_path / "v"), "--tables", "markets", "--tokens", f"{token},no-such-token")
    assert text.returncode == 0 and "warning: 1 token(s) given with --tokens never appear in this run" in text.stdout


def test_markets_alone_reads_no_frames(offline_run, tmp_path):
    summary = export(offline_run, tmp_path / "m", "--tables", "markets", "--format", "csv")
    assert summary["frames"] == 0 and summary["rows"] == {"markets": len(open_run(offline_run).tokens)}
    lines = gzip.decompress((tmp_path / "m" / "markets.csv.gz").read_bytes()).decode().splitlines()
    assert lines[0] == '"token","outcome","condition_id","question","shard","gamma_id","slug","source"'
    assert len(lines) == 1 + summary["rows"]["markets"]


# --- the quotes fold's cached top -------------------------------------------------------


def test_quotes_fold_cached_top_equals_a_plain_book_after_every_step():
    """The fold reads the book again only after a change at or past the top; every path of that
    shortcut (below the top, at it, removing it, the other side, a refused change, best_bid_ask
    at the top's price, at another price, at a price the book refuses) against a plain book."""
    import pyarrow as pa

    from pm_arb.export.quotes import QuoteFold

    steps = [  # (kind, side, price, size) for book rows; ("bba", best_bid, best_ask) for best_bid_ask
        ("reset",), ("bid", "0.40", "10"), ("bid", "0.45", "5"), ("ask", "0.55", "7"), ("ask", "0.60", "3"),
        ("chg", "bid", "0.41", "2"), ("chg", "bid", "0.45", "6"), ("chg", "ask", "0.58", "1"), ("chg", "bid", "0.45", "0"),
        ("bba", "0.41", "0.55"), ("bba", "0.40", "0.60"), ("bba", "1.5", "0.58"), ("chg", "bid", "1.5", "1"),
        ("chg", "ask", "0.55", "0"), ("chg", "ask", "0.58", "0"), ("chg", "ask", "0.60", "0"), ("chg", "bid", "0.42", "4"),
        ("chg", "bid", "0.4", "0"), ("bba", "0.42", None), ("chg", "ask", "0.50", "9"), ("reset",), ("bid", "0.30", "1"),
        ("chg", "bid", "0.31", "2"), ("bba", "0.31", "0.50"),
    ]
    book_cols = {n: [] for n in ("shard", "seq", "idx", "local_us", "ts", "market", "symbol", "is_snapshot", "side", "price_s", "size_s")}
    top_cols = {n: [] for n in ("shard", "seq", "idx", "local_us", "ts", "market", "symbol", "best_bid", "best_ask")}
    bids: dict[Decimal, Decimal] = {}
    asks: dict[Decimal, Decimal] = {}
    want, pending, seq = [], None, 0

    def top(source, ts):
        bp, ap = max(bids, default=None), min(asks, default=None)
        return ("T", ts, ts, float(asks[ap]) if ap is not None else None, float(ap) if ap is not None else None,
                float(bp) if bp is not None else None, float(bids[bp]) if bp is not None else None, "M", 0, ts, source)

    def flush():
        nonlocal pending
        if pending is not None:
            bids.clear(), asks.clear()
            for side, price, size in pending[1]:
                (bids if side == "bid" else asks)[Decimal(price)] = Decimal(size)
            want.append(top("book", pending[0]))
            pending = None

    for step in steps:
        if step[0] != "bid" and step[0] != "ask":
            seq += 1
            flush()
        cols = top_cols if step[0] == "bba" else book_cols
        for n, v in (("shard", 0), ("seq", seq), ("idx", 0), ("local_us", seq), ("ts", seq), ("market", "M"), ("symbol", "T")):
            cols[n].append(v)
        if step[0] == "bba":
            top_cols["best_bid"].append(step[1]), top_cols["best_ask"].append(step[2])
            amount = lambda levels, p: float(levels[Decimal(p)]) if p is not None and Decimal(p) in levels else None  # noqa: E731
            want.append(("T", seq, seq, amount(asks, step[2]), None if step[2] is None else float(step[2]),
                         float(step[1]), amount(bids, step[1]), "M", 0, seq, "best_bid_ask"))
            continue
        snap, side, price, size = (True, None, None, None) if step[0] == "reset" else \
            (True, step[0], step[1], step[2]) if step[0] != "chg" else (False, step[1], step[2], step[3])
        for n, v in (("is_snapshot", snap), ("side", side), ("price_s", price), ("size_s", size)):
            book_cols[n].append(v)
        if step[0] == "reset":
            pending = (seq, [])
        elif snap:
            pending[1].append((side, price, size))
        elif Decimal(price) <= 1:  # the book refuses a price above 1: no quote
            levels = bids if side == "bid" else asks
            levels.pop(Decimal(price), None) if Decimal(size) == 0 else levels.__setitem__(Decimal(price), Decimal(size))
            want.append(top("book", seq))
    flush()
    fold = QuoteFold()
    got = [tuple(r.values()) for r in fold.fold(pa.table(book_cols), pa.table(top_cols)).to_pylist()]
    assert got == want and fold.rejected == 1
