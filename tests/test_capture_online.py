"""Discover and online capture against the loopback simulated exchange, over real sockets.

The simulator runs in the test process (so tests can script faults); the capture is a real
`pm_arb capture` subprocess pointed at the simulator's URLs.
"""

from __future__ import annotations

import time

import orjson
import pytest

from pm_arb.sim.exchange import SimExchange
from pm_arb.sim.market_data import make_gamma_rows
from pm_arb.store.shard_files import ShardReader, shard_numbers
from pm_arb.universe.placement import PlacementRules, place
from pm_arb.universe.select import select_markets
from tests.conftest import assert_one_line_error, read_runlog_dicts, run_cli, start_cli, stop_with, wait_for_line, wait_for_runlog

FAST = [
    "--ws-shards", "4",
    "--ws-reconnect-backoff-initial-seconds", "0.1",
    "--ws-reconnect-backoff-max-seconds", "0.5",
    "--capture-confirm-timeout-seconds", "5",
    "--gamma-max-retries", "1",
    "--gamma-retry-backoff-seconds", "0.05",
    "--gamma-request-timeout-seconds", "2",
]


@pytest.fixture
def sim():
    with SimExchange(markets=40, rate=400, record_sent=True) as s:
        yield s


def start_capture(sim, data_dir, run_id, *extra):
    args = ["capture", "--gamma-base-url", sim.gamma_url, "--clob-ws-url", sim.ws_url, "--run-id", run_id,
            "--data-dir", str(data_dir), *FAST, *extra]
    proc = start_cli(*args)
    run_dir = data_dir / "runs" / run_id
    first = wait_for_line(proc)
    assert first == str(run_dir), (first, proc.stderr.read() if proc.poll() is not None else "")
    return proc, run_dir


def events(run_dir, kind):
    return [r for r in read_runlog_dicts(run_dir) if r["type"] == kind]


RULES = PlacementRules(cap_tokens=400, min_shards=4)  # FAST's --ws-shards 4, the default cap


def shard_map(markets) -> dict[str, int]:
    """Where capture places these markets at start: condition id -> shard."""
    return place(None, markets, RULES).placement.shard_of


# --- discover ---------------------------------------------------------------------------------


def test_discover_pages_to_the_end_and_filters():
    with SimExchange(markets=250, rate=0) as s:
        proc = run_cli("discover", "--gamma-base-url", s.gamma_url, "--gamma-page-limit", "100", "--json")
        assert proc.returncode == 0, proc.stderr
        doc = orjson.loads(proc.stdout)
        listed = [r for r in s.rows() if not r["closed"]]
        assert doc["totals"]["pages_fetched"] == -(-len(listed) // 100) and doc["totals"]["markets_seen"] == len(listed)
        assert doc["totals"]["selected"] == 250
        assert set(doc["totals"]["rejected"]) == {"no order book", "outcomes are not exactly Yes/No", "not two token ids"}
        expected, _ = select_markets(s.rows(), 2000)
        assert [m["condition_id"] for m in doc["markets"]] == [m.condition_id for m in expected]
        assert all("/markets/keyset?" in p and "closed=false" in p for p in s.gamma_requests)
        assert sum("after_cursor=" in p for p in s.gamma_requests) == doc["totals"]["pages_fetched"] - 1
        plan = doc["totals"]["plan"]  # 500 tokens fit 8 shards (the minimum) under the 400 cap
        assert (plan["shards"], plan["shards_min"], plan["cap_tokens"]) == (8, 8, 400) and plan["busiest_tokens"] <= 400
        assert sum(r["tokens"] for r in doc["totals"]["shard_token_counts"]) == 500 and {m["shard"] for m in doc["markets"]} == set(range(8))
        few = orjson.loads(run_cli("discover", "--gamma-base-url", s.gamma_url, "--ws-max-tokens-per-shard", "50", "--json").stdout)
        assert few["totals"]["plan"]["shards"] == 10 and "500 tokens need 10 connections" in few["totals"]["plan"]["reason"]
        text = run_cli("discover", "--gamma-base-url", s.gamma_url, "--capture-max-markets", "10", "--limit", "3")
        assert text.returncode == 0 and "selected: 10 (20 tokens), shown: 3" in text.stdout
        assert "plan: 8 shards: 8 connections (--ws-shards); 20 tokens fit at most 400 to a connection; busiest shard" in text.stdout
        assert expected[0].yes_token in text.stdout


def test_discover_retries_then_fails_with_one_line():
    with SimExchange(markets=5, rate=0) as s:
        s.gamma_script.extend(["500", "bad_json"])
        ok = run_cli("discover", "--gamma-base-url", s.gamma_url, "--gamma-max-retries", "2", "--gamma-retry-backoff-seconds", "0.01", "--json")
        assert ok.returncode == 0 and orjson.loads(ok.stdout)["totals"]["retries"] == 2
        s.gamma_script.extend(["503"] * 5)
        bad = run_cli("discover", "--gamma-base-url", s.gamma_url, "--gamma-max-retries", "2", "--gamma-retry-backoff-seconds", "0.01")
        assert "HTTP 503 (after 2 retries)" in assert_one_line_error(bad, 1)
        s.gamma_loop = True
        loop = run_cli("discover", "--gamma-base-url", s.gamma_url, "--gamma-page-limit", "2")
        assert "paging loops" in assert_one_line_error(loop, 1)


def test_discover_dead_server_is_one_line_exit_1():
    bad = run_cli("discover", "--gamma-base-url", "http://127.0.0.1:9", "--gamma-max-retries", "1", "--gamma-retry-backoff-seconds", "0.01")
    assert "cannot connect" in assert_one_line_error(bad, 1)


# --- capture ----------------------------------------------------------------------------------


def test_four_shard_capture_has_every_sent_frame_in_order_per_connection(sim, data_dir):
    proc, run_dir = start_capture(sim, data_dir, "all", "--no-capture-universe-refresh-enable")
    wait_for_runlog(run_dir, lambda r: r["type"] == "heartbeat" and r["frames_total"] > 300)
    sim.send_data = False  # let in-flight frames land, so "sent" and "received" can be compared exactly
    time.sleep(0.5)
    code, _, err = stop_with(proc)
    assert code == 0, err
    assert run_cli("capture-verify", "--run-dir", str(run_dir)).returncode == 0
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    shard_tokens = {}
    for mk in manifest["universe"]["markets"]:
        shard_tokens.setdefault(mk["shard"], set()).update((mk["yes_token"], mk["no_token"]))
    total = 0
    for s in shard_numbers(run_dir / "capture"):
        with ShardReader(run_dir / "capture", s) as rd:
            got = [r.payload for r in rd]
        sent = [p for conn in sim.sent_payloads(shard_tokens[s]) for p in conn]
        assert got == sent, f"shard {s}: {len(got)} captured vs {len(sent)} sent"
        total += len(got)
    assert total > 300
    check = run_cli("capture-check", "--run-dir", str(run_dir))
    assert check.returncode == 0, check.stdout


def test_killed_connections_reconnect_and_are_recorded(sim, data_dir):
    proc, run_dir = start_capture(sim, data_dir, "kill", "--no-capture-universe-refresh-enable")
    wait_for_runlog(run_dir, lambda r: r["type"] == "run_confirmed")
    assert sim.close_all_connections() == 4
    wait_for_runlog(run_dir, lambda r: r["type"] == "shard_connected" and r["attempt"] == 2 and len(events(run_dir, "shard_connected")) >= 8)
    sim.drop_all_connections()
    wait_for_runlog(run_dir, lambda r: len([x for x in read_runlog_dicts(run_dir) if x["type"] == "shard_connected"]) >= 12)
    code, _, err = stop_with(proc)
    assert code == 0, err
    disc = [r for r in events(run_dir, "shard_disconnected") if not r["planned"]]
    assert len(disc) >= 8 and {r["cause"] for r in disc} <= {"server_close", "error"}
    assert any("1001" in r["detail"] for r in disc)
    rec = [r for r in events(run_dir, "shard_reconnect") if not r["planned"]]
    assert len(rec) >= 8 and all(r["backoff_seconds"] > 0 for r in rec)
    report = orjson.loads(run_cli("capture-latency-report", "--run-dir", str(run_dir), "--json").stdout)
    assert report["reconnects"]["total"] >= 8 and report["disconnected"]["midrun"]["incidents"] >= 8
    assert report["gates"]["reconnects_midrun"]["pass"] is False
    assert run_cli("capture-check", "--run-dir", str(run_dir)).returncode == 1
    assert run_cli("capture-verify", "--run-dir", str(run_dir)).returncode == 0


def test_silent_stall_and_missing_pong_are_detected_with_cause(sim, data_dir):
    proc, run_dir = start_capture(sim, data_dir, "stall", "--no-capture-universe-refresh-enable",
                                  "--ws-ping-interval-seconds", "0.5", "--ws-ping-timeout-seconds", "1",
                                  "--ws-data-idle-reconnect-seconds", "2")
    wait_for_runlog(run_dir, lambda r: r["type"] == "run_confirmed")
    sim.send_data, sim.initial_dump = False, False  # PONGs keep coming, data stops: Polymarket's silent stall
    wait_for_runlog(run_dir, lambda r: r["type"] == "shard_disconnected" and r["cause"] == "data_idle", timeout=15)
    sim.send_data, sim.initial_dump = True, True
    sim.answer_ping = False
    wait_for_runlog(run_dir, lambda r: r["type"] == "shard_disconnected" and r["cause"] == "ping_timeout", timeout=15)
    code, _, err = stop_with(proc)
    assert code == 0, err
    idle = [r for r in events(run_dir, "shard_disconnected") if r["cause"] == "data_idle"]
    assert idle and "no market data for 2 s" in idle[0]["detail"] and not idle[0]["planned"]
    pt = [r for r in events(run_dir, "shard_disconnected") if r["cause"] == "ping_timeout"]
    assert pt and "no PONG within 1 s" in pt[0]["detail"]
    causes = {r["cause"] for r in events(run_dir, "shard_reconnect")}
    assert {"data_idle", "ping_timeout"} <= causes


def test_a_silent_shard_makes_confirm_fatal_with_missing_tokens(sim, data_dir):
    markets, _ = select_markets(sim.rows(), 2000)
    where = shard_map(markets)
    silent = {t for mk in markets if where[mk.condition_id] == 1 for t in (mk.yes_token, mk.no_token)}
    # every market of shard 1, and one market of shard 2 (a token of a pair can also be silenced alone)
    one_more = next({mk.yes_token, mk.no_token} for mk in markets if where[mk.condition_id] == 2)
    sim.silent_tokens = silent | one_more
    proc, run_dir = start_capture(sim, data_dir, "fatal", "--capture-confirm-timeout-seconds", "2", "--no-capture-universe-refresh-enable")
    code, _, err = proc.wait(timeout=30), proc.stdout.read(), proc.stderr.read()
    assert code == 1, err
    assert "FATAL (confirm_timeout)" in err and "Traceback" not in err
    fatal = orjson.loads((run_dir / "fatal.json").read_bytes())
    assert fatal["reason"] == "confirm_timeout" and "shard(s) 01" in fatal["message"]
    missing = orjson.loads((run_dir / "missing_tokens.json").read_bytes())
    assert {m["token"] for m in missing["tokens"]} == silent | one_more
    assert {m["shard"] for m in missing["tokens"] if m["token"] in silent} == {1}
    for s in (0, 2, 3):
        assert (run_dir / f"last_frames_shard_{s:02d}.bin").stat().st_size > 16
    replay = orjson.loads(run_cli("capture-replay", "--run-dir", str(run_dir), "--until-seq", str(fatal["seq"]), "--json").stdout)
    replay["state"].pop("missing_token_ids")
    assert replay["state"] == fatal["state"]
    check = run_cli("capture-check", "--run-dir", str(run_dir))
    assert check.returncode == 1 and "FAIL  fatal" in check.stdout


def _swap_markets(rows, remove: int, add_seed: int, add: int):
    """Drop `remove` active markets and add `add` new ones (ids after the existing ones)."""
    active = [r for r in rows if r["active"] and not r["closed"] and r["enableOrderBook"] and r["outcomes"] == '["Yes", "No"]' and r["clobTokenIds"]]
    gone = {r["id"] for r in active[:remove]}
    fresh = make_gamma_rows(add, seed=add_seed, first_id=900_000, extras=False)
    return [r for r in rows if r["id"] not in gone] + fresh


def test_refresh_reconnects_only_the_shards_whose_tokens_changed(data_dir):
    with SimExchange(markets=60, rate=300, record_sent=False) as sim:
        proc, run_dir = start_capture(sim, data_dir, "refresh", "--capture-universe-refresh-interval-seconds", "1",
                                      "--capture-universe-refresh-stagger-seconds", "0.2", "--capture-universe-refresh-grace-seconds", "5")
        wait_for_runlog(run_dir, lambda r: r["type"] == "universe_refresh" and r["reason"] == "no_change")
        before, _ = select_markets(sim.rows(), 2000)
        sim.set_rows(_swap_markets(sim.rows(), remove=2, add_seed=99, add=2))
        after, _ = select_markets(sim.rows(), 2000)
        wait_for_runlog(run_dir, lambda r: r["type"] == "universe_refresh" and r["applied"])
        old = {m.condition_id: m for m in before}
        new = {m.condition_id: m for m in after}
        step = place(place(None, before, RULES).placement, after, RULES)
        changed = set(step.changed_shards())
        assert 1 <= len(changed) <= 4 and not step.opened
        wait_for_runlog(run_dir, lambda r: r["type"] == "shard_refresh_applied" and len(events(run_dir, "shard_refresh_applied")) == len(changed))
        code, _, err = stop_with(proc)
        assert code == 0, err
    refresh = [r for r in events(run_dir, "universe_refresh") if r["applied"]][0]
    assert (refresh["added_count"], refresh["removed_count"]) == (4, 4)
    for key in ("duration_ms", "reason", "churn_pct", "interval_seconds_used", "gamma_pages_fetched", "markets_seen", "tokens_selected"):
        assert key in refresh
    assert {r["shard"] for r in events(run_dir, "shard_refresh_begin")} == changed
    planned = [r for r in events(run_dir, "shard_disconnected") if r["cause"] == "refresh"]
    assert {r["shard"] for r in planned} == changed and all(r["planned"] for r in planned)
    begins = sorted(r["mono_ns"] for r in events(run_dir, "shard_refresh_begin"))
    assert all(b - a >= 0.15e9 for a, b in zip(begins, begins[1:]))  # staggered
    # the runlog names every placement the refresh made: released markets, new ones, their shards
    released = {(r["condition_id"], r["shard"]) for r in events(run_dir, "market_released")}
    placed = {(r["condition_id"], r["shard"]) for r in events(run_dir, "market_assigned") if r["reason"] == "refresh"}
    assert released == set(step.released) and placed == {(c, s) for c, s, *_ in step.assigned}
    assert {s for _c, s in released | placed} == changed
    assigned = [r for r in events(run_dir, "universe_assigned") if r["reason"] == "refresh"][0]
    added = {t for c in set(new) - set(old) for t in (new[c].yes_token, new[c].no_token)}
    assert set(assigned["grace_tokens"]) == added
    report = orjson.loads(run_cli("capture-latency-report", "--run-dir", str(run_dir), "--json").stdout)
    assert report["reconnects"]["total"] == 0 and report["reconnects"]["planned"] == len(changed)


def test_churn_above_the_cap_backs_off_then_goes_fatal(data_dir):
    with SimExchange(markets=30, rate=200) as sim:
        proc, run_dir = start_capture(sim, data_dir, "churn", "--capture-universe-refresh-interval-seconds", "0.5",
                                      "--capture-universe-refresh-max-interval-seconds", "2",
                                      "--capture-universe-refresh-churn-guard-consecutive-fatal", "3")
        wait_for_runlog(run_dir, lambda r: r["type"] == "run_confirmed")
        sim.set_rows(_swap_markets(sim.rows(), remove=10, add_seed=5, add=10))
        code = proc.wait(timeout=40)
        err = proc.stderr.read()
    assert code == 1, err
    guards = [r for r in events(run_dir, "universe_refresh") if r["reason"] == "churn_guard"]
    assert [g["consecutive_churn_guards"] for g in guards] == [1, 2, 3]
    assert [g["next_interval_seconds"] for g in guards] == [1.0, 2.0, 2.0]
    assert all(not g["applied"] and g["churn_pct"] > 10 for g in guards)
    fatal = orjson.loads((run_dir / "fatal.json").read_bytes())
    assert fatal["reason"] == "churn_guard" and fatal["state"]["churn_guard_consecutive"] == 3


def test_gamma_outage_during_refresh_is_an_error_event_and_capture_goes_on(sim, data_dir):
    proc, run_dir = start_capture(sim, data_dir, "outage", "--capture-universe-refresh-interval-seconds", "0.5")
    wait_for_runlog(run_dir, lambda r: r["type"] == "run_confirmed")
    sim.gamma_script.extend(["500"] * 4)
    wait_for_runlog(run_dir, lambda r: r["type"] == "universe_refresh_error")
    n = len(events(run_dir, "heartbeat"))
    wait_for_runlog(run_dir, lambda r: r["type"] == "universe_refresh" and r["seq"] > events(run_dir, "universe_refresh_error")[0]["seq"])
    code, _, err = stop_with(proc)
    assert code == 0, err
    errs = events(run_dir, "universe_refresh_error")
    assert errs[0]["error"] == "http" and "HTTP 500" in errs[0]["message"] and errs[0]["duration_ms"] >= 0
    assert len(events(run_dir, "heartbeat")) > n
    assert not (run_dir / "fatal.json").exists()


def test_dead_exchange_at_start_is_one_line_exit_1(data_dir):
    proc = run_cli("capture", "--gamma-base-url", "http://127.0.0.1:9", "--data-dir", str(data_dir), "--gamma-max-retries", "0")
    line = assert_one_line_error(proc, 1)
    assert "cannot discover the universe" in line
    assert not (data_dir / "runs").exists() or not any((data_dir / "runs").iterdir())


def test_refused_connections_are_retried_with_backoff_until_the_server_accepts(sim, data_dir):
    sim.refuse_connections = True  # Gamma answers, the WebSocket upgrade gets HTTP 503
    proc, run_dir = start_capture(sim, data_dir, "refused", "--no-capture-universe-refresh-enable", "--capture-confirm-timeout-seconds", "20")
    def three_failures_each(_r) -> bool:
        fails = [r["shard"] for r in events(run_dir, "shard_reconnect") if r["cause"] == "connect_failed"]
        return len(set(fails)) == 4 and all(fails.count(s) >= 3 for s in set(fails))

    wait_for_runlog(run_dir, three_failures_each)
    sim.refuse_connections = False
    wait_for_runlog(run_dir, lambda r: r["type"] == "run_confirmed", timeout=30)
    code, _, err = stop_with(proc)
    assert code == 0, err
    failed = [r for r in events(run_dir, "shard_disconnected") if r["cause"] == "connect_failed"]
    assert failed and all("503" in r["detail"] for r in failed)
    for shard in range(4):
        backoffs = [r["backoff_seconds"] for r in events(run_dir, "shard_reconnect") if r["shard"] == shard]
        assert backoffs[:3] == [0.1, 0.2, 0.4]
    assert run_cli("capture-verify", "--run-dir", str(run_dir)).returncode == 0


def test_sim_caps_assets_per_connection():
    import websocket

    with SimExchange(markets=10, rate=2000, record_sent=True) as s:
        s.max_assets_per_connection = 2
        markets, _ = select_markets(s.rows(), 100)
        toks = [t for mk in markets[:3] for t in (mk.yes_token, mk.no_token)]
        ws = websocket.create_connection(s.ws_url, timeout=5)
        try:
            ws.send(orjson.dumps({"assets_ids": toks, "type": "market", "initial_dump": True}))
            seen = set()
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                data = ws.recv()
                doc = orjson.loads(data)
                for item in doc if isinstance(doc, list) else [doc]:
                    seen.add(item.get("asset_id"))
                    seen.update(c["asset_id"] for c in item.get("price_changes", []))
            ws.send(orjson.dumps({"assets_ids": toks, "type": "market"}))
            replies = [ws.recv() for _ in range(200)]
            assert "INVALID OPERATION" in replies  # the initial form twice on one socket
        finally:
            ws.close()
        assert seen - {None} <= set(toks[:2]) and toks[0] in seen
