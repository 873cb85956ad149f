"""OrderBook: the shared contract (snapshot, change, best bid/ask, levels), exact decimals, bad levels."""

from __future__ import annotations

import random
from decimal import Decimal as D

import pytest

from pm_arb.book.order_book import BookError, OrderBook


def lv(*pairs):
    return [{"price": p, "size": s} for p, s in pairs]


def test_snapshot_replaces_and_best_levels_follow_rest_ordering():
    b = OrderBook()
    b.apply_change("BUY", "0.10", "5")
    # REST ordering: bids ascending, asks descending (best last); order must not matter.
    b.apply_snapshot(lv(("0.39", "120"), ("0.40", "75.5")), lv(("0.44", "60"), ("0.42", "210")))
    assert b.best_bid() == (D("0.40"), D("75.5"))
    assert b.best_ask() == (D("0.42"), D("210"))
    bids, asks = b.levels()
    assert bids == {D("0.39"): D("120"), D("0.4"): D("75.5")}
    assert asks == {D("0.44"): D("60"), D("0.42"): D("210")}


def test_change_sets_and_zero_removes_and_best_recomputes():
    b = OrderBook()
    assert b.best_bid() is None and b.best_ask() is None
    b.apply_change("BUY", "0.41", "300")
    b.apply_change("BUY", "0.45", "10")
    b.apply_change("SELL", "0.5", "7")
    b.apply_change("SELL", "0.47", "1")
    assert b.best_bid() == (D("0.45"), D("10"))
    assert b.best_ask() == (D("0.47"), D("1"))
    b.apply_change("BUY", "0.450", "0.00")  # same level spelled differently; zero in another spelling
    b.apply_change("SELL", "0.47", "0")
    assert b.best_bid() == (D("0.41"), D("300"))
    assert b.best_ask() == (D("0.5"), D("7"))
    b.apply_change("BUY", "0.41", "299.5")
    assert b.best_bid() == (D("0.41"), D("299.5"))
    b.apply_change("BUY", "0.3", "0")  # removing an absent level is a no-op
    b.apply_change("BUY", "0.41", "0")
    assert b.best_bid() is None and b.levels()[0] == {}


def test_prices_are_exact_not_float():
    b = OrderBook()
    # 0.1 + 0.2 style float drift must not merge or split levels.
    b.apply_change("BUY", "0.3", "1")
    b.apply_change("BUY", "0.30000000000000004", "2")
    bids, _ = b.levels()
    assert len(bids) == 2
    assert b.best_bid() == (D("0.30000000000000004"), D("2"))


def test_differing_levels_counts_missing_extra_and_resized():
    b = OrderBook()
    b.apply_snapshot(lv(("0.4", "10"), ("0.39", "5")), lv(("0.42", "3")))
    assert b.differing_levels(lv(("0.40", "10.0"), ("0.39", "5")), lv(("0.42", "3"))) == 0
    # 0.39 resized, 0.38 extra, 0.42 missing
    assert b.differing_levels(lv(("0.4", "10"), ("0.39", "6"), ("0.38", "1")), []) == 3


def test_snapshot_zero_levels_are_no_levels():
    b = OrderBook()
    b.apply_snapshot(lv(("0.4", "0"), ("0.3", "2")), [])
    assert b.levels()[0] == {D("0.3"): D("2")}


@pytest.mark.parametrize(
    "side,price,size",
    [("BUY", "abc", "1"), ("BUY", "NaN", "1"), ("BUY", "1.5", "1"), ("BUY", "-0.1", "1"), ("SELL", "0.5", "x"),
     ("SELL", "0.5", "-1"), ("SELL", "0.5", "Infinity"), ("HOLD", "0.5", "1"), ("BUY", "0.5", "."), ("BUY", "0.5", ""), ("BUY", "0.5", 0.1), ("BUY", "0.5", None)],
)
def test_bad_levels_raise_book_error(side, price, size):
    b = OrderBook()
    with pytest.raises(BookError):
        b.apply_change(side, price, size)
    assert b.is_empty()


def test_bad_snapshot_raises_book_error():
    with pytest.raises(BookError):
        OrderBook().apply_snapshot([{"price": "0.5"}], [])
    with pytest.raises(BookError):
        OrderBook().apply_snapshot(["0.5"], [])


def test_best_prices_agree_with_brute_force_over_random_changes():
    rng = random.Random(3)
    b = OrderBook()
    truth = {"BUY": {}, "SELL": {}}
    for i in range(5000):
        if i % 997 == 0:
            snap = {s: {rng.randrange(1, 100): rng.randrange(1, 50) for _ in range(rng.randrange(0, 8))} for s in truth}
            truth = snap
            b.apply_snapshot(lv(*[(f"{p / 100}", str(s)) for p, s in snap["BUY"].items()]),
                             lv(*[(f"{p / 100}", str(s)) for p, s in snap["SELL"].items()]))
        side = rng.choice(("BUY", "SELL"))
        p = rng.randrange(1, 100)
        s = rng.choice((0, 0, rng.randrange(1, 50)))
        b.apply_change(side, f"{p / 100}", str(s))
        if s:
            truth[side][p] = s
        else:
            truth[side].pop(p, None)
        bb = max(truth["BUY"]) if truth["BUY"] else None
        ba = min(truth["SELL"]) if truth["SELL"] else None
        assert b.best_bid() == (None if bb is None else (D(bb) / 100, D(truth["BUY"][bb])))
        assert b.best_ask() == (None if ba is None else (D(ba) / 100, D(truth["SELL"][ba])))


def test_a_size_that_is_not_a_decimal_raises_when_read_at_the_latest():
    b = OrderBook()
    b.apply_change("BUY", "0.5", "1x")  # passes the cheap check on the write path
    with pytest.raises(BookError):
        b.levels()
    with pytest.raises(BookError):
        b.best_bid()


def test_top_is_best_bid_and_ask_prices():
    b = OrderBook()
    assert b.top() == (None, None)
    b.apply_snapshot(lv(("0.4", "1"), ("0.3", "1")), lv(("0.6", "2")))
    assert b.top() == (D("0.4"), D("0.6"))
    b.apply_change("BUY", "0.4", "0")
    assert b.top() == (D("0.3"), D("0.6"))
