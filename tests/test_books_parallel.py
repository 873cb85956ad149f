"""The book audit's fast paths give the report of its reference paths, on a real recorded
simulator run with injected faults: groups of shards folded in worker processes and merged
== one fold; the typed (msgspec) decode == the generic orjson path; the columnar read == the
record-by-record read, a damaged record included."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from pm_arb.book import rebuild
from pm_arb.book.rebuild import Assign, BookFold, merge
from pm_arb.commands import books
from pm_arb.cli.progress import Progress
from pm_arb.reader import open_run
from pm_arb.sim.exchange import SimExchange
from pm_arb.universe.select import select_markets
from tests.conftest import records_by_shard, run_cli, start_cli, stop_with, wait_for_line, wait_for_runlog

FAST = ["--ws-shards", "3", "--ws-reconnect-backoff-initial-seconds", "0.05", "--ws-reconnect-backoff-max-seconds", "0.2",
        "--capture-confirm-timeout-seconds", "5", "--no-capture-universe-refresh-enable", "--heartbeat-interval-seconds", "0.5"]


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory) -> Path:
    """Three shards; one token's messages dropped, one silenced, a stale snapshot, a reconnect
    without fresh dumps; then one stored record damaged (its checksum fails)."""
    data_dir = tmp_path_factory.mktemp("parallel")
    with SimExchange(markets=9, rate=1200, seed=7, record_sent=True) as sim:
        proc = start_cli("capture", "--gamma-base-url", sim.gamma_url, "--clob-ws-url", sim.ws_url, "--run-id", "faulty",
                         "--data-dir", str(data_dir), *FAST)
        run_dir = data_dir / "runs" / "faulty"
        assert wait_for_line(proc) == str(run_dir)
        wait_for_runlog(run_dir, lambda r: r["type"] == "run_confirmed")
        picked, _ = select_markets(sim.rows(), 2000)
        time.sleep(0.4)
        sim.silent_tokens = {picked[0].yes_token}
        sim.drop_fraction = {picked[1].no_token: 0.5, picked[3].yes_token: 0.5}
        time.sleep(1.5)
        for _ in range(10):
            if sim.send_stale_snapshot(picked[2].yes_token)["differs"]:
                break
            time.sleep(0.1)
        time.sleep(0.4)
        sim.drop_fraction = {}
        sim.withhold_dump_on_resubscribe = True
        sim.drop_all_connections()
        wait_for_runlog(run_dir, lambda r: r["type"] == "shard_connected" and r["attempt"] == 2)
        time.sleep(1.0)
        sim.send_data = False
        time.sleep(0.3)
        code, _, err = stop_with(proc)
        assert code == 0, err
    by_shard = records_by_shard(run_dir)
    shard = max(by_shard, key=lambda s: len(by_shard[s]))
    victim = by_shard[shard][len(by_shard[shard]) // 2].payload
    path = run_dir / "capture" / f"shard_{shard:02d}.frames"
    data = bytearray(path.read_bytes())
    at = data.index(victim)
    data[at + len(victim) // 2] ^= 0x01  # one bit: the record's checksum no longer matches
    path.write_bytes(bytes(data))
    return run_dir


def audit(run_dir: Path, *args: str) -> tuple[str, str]:
    """The command's JSON and text reports."""
    outs = []
    for fmt in (["--json"], []):
        out = run_cli("capture-books", "--run-dir", str(run_dir), "--silent-after-seconds", "0.5", *fmt, *args)
        assert out.returncode == 1, out.stderr  # the faults are found
        outs.append(out.stdout)
    return outs[0], outs[1]


def test_workers_give_the_report_of_one_process(faulty_run):
    serial = audit(faulty_run, "--workers", "1")
    doc = orjson.loads(serial[0])
    causes = set(doc["totals"]["incidents_by_cause"])
    # the drops show as top_mismatch or, when the next snapshot comes first, snapshot_mismatch
    assert {"snapshot_mismatch", "silent_token", "delta_before_snapshot"} <= causes and doc["totals"]["incidents"] >= 4, causes
    assert doc["totals"]["damaged_records"] == 1 and any("damaged record skipped" in w for w in doc["warnings"])
    assert doc["totals"]["tokens_checked"] == 18
    for workers in ("2", "3"):
        assert audit(faulty_run, "--workers", workers) == serial, workers


def test_the_parallel_fold_is_really_taken_and_merges(faulty_run):
    """Not a serial fallback in disguise: the three shards fold in separate processes, and their
    merge is exact (no token in two groups, receive times monotonic)."""
    markers, _ = books._runlog_markers(faulty_run, False)
    run = open_run(faulty_run)
    sizes = {s: (faulty_run / "capture" / f"shard_{s:02d}.frames").stat().st_size for s in run.shards}
    groups = books.shard_groups(sizes, markers, 3)
    assert groups == [[0], [1], [2]]
    plan = books._Audit(faulty_run, markers, 0.5, None, False)
    parallel = books._fold_parallel(plan, groups, Progress(1, "test", enabled=False))
    assert parallel is not None
    fold, damaged = parallel
    serial, serial_damaged, monotonic = books._fold_shards(plan, None, None)
    assert monotonic and fold.result() == serial.result() and damaged == serial_damaged and len(damaged) == 1


def test_the_typed_decode_gives_what_the_generic_path_gives(faulty_run, monkeypatch):
    plan = books._Audit(faulty_run, books._runlog_markers(faulty_run, False)[0], 0.5, None, False)
    fast, _, _ = books._fold_shards(plan, None, None)

    def generic_only(payload):
        raise ValueError("take the orjson path")

    monkeypatch.setattr(rebuild, "decode_typed", generic_only)
    reference, _, _ = books._fold_shards(plan, None, None)
    assert fast.result() == reference.result()
    assert fast.result()["totals"]["incidents"] > 0


def test_the_columnar_read_gives_what_the_record_read_gives(faulty_run):
    plan = books._Audit(faulty_run, books._runlog_markers(faulty_run, False)[0], 0.5, None, False, columnar=True)
    for shards in ([0], [1], [2], None):
        one_by_one, damaged, _ = books._fold_stream(plan, shards, books._one_by_one, None)
        assert books._fold_shards(plan, shards, None)[0].result() == one_by_one.result()  # columnar, or its fallback
        if damaged:  # the columnar read hands a damaged record over to the record read
            with pytest.raises(books._NotExact):
                books._fold_stream(plan, shards, books._batched, None)
        else:
            assert books._fold_stream(plan, shards, books._batched, None)[0].result() == one_by_one.result()


def test_a_token_met_in_two_parts_cannot_be_merged():
    """Shards that ever shared a token are grouped together; if frames still put one token in two
    groups, merge refuses and the command folds serially."""
    a, b = BookFold(only_shards=frozenset({0})), BookFold(only_shards=frozenset({1}))
    book = orjson.dumps({"event_type": "book", "asset_id": "111", "bids": [], "asks": []})
    a.frame(0, 1, 10, 10, 0, book)
    b.frame(1, 1, 20, 20, 0, book)
    assert merge([a, b]) is None
    assert books.shard_groups({0: 5, 1: 5, 2: 1}, [Assign({0: ["111"]}, 1, 1), Assign({1: ["111"], 2: ["222"]}, 2, 2)], 2) == [[0, 1], [2]]


def test_merge_restores_what_depends_on_the_order_across_shards():
    """Tokens first met alternately on two shards, each crossed (the warnings list follows the
    order tokens were met), malformed frames on both, incidents starting in the same nanosecond:
    two parts merged == one fold over everything."""
    def lv(p):
        return [{"price": p, "size": "1"}]

    frames = []
    for i in range(6):
        shard, tok = i % 2, f"{900 - i}"  # token ids sort against the order they are met
        frames.append((shard, i + 1, 100 + i, 5, 0, orjson.dumps({"event_type": "book", "asset_id": tok, "bids": lv("0.6"), "asks": lv("0.6")})))
        frames.append((shard, i + 101, 200 + i, 5, 0, orjson.dumps(
            {"event_type": "best_bid_ask", "asset_id": tok, "best_bid": "0.5", "best_ask": "0.6"})))  # a mismatch on a crossed book
    frames += [(0, 300, 300, 5, 0, b"{not json"), (1, 300, 300, 5, 0, b"[1, {\"event_type\": \"book\"}]")]
    frames.sort(key=lambda f: (f[2], f[0]))
    whole = BookFold()
    parts = [BookFold(only_shards=frozenset({0})), BookFold(only_shards=frozenset({1}))]
    for f in frames:
        whole.frame(*f)
        parts[f[0]].frame(*f)
    merged = merge(parts)
    assert merged is not None and merged.result() == whole.result()
    r = whole.result()
    assert [c["token"] for c in r["crossed_books"]] == [f"{900 - i}" for i in range(6)] and len(r["malformed"]) == 2
    assert merge(parts[::-1]).result() == r


def test_price_keys_are_exact_one_level_per_value_and_keep_their_spelling():
    """Int keys for the common prices, exact Decimal keys for the rest: one level per value
    whatever the spelling, and reports print each price as the feed spelled it."""
    from decimal import Decimal as D

    from pm_arb.book.order_book import OrderBook, key_of, price_text

    assert key_of("0.5") == key_of("0.50") == key_of("5E-1") and hash(key_of("0.5")) == hash(key_of("0.50"))
    assert key_of("0.3") != key_of("0.30000000000000004") and key_of("0.3") < key_of("0.30000000000000004")
    assert price_text(key_of("0.50")) == "0.50" and price_text(key_of("0.3000001")) == "0.3000001"
    b = OrderBook()
    b.apply_change("BUY", "0.50", "1")
    b.apply_change("BUY", "0.5", "2")  # the same level
    assert b.levels()[0] == {D("0.5"): D("2")} and str(b.top()[0]) == "0.50"
    # A price no Decimal key can hold is a malformed message, not a crash.
    f = BookFold()
    f.frame(0, 1, 1, 1, 0, orjson.dumps({"event_type": "book", "asset_id": "1", "bids": [{"price": "0E+999999999999999999", "size": "1"}], "asks": []}))
    r = f.result()
    assert r["totals"]["malformed"] == 1 and "exponent out of range" in r["malformed"][0]["reason"]


ODD_FRAMES = [
    b'{"event_type":"book","asset_id":"7","bids":[{"price":"0.4","size":"1"}],"asks":[{"price":"0.6","size":"2"}]}',
    # valid for msgspec if it skipped unread fields, not for orjson: must stay "not JSON"
    b'{"event_type":"price_change","market":1e400,"price_changes":[]}',
    b'{"event_type":"price_change","market":"\xff","price_changes":[]}',
    b'{"event_type":"price_change","x":1e400,"price_changes":[]}',
    b'{"event_type":"last_trade_price","asset_id":"7","x":"\xff"}',
    b'{"event_type":"best_bid_ask","asset_id":"7","best_bid":"0.4","best_ask":"0.6","x":NaN}',
    # duplicate keys: orjson keeps the last
    b'{"event_type":"book","event_type":"price_change","price_changes":[{"asset_id":"7","price":"0.5","size":"1","side":"BUY","best_bid":"0.5","best_ask":"0.6"}]}',
    b'{"event_type":"price_change","price_changes":[{"asset_id":"7","price":"0.45","price":"0.3","size":"1","side":"BUY","best_bid":"0.5","best_ask":"0.6"}]}',
    # fields of other types, unknown fields, missing fields, the old schema
    b'{"event_type":"price_change","price_changes":[{"asset_id":"7","price":0.35,"size":"1","side":"BUY","best_bid":"0.5","best_ask":"0.6"}]}',
    b'{"event_type":"price_change","price_changes":[{"asset_id":"7","price":"0.2","size":"1","side":"BUY","best_bid":"0.5","best_ask":"0.6","extra":[1]}]}',
    b'{"event_type":"price_change","price_changes":[{"asset_id":"7","price":"0.2","side":"BUY"}]}',
    b'{"event_type":"price_change","asset_id":"7","changes":[{"price":"0.21","side":"SELL","size":"3"}]}',
    b'{"event_type":"best_bid_ask","asset_id":"7","best_bid":0.5,"best_ask":"0.6"}',
    b'{"event_type":"tick_size_change","asset_id":"7","new_tick_size":0.001}',
    b'{"event_type":"market_resolved","assets_ids":["7"]}',
    b'[{"event_type":"book","asset_id":"8","bids":[],"asks":[]}, 3, {"event_type":"last_trade_price","asset_id":"8"}]',
    b'{"event_type":"book","asset_id":"7","bids":[{"price":"0.4","size":"1"}],"asks":[{"price":"0.6","size":"2"}]} ',
]


def test_odd_frames_fold_as_the_generic_path_folds_them(monkeypatch):
    """What the typed decode must refuse (so orjson's verdict and values stand) and what it may
    take: either way, the report is the generic path's."""
    def fold():
        f = BookFold()
        for k, raw in enumerate(ODD_FRAMES):
            f.frame(0, k + 1, k + 1, k + 1, 0, raw)
        return f.result()

    fast = fold()
    monkeypatch.setattr(rebuild, "decode_typed", lambda payload: orjson.loads(b"not json"))
    assert fast == fold()
    assert fast["totals"]["malformed"] >= 4 and fast["totals"]["incidents"] >= 1


@pytest.mark.parametrize("kind", ["empty frames file", "frames file is a directory", "wrong magic", "newer format version", "truncated idx"])
def test_bad_files_end_the_same_way_with_workers(faulty_run, tmp_path, kind):
    """A file a worker cannot read: the same exit code and the same words as one process (the
    parallel fold gives way to the serial one, which stops with its error)."""
    import shutil

    from tests.test_bad_input import damage

    run_dir = tmp_path / "run"
    shutil.copytree(faulty_run, run_dir)
    damage(run_dir, kind)
    outs = [run_cli("capture-books", "--run-dir", str(run_dir), "--silent-after-seconds", "0.5", "--workers", w) for w in ("1", "3")]
    assert [(o.returncode, o.stdout, o.stderr) for o in outs[1:]] == [(outs[0].returncode, outs[0].stdout, outs[0].stderr)]
    assert "Traceback" not in outs[1].stderr and outs[1].returncode in (1, 2)


def _with_frames_added(run_dir: Path, shard: int, payloads: list[bytes], after: int) -> None:
    """Rewrite one shard's files (the store's own writer) with `payloads` stored after its
    record number `after`, with that record's receive times; seqs renumbered from 0."""
    from pm_arb.store.shard_files import ShardFileWriter

    recs = list(open_run(run_dir).frames([shard], verify=False))
    out = []
    for i, r in enumerate(recs):
        out.append((r.rx_mono_ns, r.rx_wall_ns_utc, r.flags, r.opcode, r.payload))
        if i == after:
            out += [(r.rx_mono_ns, r.rx_wall_ns_utc, 0, 1, p) for p in payloads]
    for p in (run_dir / "capture").glob(f"shard_{shard:02d}.*"):
        p.unlink()
    writer = ShardFileWriter(run_dir / "capture", shard)
    writer.append_batch(out)
    writer.close()


def test_malformed_messages_are_listed_the_same_with_workers(faulty_run, tmp_path):
    """Each worker merges its own part once, the parent merges the parts again: the malformed
    messages' list (not only their count) must survive both merges, in receive order."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(faulty_run, run_dir)
    home = {m.shard: m.yes_token for m in open_run(run_dir).universe}  # a token of each shard: no token in two groups
    for shard, after in ((0, 5), (2, 9)):
        bad = b'{"event_type":"price_change","market":"m","price_changes":[{"asset_id":"%s","price":"1e999999999","size":"5","side":"BUY"}]}'
        _with_frames_added(run_dir, shard, [bad % home[shard].encode()], after)
    markers, _ = books._runlog_markers(run_dir, False)
    plan = books._Audit(run_dir, markers, 0.5, None, False)
    assert books._fold_parallel(plan, [[0], [1], [2]], Progress(1, "test", enabled=False)) is not None  # really merged
    serial = audit(run_dir, "--workers", "1")
    listed = orjson.loads(serial[0])["malformed"]
    assert len(listed) == orjson.loads(serial[0])["totals"]["malformed"] >= 2 and {m["shard"] for m in listed} == {0, 2}
    assert audit(run_dir, "--workers", "3") == serial


def test_a_shard_whose_files_are_gone_is_counted_the_same_with_workers(faulty_run, tmp_path):
    """Its tokens were assigned (runlog) but no group reads it: one process counts them as never
    heard from, and so must the parallel path (it gives way to one process)."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(faulty_run, run_dir)
    for p in (run_dir / "capture").glob("shard_02.*"):
        p.unlink()
    outs = [run_cli("capture-books", "--run-dir", str(run_dir), "--silent-after-seconds", "0.5", "--json", "--workers", w) for w in ("1", "2")]
    assert outs[0].returncode == outs[1].returncode and outs[0].stdout == outs[1].stdout
    assert orjson.loads(outs[1].stdout)["totals"]["tokens_checked"] == 18


def test_an_empty_tokens_option_is_refused(faulty_run):
    out = run_cli("capture-books", "--run-dir", str(faulty_run), "--tokens", " , ")
    assert out.returncode == 2 and "holds no token id" in out.stderr and "Traceback" not in out.stderr
