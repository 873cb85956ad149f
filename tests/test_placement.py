"""Placement of markets on connections (pure, ADR/0007): property tests over random universes
and refresh sequences (listed, delisted, re-listed), and the fold that rebuilds it from events."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from pm_arb.events.codec import LogRecord
from pm_arb.events.folds.placement import fold, placement_events
from pm_arb.universe.placement import Placement, PlacementRules, balance, place, preference


@dataclass(frozen=True)
class Mk:
    condition_id: str
    yes_token: str
    no_token: str


def market(i: int, version: int = 0) -> Mk:
    return Mk(f"0x{i:04x}", f"y{i}.{version}", f"n{i}.{version}")


def universe(ids) -> list[Mk]:
    return [market(i) for i in sorted(ids)]


rules_strategy = st.builds(
    PlacementRules,
    cap_tokens=st.sampled_from([2, 3, 4, 6, 10, 20, 41]),
    min_shards=st.integers(1, 6),
    slack=st.sampled_from([0.0, 0.1, 0.25, 0.5]),
)
steps_strategy = st.lists(st.sets(st.integers(0, 150), max_size=120), min_size=1, max_size=8)


def check_step(prev: Placement, change, listed: list[Mk], rules: PlacementRules) -> None:
    nxt = change.placement
    loads = nxt.token_loads()
    # 1. never over the cap
    assert max(loads, default=0) <= rules.cap_tokens
    # 2. a market's two tokens share a shard, and exactly the listed markets are placed
    tokens = nxt.shard_tokens()
    for m in listed:
        s = nxt.shard_of[m.condition_id]
        assert m.yes_token in tokens[s] and m.no_token in tokens[s]
    assert set(nxt.shard_of) == {m.condition_id for m in listed}
    assert sum(loads) == 2 * len(listed)
    # 3. a market that stays listed never moves; shards never close; as few shards as the cap allows
    for cid, s in prev.shard_of.items():
        if cid in nxt.shard_of:
            assert nxt.shard_of[cid] == s
    needed = max(rules.min_shards, math.ceil(len(listed) / rules.cap_markets))
    assert nxt.shards == max(prev.shards, needed)
    assert change.opened == list(range(prev.shards, nxt.shards))
    # 4. the balance bound: a shard that took a new market is within it, and the bound is within
    #    (1 + slack) x the mean (rounded up) and the cap
    mean = len(listed) / nxt.shards
    assert change.bound_markets <= min(rules.cap_markets, math.ceil((1 + rules.slack) * mean))
    market_loads = [t // 2 for t in loads]
    for _cid, s, *_ in change.assigned:
        assert market_loads[s] <= change.bound_markets or s in {s2 for _c, s2 in change.released}
    before = [t // 2 for t in prev.token_loads()] + [0] * (nxt.shards - prev.shards)
    assert max(market_loads, default=0) <= max(max(before, default=0), change.bound_markets)
    # 5. a refresh reconnects exactly the shards whose token sets changed
    old_tokens = prev.shard_tokens()
    really_changed = {s for s in range(nxt.shards) if old_tokens.get(s, []) != tokens[s]}
    assert set(change.changed_shards()) == really_changed


@settings(max_examples=300, deadline=None, database=None)
@given(rules=rules_strategy, steps=steps_strategy)
def test_random_refresh_sequences_hold_every_placement_rule(rules, steps):
    live = Placement()
    records: list[LogRecord] = []
    for k, ids in enumerate(steps):
        listed = universe(ids)
        change = place(live, listed, rules)
        check_step(live, change, listed, rules)
        live = change.placement
        for e in placement_events(change, "start" if k == 0 else "refresh"):
            records.append(LogRecord(len(records), len(records), len(records), e))
        # 6. the runlog's placement events rebuild exactly the live map (shard count aside, which
        #    the supervisor records in shards_planned / shard_opened)
        replayed = fold(records).placement
        assert replayed.shard_of == live.shard_of and replayed.tokens_of == live.tokens_of


@settings(max_examples=100, deadline=None, database=None)
@given(rules=rules_strategy, ids=st.sets(st.integers(0, 150), min_size=1, max_size=120), data=st.data())
def test_a_market_whose_token_ids_change_stays_on_its_shard(rules, ids, data):
    listed = universe(ids)
    first = place(None, listed, rules)
    changed_id = data.draw(st.sampled_from(sorted(ids)))
    relisted = [market(i, version=1 if i == changed_id else 0) for i in sorted(ids)]
    second = place(first.placement, relisted, rules)
    cid = market(changed_id).condition_id
    s = first.placement.shard_of[cid]
    assert second.placement.shard_of == first.placement.shard_of
    assert second.released == [(cid, s)] and second.assigned == [(cid, s, f"y{changed_id}.1", f"n{changed_id}.1")]
    replay = fold([LogRecord(i, i, i, e) for i, e in enumerate(placement_events(first, "start") + placement_events(second, "refresh"))])
    assert replay.placement.tokens_of == second.placement.tokens_of


def test_defaults_2000_markets_take_ten_connections_of_at_most_400_tokens():
    """The issue's case: 2,000 markets over 8 shards by xxh64 % 8 put 539-578 tokens on the
    busiest shard. Under the cap the defaults open 10 connections, none above 400."""
    rules = PlacementRules(cap_tokens=400, min_shards=8)
    listed = universe(range(2000))
    change = place(None, listed, rules)
    assert change.placement.shards == 10 and change.opened == list(range(10))
    assert max(change.placement.token_loads()) <= 400
    assert balance(change.placement.token_loads())["busiest_over_mean"] == 1.0


def test_growth_opens_a_new_shard_and_fills_it_without_moving_anyone():
    rules = PlacementRules(cap_tokens=10, min_shards=2)
    start = place(None, universe(range(10)), rules)  # 10 markets, 5 per shard: both full
    assert start.placement.shards == 2 and start.placement.token_loads() == [10, 10]
    grown = place(start.placement, universe(range(12)), rules)
    assert grown.opened == [2] and grown.placement.shards == 3
    assert [s for _c, s, *_ in grown.assigned] == [2, 2]
    assert grown.changed_shards() == {2: (4, 0)}  # only the new shard connects


def test_a_new_market_goes_to_its_favourite_shard_when_there_is_room():
    rules = PlacementRules(cap_tokens=400, min_shards=8)
    base = place(None, universe(range(100)), rules)
    new = market(5000)
    step = place(base.placement, universe(range(100)) + [new], rules)
    assert step.assigned == [(new.condition_id, preference(new.condition_id, 8)[0], new.yes_token, new.no_token)]
    assert set(step.changed_shards()) == {preference(new.condition_id, 8)[0]}


def test_a_window_names_tokens_placed_before_it_inside_it_and_released_inside_it():
    from pm_arb.events.folds.placement import token_shards_between

    rules = PlacementRules(cap_tokens=4, min_shards=1)
    first = place(None, universe([1, 2]), rules)  # before the window
    second = place(first.placement, universe([2, 3]), rules)  # inside it: 1 released, 3 assigned
    third = place(second.placement, universe([3, 4]), rules)  # after it
    records = []
    for mono, change in ((10, first), (20, second), (30, third)):
        for e in placement_events(change, "start" if mono == 10 else "refresh"):
            records.append(LogRecord(len(records), mono, mono, e))
    names = token_shards_between(records, 15, 25)
    where = {cid: s for c in (first, second) for cid, s, *_ in c.assigned}
    assert names == {t: where[market(i).condition_id] for i in (1, 2, 3) for t in (market(i).yes_token, market(i).no_token)}
    assert market(4).yes_token not in names
