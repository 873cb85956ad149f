"""capture-export's fast decode (messages routed by kind, parsed by PyArrow with narrow schemas)
must give the reference mappers' rows for payloads a strict or a lenient JSON reader would get
wrong: other JSON types than strings, duplicate keys, NaN literals, trailing commas, key order,
nested event types, white space, escapes, legacy schemas, odd numbers and timestamps, arrays.

The odd payloads are mixed into real fixture traffic, captured offline like any run, exported
by the CLI, and compared row by row with wire/normalize.py over the stored frames.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest

from pm_arb.reader import open_run
from pm_arb.wire.normalize import normalize
from tests.conftest import REPO, export, run_cli
from tests.test_export import table_rows, us


def first_of_each_kind(lines: list[bytes]) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for line in lines:
        text = orjson.loads(line)["text"]
        if text.startswith("{"):
            msg = orjson.loads(text)
            found.setdefault(msg["event_type"], msg)
    return found


def odd_texts(m: dict[str, dict]) -> list[str]:
    pc, book, trade, bba, tick = (m[k] for k in ("price_change", "book", "last_trade_price", "best_bid_ask", "tick_size_change"))
    dumps = lambda d: orjson.dumps(d).decode()  # noqa: E731
    text = dumps(pc)
    item = pc["price_changes"][0]
    token = item["asset_id"]

    def with_item(**changes) -> str:
        return dumps(dict(pc, price_changes=[dict(item, **changes), *pc["price_changes"][1:]]))

    return [
        dumps({k: pc[k] for k in reversed(list(pc))}),  # event_type last, as Polymarket sends it
        with_item(price=0.5),  # a number where the exchange sends a string: the item is dropped
        with_item(side=None), dumps(dict(pc, price_changes=[None, *pc["price_changes"]])),
        dumps(dict(book, bids=[None, *book["bids"]], asks=[{"price": "0.9"}, *book["asks"]])),
        text.replace(f'"size":"{item["size"]}"', f'"size":"1","size":"{item["size"]}"', 1),  # duplicate key: the last wins
        text[:-1] + ',"fee":NaN}',  # not JSON for orjson: no rows
        text[:-1] + ',"fee":-Infinity}',
        text[:-1] + ",}",  # trailing comma: not JSON
        '{"meta":{"event_type":"book"},' + text[1:],  # the first event_type is a nested one
        '{"meta":{"event_type":"best_bid_ask"},' + dumps(book)[1:],  # nested, of a kind not always parsed
        '{"event_type":"best_bid_ask",' + dumps(book)[1:],  # a duplicate key: orjson keeps the last (book)
        dumps(book).replace('"event_type":"book"', '"event_type": "book"'),  # white space after the colon
        dumps(trade).replace('"event_type"', '"event\\u005ftype"'),  # an escaped key
        '{"meta":{"event_type":"tick_size_change"},"event_type":"mystery"}',
        "  \n" + text, text + " \n",  # white space around the object
        text[: len(text) // 2], text[: text.index("[") + 1] + "}",  # cut short: not JSON
        text[:-1] + ',"x":{"a":1}}{"event_type":"price_change","x":[1]}',  # an object too many
        text + text,  # two objects in one frame: not JSON
        text.replace(token, "\\u003" + token[0] + token[1:], 1),  # an escape in the token id
        text.replace('"price_change"', '"price_change_v2"'),  # an unknown kind
        dumps([book, 5, "x", trade, [bba]]),  # an array: only its objects count, each with its index
        with_item(size="1_0"), with_item(size=" 5"), with_item(size="nan"), with_item(size="1e3"), with_item(size="Infinity"),
        dumps(dict(pc, timestamp="+1767000000000")), dumps(dict(pc, timestamp="")), dumps(dict(pc, timestamp=1767000000001)),
        dumps(dict(pc, timestamp="\u0661\u0667\u0666\u0667")),  # Arabic-Indic digits: str.isdigit() says digits
        dumps(dict(pc, timestamp="12345678901234567")),  # more digits than the fast path reads
        dumps({"event_type": "price_change", "asset_id": token, "market": pc["market"], "timestamp": "1767000000999",
               "changes": [{"price": "0.5", "size": "10", "side": "BUY"}, {"price": "x", "size": "1", "side": "SELL"}]}),  # legacy
        dumps({k: v for k, v in dict(book, buys=book["bids"], sells=book["asks"]).items() if k not in ("bids", "asks")}),
        dumps(dict(book, bids=None, buys=book["bids"])),  # "bids" present (null) wins over "buys"
        dumps(dict(book, asset_id=None)),  # no token: no rows at all
        dumps(dict(trade, transaction_hash=None)), dumps(dict(trade, price="1e-2", side="sell")), dumps(dict(trade, size=7)),
        dumps(dict(bba, best_bid="0", best_ask="0.000")), dumps(dict(bba, best_bid=0.5)),
        dumps(dict(tick, question="NaN or Inf in text")),  # harmless in a string
        dumps(dict(tick, asset_id="", winning_asset_id=token, event_type="market_resolved", winning_outcome="Yes")),
        dumps(dict(tick, old_tick_size=0.01)),
        '{"event_type":"book","asset_id":"\\ud800"}',  # a lone surrogate: not JSON for orjson
    ]


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory) -> Path:
    fx = tmp_path_factory.mktemp("odd") / "fixtures"
    shutil.copytree(REPO / "fixtures" / "default", fx)
    lines = (fx / "frames.ndjson").read_bytes().splitlines()[:600]
    base = orjson.loads(lines[-1])
    odd = [orjson.dumps({"t_ms": base["t_ms"] + 1 + i, "market": base["market"], "text": t})
           for i, t in enumerate(odd_texts(first_of_each_kind(lines)))]
    # The odd frames among ordinary ones, so each kind's group is large and is split around them.
    tail = [orjson.dumps(dict(orjson.loads(line), t_ms=base["t_ms"] + 100 + i)) for i, line in enumerate(lines[100:400])]
    (fx / "frames.ndjson").write_bytes(b"\n".join(lines + odd[::2] + tail + odd[1::2]) + b"\n")
    data = tmp_path_factory.mktemp("odd_data")
    proc = run_cli("capture", "--offline", "--fixtures", str(fx), "--offline-speed", "0", "--ws-shards", "2",
                   "--run-id", "odd", "--data-dir", str(data))
    assert proc.returncode == 0, proc.stderr
    return data / "runs" / "odd"


def reference(run_dir: Path) -> dict[str, list[tuple]]:
    """The reference rows as (shard, seq, index in frame, fields), in the export's units."""
    out: dict[str, list[tuple]] = {"BookRow": [], "TradeRow": [], "QuoteRow": [], "MarketEventRow": []}
    run = open_run(run_dir)
    for e in run.events():
        for row in normalize(e.message, e.rx_wall_ns_utc // 1000):
            fields = row._asdict()
            for k in ("price", "amount", "ask_price", "bid_price"):
                if fields.get(k) is not None:
                    fields[k] = float(fields[k])
            if fields.get("market") is None and fields.get("symbol") in run.tokens:
                fields["market"] = run.tokens[fields["symbol"]][0].condition_id  # the export fills it from the universe
            out[type(row).__name__].append((e.shard, e.seq, fields))
    for rows in out.values():
        rows.sort(key=lambda t: (t[0], t[1]))  # as table_rows orders; stable: a frame keeps its row order
    return out


def exported(out: Path, table: str, names: list[str]) -> list[tuple]:
    rows = []
    for r in table_rows(out, table):
        fields = {n: us(r[n]) if n.endswith("timestamp") else r[n] for n in names}
        rows.append((r["shard"], r["seq"], fields))
    return rows


def test_odd_payloads_give_the_reference_rows(odd_run, tmp_path):
    out = tmp_path / "out"
    summary = export(odd_run, out)
    ref = reference(odd_run)
    book = ["symbol", "timestamp", "local_timestamp", "is_snapshot", "side", "price", "amount", "market"]
    assert exported(out, "incremental_book_L2", book) == [(s, q, {n: f[n] for n in book}) for s, q, f in ref["BookRow"]]
    trades = ["symbol", "timestamp", "local_timestamp", "id", "side", "price", "amount", "market"]
    assert exported(out, "trades", trades) == [(s, q, {n: f[n] for n in trades}) for s, q, f in ref["TradeRow"]]
    events = ["event_type", "symbol", "market", "timestamp", "local_timestamp", "old_tick_size", "new_tick_size", "winning_outcome", "question"]
    assert exported(out, "market_events", events) == [(s, q, {n: f[n] for n in events}) for s, q, f in ref["MarketEventRow"]]
    tops = ["symbol", "timestamp", "local_timestamp", "ask_price", "bid_price", "market"]
    got = [(s, q, f) for s, q, f in exported(out, "quotes", tops + ["source"]) if f.pop("source") == "best_bid_ask"]
    assert got == [(s, q, {n: f[n] for n in tops}) for s, q, f in ref["QuoteRow"]]
    assert summary["rows"]["incremental_book_L2"] == len(ref["BookRow"]) > 0
    # The odd frames did reach the export: rows only they give are there, and those they must not give are not.
    stored = {(s, q): f for s, q, f in exported(out, "incremental_book_L2", book)}
    assert any(f["timestamp"] == 1767000000001000 for f in stored.values())  # the JSON integer timestamp
    assert any(f["timestamp"] == 1767000 for f in stored.values())  # the Arabic-Indic digits (ms)
    assert any(f["amount"] == 10.0 and not f["is_snapshot"] for f in stored.values())  # "1_0", and the legacy change


def test_without_quotes_the_other_tables_are_the_same(odd_run, tmp_path):
    """Without quotes the decode skips what only the quotes fold reads: the rows must not change."""
    full, part = tmp_path / "full", tmp_path / "part"
    export(odd_run, full, "--tables", "incremental_book_L2,trades,quotes,market_events")
    export(odd_run, part, "--tables", "incremental_book_L2,trades,market_events")
    for table in ("incremental_book_L2", "trades", "market_events"):
        assert table_rows(part, table) == table_rows(full, table) != []


def test_a_run_of_initial_dumps_only(tmp_path):
    """No frame is a single object (every one an array): nothing to route, all through orjson."""
    fx = tmp_path / "fixtures"
    shutil.copytree(REPO / "fixtures" / "default", fx)
    lines = (fx / "frames.ndjson").read_bytes().splitlines()
    dumps = [line for line in lines if orjson.loads(line)["text"].startswith("[")]
    (fx / "frames.ndjson").write_bytes(b"\n".join(dumps) + b"\n")
    data = tmp_path / "data"
    proc = run_cli("capture", "--offline", "--fixtures", str(fx), "--offline-speed", "0", "--run-id", "dumps", "--data-dir", str(data))
    assert proc.returncode == 0, proc.stderr
    summary = export(data / "runs" / "dumps", tmp_path / "out", "--tables", "incremental_book_L2,trades,quotes,market_events")
    ref = reference(data / "runs" / "dumps")
    assert summary["rows"]["incremental_book_L2"] == len(ref["BookRow"]) > 0
    assert summary["rows"]["trades"] == summary["rows"]["market_events"] == 0
