"""Pure protocol and policy logic: keepalive, backoff, the selection rule, sharding, refresh decisions."""

from __future__ import annotations

import orjson
import pytest

from pm_arb.capture.frame_parse import frame_shape, market_events, scan_market_events
from pm_arb.capture.keepalive import DATA_IDLE, PING, PING_TIMEOUT, Keepalive, backoff_seconds
from pm_arb.capture.ws_reader import subscribe_messages
from pm_arb.config import Config
from pm_arb.metrics.latency_hist import RELATIVE_ERROR_BOUND, add_batch, bucket_floor, bucket_of, merge, percentiles
from pm_arb.universe.refresh_policy import decide
from pm_arb.sim.market_data import make_gamma_rows
from pm_arb.store.frames_format import FLAG_CONTROL, FLAG_NOT_JSON
from pm_arb.universe.select import rejection, select_markets

S = 1_000_000_000


def test_keepalive_pings_on_interval_and_pong_clears_the_deadline():
    k = Keepalive(0, ping_interval_s=10, ping_timeout_s=5, data_idle_s=120)
    assert k.due(9 * S) is None
    assert k.due(10 * S) == PING
    k.ping_sent(10 * S)
    assert k.due(14 * S) is None and k.next_deadline_ns() == 15 * S
    k.on_frame(14 * S, 0, b"PONG")
    assert k.due(15 * S) is None and k.next_deadline_ns() == 20 * S


def test_keepalive_missing_pong_is_a_dead_connection():
    k = Keepalive(0, 10, 5, 120)
    k.ping_sent(10 * S)
    k.on_frame(12 * S, 1, b'{"event_type":"book"}')  # data does not answer a PING
    assert k.due(15 * S - 1) is None
    assert k.due(15 * S) == PING_TIMEOUT


def test_data_idle_watchdog_ignores_pongs_silent_stall():
    k = Keepalive(0, 10, 5, 30)
    for t in (10, 20):
        k.ping_sent(t * S)
        k.on_frame(t * S + 1, 0, b"PONG")
    assert k.due(29 * S) is None
    assert k.due(30 * S) == DATA_IDLE
    k2 = Keepalive(0, 10, 5, 30)
    k2.on_frame(25 * S, 1, b'[{"event_type":"book"}]')
    assert k2.due(30 * S) == PING  # data at 25 s reset the idle watchdog; only the PING is due
    assert k2.due(55 * S - 1) != DATA_IDLE and k2.due(55 * S) == DATA_IDLE
    assert Keepalive(0, 100, 5, 30).due(30 * S) == DATA_IDLE


def test_backoff_doubles_and_caps():
    assert [backoff_seconds(a, 0.5, 4) for a in range(1, 7)] == [0.5, 1.0, 2.0, 4, 4, 4]


def test_subscribe_messages_chunk_at_100_with_initial_form_first():
    toks = tuple(str(i) for i in range(250))
    msgs = [orjson.loads(x) for x in subscribe_messages(toks, 100)]
    assert [len(x["assets_ids"]) for x in msgs] == [100, 100, 50]
    assert msgs[0]["type"] == "market" and msgs[0]["initial_dump"] is True and "operation" not in msgs[0]
    assert all(x["operation"] == "subscribe" and "type" not in x for x in msgs[1:])
    assert [t for x in msgs for t in x["assets_ids"]] == list(toks)


@pytest.mark.parametrize(
    "opcode, payload, flags",
    [(1, b'{"a":1}', 0), (1, b"[{}]", 0), (1, b"  {}", 0), (1, b"PONG", FLAG_CONTROL), (1, b"INVALID OPERATION", FLAG_CONTROL),
     (1, b"NO NEW ASSETS", FLAG_CONTROL), (1, b"\xff\xfe", FLAG_NOT_JSON), (2, b"{}", FLAG_NOT_JSON), (1, b"", FLAG_NOT_JSON)],
)
def test_classify_without_parsing(opcode, payload, flags):
    assert frame_shape(opcode, payload)[0] == flags


# Frames a stalled or odd server sends: none of them is market data (ADR/0007).
NOT_MARKET_DATA = [
    (1, b"[]", 0), (1, b" [ ]\n", 0), (1, b"PONG", FLAG_CONTROL), (1, b" PONG\n", FLAG_CONTROL),
    (1, b"NO NEW ASSETS", FLAG_CONTROL), (1, b'{"asset_id":"71321","event_type":"pri', FLAG_NOT_JSON),
    (1, b'[{"event_type":"book","asset_id":"1"}', FLAG_NOT_JSON), (1, b'{"a":1]', FLAG_NOT_JSON),
    (1, b"{", FLAG_NOT_JSON), (1, b"", FLAG_NOT_JSON), (1, b"   ", FLAG_NOT_JSON), (1, b"hello", FLAG_NOT_JSON),
    (1, b"\xff\xfe", FLAG_NOT_JSON), (2, b'{"event_type":"book"}', FLAG_NOT_JSON),
]


@pytest.mark.parametrize("opcode, payload, flags", NOT_MARKET_DATA)
def test_only_frames_that_carry_market_events_are_market_data(opcode, payload, flags):
    assert frame_shape(opcode, payload) == (flags, 0)


@pytest.mark.parametrize("opcode, payload, flags", NOT_MARKET_DATA)
def test_no_frame_but_market_data_resets_the_data_idle_watchdog(opcode, payload, flags):
    """The watchdog is fed what the receive path counted, so the rule is the same one."""
    from pm_arb.actors.gauge import DepthGauge
    from pm_arb.capture.reader_sink import ReaderSink
    from pm_arb.clock import ManualClock

    class Writer:
        def tell(self, msg):
            pass

    sink = ReaderSink(0, lambda msg: None, Writer(), ManualClock(), DepthGauge(), 100, DepthGauge(), 100, 10, 1.0, 1)
    k = Keepalive(0, 100, 100, 30)
    for t in range(1, 30):
        k.on_frame(t * S, sink.frame(opcode, payload), payload)
    assert k.due(30 * S) == DATA_IDLE and k.market_frames == 0
    k.on_frame(31 * S, sink.frame(1, b'{"event_type":"book","asset_id":"1"}'), b"")
    assert k.due(60 * S) is None and k.market_frames == 1


def test_cheap_scan_agrees_with_a_full_parse_on_every_fixture_frame():
    from pm_arb.capture.frame_parse import asset_ids
    from pm_arb.store.fixtures import load_fixture_set

    checked = 0
    for f in load_fixture_set(None).frames:
        flags, cheap_events = frame_shape(f.opcode, f.payload)
        if flags != 0:
            continue
        events, tokens, ok = scan_market_events(f.payload)
        assert ok and cheap_events == events
        assert asset_ids(f.payload) == tokens
        checked += 1
    assert checked > 3000
    assert frame_shape(1, b'{"event_type": "book", "asset_id": ')[0] == FLAG_NOT_JSON and frame_shape(1, b"[{}]  \n")[0] == 0


def test_scan_market_events_counts_array_items_and_price_change_tokens():
    frame = orjson.dumps([
        {"event_type": "book", "asset_id": "1"},
        {"event_type": "price_change", "market": "0x", "price_changes": [{"asset_id": "2"}, {"asset_id": "3"}]},
    ])
    assert scan_market_events(frame) == (2, ["1", "2", "3"], True)
    assert scan_market_events(b'{"event_type": "bro') == (0, [], False)


def row(**over):
    base = {"id": "5", "conditionId": "0xc", "active": True, "closed": False, "archived": False, "enableOrderBook": True,
            "acceptingOrders": True, "outcomes": '["Yes", "No"]', "clobTokenIds": '["111", "222"]'}
    base.update(over)
    return base


@pytest.mark.parametrize(
    "over, why",
    [
        ({}, None),
        ({"acceptingOrders": None}, None),
        ({"outcomes": ["Yes", "No"], "clobTokenIds": ["1", "2"]}, None),
        ({"active": False}, "not active"),
        ({"closed": True}, "closed"),
        ({"closed": None}, "closed"),
        ({"archived": True}, "archived"),
        ({"enableOrderBook": False}, "no order book"),
        ({"acceptingOrders": False}, "not accepting orders"),
        ({"outcomes": '["Up", "Down"]'}, "outcomes are not exactly Yes/No"),
        ({"outcomes": "not json"}, "outcomes are not exactly Yes/No"),
        ({"clobTokenIds": ""}, "not two token ids"),
        ({"clobTokenIds": '["1", ""]'}, "not two token ids"),
        ({"clobTokenIds": '["1", "2", "3"]'}, "not two token ids"),
        ({"conditionId": ""}, "no condition id"),
    ],
)
def test_selection_rule(over, why):
    assert rejection(row(**over)) == why


def test_select_is_deterministic_deduplicated_and_capped():
    rows = make_gamma_rows(30, seed=1)
    a, rej = select_markets(rows, 10)
    b, _ = select_markets(list(reversed(rows)), 10)
    assert a == b and len(a) == 10 and rej["over capture_max_markets"] == 20
    assert [int(m.id) for m in a] == sorted(int(m.id) for m in a)
    dup = rows + [dict(rows[0], id="999999")]
    assert len(select_markets(dup, 1000)[0]) == 30


def cfg(**over):
    return Config(capture_universe_refresh_interval_seconds=60, capture_universe_refresh_max_interval_seconds=600,
                  capture_universe_refresh_min_delta_tokens=2, capture_universe_refresh_max_churn_pct=10,
                  capture_universe_refresh_churn_guard_consecutive_fatal=3, **over)


def test_refresh_decisions():
    cur = {f"t{i}" for i in range(100)}
    assert decide(cur, cur, cfg(), 0, 60).reason == "no_change"
    d = decide(cur, cur | {"new"}, cfg(), 2, 240)
    assert (d.reason, d.applied, d.consecutive_churn_guards, d.next_interval_seconds) == ("below_min_delta", False, 0, 60)
    d = decide(cur, (cur - {"t1"}) | {"n1", "n2"}, cfg(), 0, 60)
    assert (d.reason, d.applied, sorted(d.added), sorted(d.removed), d.churn_pct) == ("applied", True, ["n1", "n2"], ["t1"], 3.0)
    big = {f"x{i}" for i in range(20)} | cur
    d1 = decide(cur, big, cfg(), 0, 60)
    assert (d1.reason, d1.applied, d1.consecutive_churn_guards, d1.next_interval_seconds, d1.fatal) == ("churn_guard", False, 1, 120, False)
    d2 = decide(cur, big, cfg(), 1, 120)
    assert (d2.next_interval_seconds, d2.fatal) == (240, False)
    d3 = decide(cur, big, cfg(), 2, 480)
    assert (d3.next_interval_seconds, d3.consecutive_churn_guards, d3.fatal) == (600, 3, True)


def test_histogram_bound_and_exact_small_values():
    for v in list(range(0, 300)) + [1023, 1024, 99_999, 10**9 + 7]:
        f = bucket_floor(bucket_of(v))
        assert f <= v and v - f <= v * RELATIVE_ERROR_BOUND
    assert bucket_floor(bucket_of(255)) == 255
    h = merge({}, {str(bucket_of(us)): 1 for us in range(1, 101)})
    p = percentiles(h, (0.5, 0.99, 1.0))
    assert p == {0.5: 0.05, 0.99: 0.099, 1.0: 0.1}
    assert percentiles({}, (0.5,)) == {0.5: None}


def _per_frame(applied_ns, stamps):
    h = {}
    for s in stamps:
        k = bucket_of((applied_ns - s) // 1000)
        h[k] = h.get(k, 0) + 1
    return h


def test_batch_histogram_equals_per_frame_buckets():
    import random

    rng = random.Random(7)
    applied = 10**15
    cases = [
        [],
        [applied - 5_000],
        [applied - 400_000_000 + i * 900 for i in range(1024)],  # a loaded pipeline: deep queue
        [applied - 3_000_000 + i * 1_000 for i in range(3000)],  # latencies falling through many buckets
        [applied - 900 + i for i in range(600)],  # the last ones are newer than `applied`: bucket 0
    ]
    for _ in range(50):
        n = rng.randint(1, 2000)
        cases.append(sorted(applied - rng.randint(-2_000, 10**9) for _ in range(n)))
    for stamps in cases:
        h = {}
        top = add_batch(h, applied, stamps)
        assert h == _per_frame(applied, stamps)
        assert top == (max(0, (applied - min(stamps)) // 1000) if stamps else 0)
    # out of order (a clock that is not monotonic): still every frame counted once
    stamps = [applied - rng.randint(0, 10**8) for _ in range(500)]
    h = {}
    add_batch(h, applied, stamps)
    assert sum(h.values()) == 500


def test_market_events_one_per_object_and_counted_in_arrays():
    assert market_events(b'{"event_type":"price_change","price_changes":[{"event_type":"x"}]}') == 1
    assert market_events(b'  {"event_type":"book"}') == 1
    assert market_events(b'[{"event_type":"book"},{"event_type":"book"},{"event_type":"book"}]') == 3
    assert market_events(b"[]") == 0 and market_events(b" [ ] ") == 0
