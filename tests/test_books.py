"""The book audit's fold on hand-written message sequences: each check fires exactly where it must,
incidents open and close where they must, and nothing else is reported."""

from __future__ import annotations

import orjson

from pm_arb.book.rebuild import Assign, BookFold, Connect, rebuild

S = 1_000_000_000
A, B, C = "111", "222", "333"


class Feed:
    """Frames of one shard at 0.1 s apart, with seq numbers, into a BookFold."""

    def __init__(self, silent_after_s: float = 600.0, only=None, shard: int = 0) -> None:
        self.fold = BookFold(silent_after_s=silent_after_s, only_tokens=only)
        self.seq = 0
        self.t = 10 * S
        self.shard = shard

    def send(self, *msgs, shard=None, dt=0.1, flags=0, raw=None) -> int:
        self.t += int(dt * S)
        self.seq += 1
        payload = raw if raw is not None else orjson.dumps(msgs[0] if len(msgs) == 1 else list(msgs))
        self.fold.frame(self.shard if shard is None else shard, self.seq, self.t, self.t + 5, flags, payload)
        return self.seq

    def connect(self, shard=0):
        self.t += 1
        self.fold.connect(Connect(shard, self.t, self.t))

    def result(self):
        return self.fold.result()


def book(tok, bids, asks, et=True):
    d = {"asset_id": tok, "market": "0xm", "bids": [{"price": p, "size": s} for p, s in bids],
         "asks": [{"price": p, "size": s} for p, s in asks], "timestamp": "1", "hash": "h"}
    if et:
        d["event_type"] = "book"
    return d


def change(tok, side, price, size, bb, ba):
    return {"event_type": "price_change", "market": "0xm", "timestamp": "1",
            "price_changes": [{"asset_id": tok, "price": price, "size": size, "side": side, "hash": "x", "best_bid": bb, "best_ask": ba}]}


def bba(tok, bb, ba):
    return {"event_type": "best_bid_ask", "asset_id": tok, "market": "0xm", "best_bid": bb, "best_ask": ba, "spread": "0.01", "timestamp": "1"}


BASE = book(A, [("0.39", "10"), ("0.40", "5")], [("0.42", "7"), ("0.41", "3")])


def causes(r):
    return [(i["token"], i["cause"], i["start"]["seq"], i["end"]["seq"] if i["end"] else None) for i in r["incidents"]]


def test_consistent_sequence_has_no_incident_and_counts_everything():
    f = Feed()
    f.connect()
    f.send(BASE, book(B, [("0.58", "3")], [("0.61", "4")]))  # an initial dump: array of books
    f.send(change(A, "BUY", "0.405", "2", "0.405", "0.41"))
    f.send(change(A, "SELL", "0.41", "0", "0.405", "0.42"))
    f.send(bba(A, "0.405", "0.42"))
    f.send({"event_type": "last_trade_price", "asset_id": A, "market": "0xm", "price": "0.42", "size": "1", "side": "BUY", "timestamp": "1"})
    f.send({"event_type": "tick_size_change", "asset_id": A, "market": "0xm", "old_tick_size": "0.01", "new_tick_size": "0.001", "timestamp": "1"})
    f.send(book(A, [("0.39", "10.0"), ("0.4", "5"), ("0.405", "2")], [("0.42", "7")]))  # same levels, other spellings
    f.send(raw=b"PONG", flags=0x01)
    r = f.result()
    assert r["incidents"] == [] and r["crossed_books"] == []
    t = r["totals"]
    assert (t["tokens_checked"], t["tokens_clean"], t["snapshots"], t["changes"], t["top_checks"], t["tick_size_changes"]) == (2, 2, 3, 2, 3, 1)
    assert t["frames"] == 7 and t["messages"] == 8


def test_top_mismatch_opens_at_the_change_and_closes_at_the_next_agreeing_snapshot():
    f = Feed()
    f.send(BASE)
    # A bid at 0.405 was added in a message we lost: the next item states a best bid we do not have.
    bad = f.send(change(A, "SELL", "0.41", "0", "0.405", "0.42"))
    f.send(change(A, "BUY", "0.30", "1", "0.405", "0.42"))  # still out: one more finding, no new incident
    disagree = f.send(book(A, [("0.39", "10"), ("0.40", "5"), ("0.405", "1")], [("0.42", "7")]))  # differs (0.30): stays open
    agree = f.send(book(A, [("0.39", "10"), ("0.40", "5"), ("0.405", "1")], [("0.42", "7")]))
    r = f.result()
    assert causes(r) == [(A, "top_mismatch", bad, agree)]
    inc = r["incidents"][0]
    assert inc["findings"] == 3 and inc["detail"] == "price_change states 0.405 / 0.42, rebuilt book has 0.40 / 0.42"
    assert disagree < agree and inc["duration_s"] == round((agree - bad) * 0.1, 3)
    assert r["totals"]["out_of_sync_s"] == inc["duration_s"]


def test_top_mismatch_from_best_bid_ask_and_empty_side_conventions():
    f = Feed()
    f.send(book(A, [], [("0.5", "1")]))
    f.send(bba(A, "0", "0.5"))  # "0" = no bid: agrees
    f.send(change(A, "SELL", "0.5", "0", "0", "1"))  # both sides empty: "0" / "1"
    bad = f.send(bba(A, "0.1", "1"))
    r = f.result()
    assert causes(r) == [(A, "top_mismatch", bad, None)]
    assert r["incidents"][0]["detail"] == "best_bid_ask states 0.1 / none, rebuilt book has none / none"


def test_snapshot_mismatch_reports_levels_that_differ_and_closes_when_whole():
    f = Feed()
    f.send(BASE)
    f.send(change(A, "BUY", "0.30", "4", "0.40", "0.41"))  # deep change: tops still agree
    # A deep change at 0.31 was lost, and 0.39 was resized without us seeing it: 2 levels differ.
    bad = f.send(book(A, [("0.30", "4"), ("0.31", "9"), ("0.39", "11"), ("0.40", "5")], [("0.42", "7"), ("0.41", "3")]))
    ok = f.send(book(A, [("0.30", "4"), ("0.31", "9"), ("0.39", "11"), ("0.40", "5")], [("0.42", "7"), ("0.41", "3")]))
    r = f.result()
    assert causes(r) == [(A, "snapshot_mismatch", bad, ok)]
    assert r["incidents"][0]["detail"] == "2 level(s) differ from the rebuilt book"


def test_delta_before_snapshot_after_a_reconnect_and_its_close_at_the_first_snapshot():
    f = Feed()
    f.connect()
    f.send(BASE)
    f.send(change(A, "BUY", "0.30", "4", "0.40", "0.41"))
    f.connect()  # the shard reconnected: A's book must come again before its changes count
    bad = f.send(change(A, "BUY", "0.31", "4", "0.40", "0.41"))
    f.send(change(A, "BUY", "0.32", "4", "0.40", "0.41"))
    whole = f.send(BASE)
    f.connect(shard=1)  # another shard's reconnect does not touch A
    f.send(change(A, "BUY", "0.33", "4", "0.40", "0.41"))
    r = f.result()
    assert causes(r) == [(A, "delta_before_snapshot", bad, whole)]
    assert r["incidents"][0]["findings"] == 2


def test_delta_before_any_snapshot_at_all():
    f = Feed()
    bad = f.send(change(B, "BUY", "0.31", "4", "0.31", "1"))
    assert causes(f.result()) == [(B, "delta_before_snapshot", bad, None)]


def test_silent_token_while_its_shard_keeps_receiving_and_never_producing_tokens():
    f = Feed(silent_after_s=1.0)
    f.fold.assign(Assign({0: [A, B, C], 1: ["444"]}, f.t, f.t))
    last_a = f.send(BASE, book(B, [("0.5", "1")], [("0.6", "1")]))
    for _ in range(15):  # 1.5 s of B only
        f.send(bba(B, "0.5", "0.6"))
    back = f.send(bba(A, "0.40", "0.41"))
    r = f.result()
    got = {(i["token"], i["start"]["seq"], i["end"]["seq"] if i["end"] else None) for i in r["incidents"]}
    # A: silent 1.6 s then back; C: assigned, never a message while shard 0 received for 1.7 s.
    # "444" is on shard 1, which received nothing: not a per-asset stall.
    assert got == {(A, last_a, back), (C, None, None)}
    assert all(i["cause"] == "silent_token" for i in r["incidents"])
    assert r["totals"]["silent_s"] > 0 and r["totals"]["out_of_sync_s"] == 0


def test_a_whole_shard_going_quiet_is_not_a_silent_token():
    f = Feed(silent_after_s=1.0)
    f.send(BASE)
    f.send(bba(A, "0.40", "0.41"), dt=5.0)  # nothing at all on the shard for 5 s: heartbeat territory
    assert f.result()["incidents"] == []


def test_resolved_market_tokens_may_fall_silent():
    f = Feed(silent_after_s=1.0)
    f.fold.assign(Assign({0: [A, B]}, f.t, f.t))
    f.send(BASE, book(B, [("0.5", "1")], [("0.6", "1")]))
    f.send({"event_type": "market_resolved", "id": "1", "market": "0xm", "assets_ids": [A], "winning_asset_id": A,
            "winning_outcome": "Yes", "timestamp": "1"})
    for _ in range(20):
        f.send(bba(B, "0.5", "0.6"))
    assert f.result()["incidents"] == []


def test_crossed_book_is_a_warning_not_an_incident():
    f = Feed()
    f.send(BASE)
    at = f.send(change(A, "BUY", "0.41", "1", "0.41", "0.41"))  # the feed itself says crossed/locked
    r = f.result()
    assert r["incidents"] == []
    assert r["crossed_books"] == [{"token": A, "count": 1, "first": {"shard": 0, "seq": at, "mono_ns": f.t, "wall_ns_utc": f.t + 5}}]


def test_book_without_event_type_legacy_changes_and_tokens_filter():
    f = Feed(only=frozenset({A}))
    f.send(book(A, [("0.4", "1")], [("0.5", "1")], et=False))
    f.send({"event_type": "price_change", "asset_id": A, "market": "0xm", "changes": [{"price": "0.45", "side": "BUY", "size": "2"}],
            "hash": "h", "timestamp": "1"})
    f.send(change(B, "BUY", "0.31", "4", "0.9", "1"))  # B is filtered out: no delta_before_snapshot for it
    f.send(bba(A, "0.45", "0.5"))
    r = f.result()
    assert r["incidents"] == [] and r["totals"]["tokens_checked"] == 1


def test_malformed_messages_are_counted_not_fatal():
    f = Feed()
    f.send(BASE)
    f.send(raw=b'{"event_type": "price_change", "price_changes": [{"asset_id": "111", "price": "abc", "size": "1", "side": "BUY"}]}')
    f.send(raw=b'{"event_type": "book", "asset_id": "111"')  # cut JSON that the capture stored as text
    f.send(raw=b"\xff\xfe", flags=0x02)  # stored as not-JSON: skipped
    r = f.result()
    assert r["totals"]["malformed"] == 2 and r["incidents"] == []
    assert [m["seq"] for m in r["malformed"]] == [2, 3]


def test_damaged_record_leaves_books_unchecked_until_the_next_snapshot():
    f = Feed()
    f.send(BASE)
    f.fold.damaged(0)
    f.send(change(A, "BUY", "0.1", "1", "0.77", "0.41"))  # unknowable: no incident
    f.send(BASE)
    bad = f.send(change(A, "BUY", "0.1", "1", "0.77", "0.41"))
    r = f.result()
    assert causes(r) == [(A, "top_mismatch", bad, None)]
    assert r["totals"]["damaged_records"] == 1 and r["totals"]["unchecked_changes"] == 1


def test_a_slice_leaves_changes_before_the_first_snapshot_unchecked_until_a_connect():
    f = Feed()
    f.fold.starts_mid_stream = True  # a slice: the window opens inside the stream
    f.send(change(A, "BUY", "0.30", "4", "0.77", "0.41"))  # state unknown, not wrong: no incident
    f.send(BASE)
    # checked from the first snapshot on: the level is unchanged, the stated top is wrong
    bad = f.send(change(A, "BUY", "0.40", "5", "0.77", "0.41"))
    f.send(BASE)  # agrees with the rebuilt book: the incident closes
    f.connect()  # a reconnect inside the window owes a snapshot again, slice or not
    late = f.send(change(A, "BUY", "0.31", "4", "0.40", "0.41"))
    r = f.result()
    assert causes(r) == [(A, "top_mismatch", bad, bad + 1), (A, "delta_before_snapshot", late, None)]
    assert r["totals"]["unchecked_changes"] == 1


def test_a_connect_after_damage_owes_a_snapshot_before_changes_count():
    f = Feed()
    f.send(BASE)
    f.fold.damaged(0)
    f.connect()
    bad = f.send(change(A, "BUY", "0.31", "4", "0.40", "0.41"))
    assert causes(f.result()) == [(A, "delta_before_snapshot", bad, None)]


def test_rebuild_returns_the_final_books():
    f = Feed()
    f.send(BASE)
    f.send(change(A, "BUY", "0.30", "4", "0.40", "0.41"))
    from pm_arb.book.rebuild import Frame

    books = rebuild([Frame(0, 1, 1, 1, 0, orjson.dumps(BASE)), Frame(0, 2, 2, 2, 0, orjson.dumps(change(A, "BUY", "0.30", "4", "0.40", "0.41")))])
    assert books[A].levels() == f.fold.tokens[A].book.levels()
    assert str(books[A].best_bid()[0]) == "0.40"


# --- the command, on real runs ----------------------------------------------------------------


def test_command_passes_a_clean_run_and_finds_a_lost_change_in_another(offline_run, tmp_path):
    from tests.conftest import REPO, drop_fixture_change, run_cli

    ok = run_cli("capture-books", "--run-dir", str(offline_run), "--json")
    assert ok.returncode == 0, ok.stderr
    doc = orjson.loads(ok.stdout)
    assert doc["verdict"] == "PASS" and doc["totals"]["tokens_checked"] == doc["totals"]["tokens_clean"] > 0
    assert doc["totals"]["changes"] > 1000 and doc["totals"]["tick_size_changes"] > 0
    tok = drop_fixture_change(REPO / "fixtures" / "default", tmp_path / "fx")
    cap = run_cli("capture", "--offline", "--fixtures", str(tmp_path / "fx"), "--offline-speed", "0", "--ws-shards", "4",
                  "--run-id", "lossy", "--data-dir", str(tmp_path / "data"))
    assert cap.returncode == 0, cap.stderr
    run_dir = tmp_path / "data" / "runs" / "lossy"
    bad = run_cli("capture-books", "--run-dir", str(run_dir), "--json")
    assert bad.returncode == 1, bad.stderr
    found = orjson.loads(bad.stdout)
    assert {i["token"] for i in found["incidents"]} == {tok}
    assert found["incidents"][0]["cause"] == "top_mismatch"
    text = run_cli("capture-books", "--run-dir", str(run_dir)).stdout
    assert "FAIL: incidents=" in text and "top_mismatch" in text
    check = run_cli("capture-check", "--run-dir", str(run_dir))
    assert check.returncode == 1 and "FAIL  book_integrity" in check.stdout
    skipped = run_cli("capture-check", "--run-dir", str(run_dir), "--no-books")
    assert skipped.returncode == 0 and "----  book_integrity" in skipped.stdout
    only = run_cli("capture-books", "--run-dir", str(run_dir), "--tokens", tok, "--json")
    assert orjson.loads(only.stdout)["totals"]["tokens_checked"] == 1


def test_command_bad_input_is_one_line_exit_2(offline_run, tmp_path):
    from tests.conftest import assert_one_line_error, run_cli

    assert "does not exist" in assert_one_line_error(run_cli("capture-books", "--run-dir", str(tmp_path / "nope")), 2)
    for bad in ("0", "-1", "nan", "inf"):
        line = assert_one_line_error(run_cli("capture-books", "--run-dir", str(offline_run), "--silent-after-seconds", bad), 2)
        assert "--silent-after-seconds" in line
    line = assert_one_line_error(run_cli("capture-books", "--run-dir", str(offline_run), "--tokens", "123,456"), 2)
    assert "none of the 2 token(s)" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.json").write_bytes((offline_run / "manifest.json").read_bytes())
    (empty / "runlog.ndjson").write_bytes((offline_run / "runlog.ndjson").read_bytes())
    assert "capture/*.frames" in assert_one_line_error(run_cli("capture-books", "--run-dir", str(empty)), 2)
