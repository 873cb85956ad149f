"""The per-connection token cap and the liveness rule, against the simulated exchange over real
sockets (ADR/0007). The simulator does what Polymarket does past ~500 tokens on one connection:
the socket stays up and PONGs come, but the tokens past its limit get nothing."""

from __future__ import annotations

import orjson
import pyarrow.parquet as pq
import xxhash

from pm_arb.capture.frame_parse import asset_ids, frame_shape
from pm_arb.reader import open_run
from pm_arb.sim.exchange import STALL_GARBAGE, SimExchange
from pm_arb.universe.select import select_markets
from tests.conftest import records_by_shard, run_cli, start_cli, stop_with, wait_for_line, wait_for_runlog
from tests.test_capture_online import events, start_capture


def silenced_by_sim(sim: SimExchange) -> set[str]:
    """Tokens some connection subscribed past the simulator's per-connection limit."""
    cap = sim.max_assets_per_connection
    return {t for c in sim.connections.values() for t in c.tokens[cap:]}


def never_seen(run_dir) -> set[str]:
    """Tokens of the universe no market event ever carried in this run."""
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    universe = {t for mk in manifest["universe"]["markets"] for t in (mk["yes_token"], mk["no_token"])}
    seen = {t for r in events(run_dir, "tokens_first_seen") for t in r["tokens"]}
    return universe - seen


def capture_a_while(sim, data_dir, run_id, *extra):
    proc, run_dir = start_capture(sim, data_dir, run_id, "--no-capture-universe-refresh-enable", *extra)
    wait_for_runlog(run_dir, lambda r: r["type"] == "run_confirmed")
    # long enough for every served token to have sent its book and some deltas
    wait_for_runlog(run_dir, lambda r: r["type"] == "heartbeat" and r["frames_total"] > 600)
    code, _, err = stop_with(proc)
    assert code == 0, err
    return run_dir


def test_a_cap_the_exchange_does_not_honour_loses_tokens_and_the_enforced_cap_loses_none(data_dir):
    """60 markets (120 tokens) and an exchange that serves 40 tokens a connection. With the cap
    above that (as when it was only reported), 2 connections carry ~60 tokens each and the
    tokens past 40 never produce an event; with the cap at 40, 3 connections lose nothing."""
    with SimExchange(markets=60, rate=600) as sim:
        sim.max_assets_per_connection = 40
        old = capture_a_while(sim, data_dir, "uncapped", "--ws-shards", "2", "--ws-max-tokens-per-shard", "1000")
        lost = silenced_by_sim(sim)
    missing = never_seen(old)
    # Only silenced tokens are missing; a silenced token whose market's other token is served
    # still shows up in that market's price_change messages, so not every silenced one is.
    assert len(lost) >= 30 and len(missing) >= 5 and missing <= lost
    assert orjson.loads(run_cli("capture-replay", "--run-dir", str(old), "--json").stdout)["state"]["missing_tokens"] == len(missing)

    with SimExchange(markets=60, rate=600) as sim:
        sim.max_assets_per_connection = 40
        new = capture_a_while(sim, data_dir, "capped", "--ws-shards", "2", "--ws-max-tokens-per-shard", "40")
        assert silenced_by_sim(sim) == set()
    assert never_seen(new) == set()
    plan = events(new, "shards_planned")[0]
    assert (plan["shards"], plan["shards_min"], plan["cap_tokens"]) == (3, 2, 40) and "need 3 connections" in plan["reason"]
    assert all(len(t) <= 40 for t in events(new, "universe_assigned")[0]["shard_tokens"].values())


def test_the_defaults_take_ten_connections_for_2000_markets_and_the_exchange_silences_nothing(data_dir):
    """The issue's case with default settings: 2,000 markets, --ws-shards 8, an exchange that
    serves 500 tokens a connection. The old rule (xxh64 % 8) would put more than 500 on a shard."""
    with SimExchange(markets=2000, rate=1000) as sim:
        sim.max_assets_per_connection = 500
        markets, _ = select_markets(sim.rows(), 2000)
        loads = [0] * 8
        for mk in markets:
            loads[xxhash.xxh64_intdigest(mk.condition_id.encode()) % 8] += 2
        assert max(loads) > 500  # what the old placement would have lost

        run_dir = data_dir / "runs" / "defaults"
        proc = start_cli("capture", "--gamma-base-url", sim.gamma_url, "--clob-ws-url", sim.ws_url, "--run-id", "defaults",
                         "--data-dir", str(data_dir), "--no-capture-universe-refresh-enable")
        assert wait_for_line(proc, timeout=60) == str(run_dir)
        wait_for_runlog(run_dir, lambda r: r["type"] == "heartbeat" and r["coverage_pct"] == 100.0, timeout=90)
        code, _, err = stop_with(proc)
        assert code == 0, err
        assert "10 shards: 4,000 tokens need 10 connections of at most 400 tokens each" in err
        assert silenced_by_sim(sim) == set() and len({c.conn_id for c in sim.connections.values()}) == 10
    plan = events(run_dir, "shards_planned")[0]
    assert (plan["shards"], plan["shards_min"], plan["cap_tokens"], plan["busiest_tokens"]) == (10, 8, 400, 400)
    assert len(events(run_dir, "market_assigned")) == 2000 and never_seen(run_dir) == set()
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert manifest["universe"]["placement"]["busiest_over_mean"] == 1.0
    connecting = sorted(r["mono_ns"] for r in events(run_dir, "shard_connecting"))
    assert all(b - a >= 0.4e9 for a, b in zip(connecting, connecting[1:]))  # opened 0.5 s apart


def test_a_stall_that_keeps_sending_empty_dumps_pongs_and_garbage_is_caught_by_the_data_idle_watchdog(data_dir):
    """Data stops, but `[]` every 0.3 s, a truncated JSON frame every third time, and PONGs keep
    coming. None of them is market data, so the 2 s data-idle watchdog still fires."""
    with SimExchange(markets=20, rate=200, record_sent=True) as sim:
        proc, run_dir = start_capture(sim, data_dir, "noisy-stall", "--no-capture-universe-refresh-enable",
                                      "--ws-ping-interval-seconds", "0.5", "--ws-ping-timeout-seconds", "5",
                                      "--ws-data-idle-reconnect-seconds", "2")
        wait_for_runlog(run_dir, lambda r: r["type"] == "run_confirmed")
        sim.initial_dump = False
        sim.stall_noise_seconds = 0.3
        wait_for_runlog(run_dir, lambda r: len({x["shard"] for x in events(run_dir, "shard_disconnected") if x["cause"] == "data_idle"}) == 4,
                        timeout=20)
        sim.send_data = False
        code, _, err = stop_with(proc)
        assert code == 0, err
    records = records_by_shard(run_dir)
    for disc in [r for r in events(run_dir, "shard_disconnected") if r["cause"] == "data_idle"]:
        before = [r for r in records[disc["shard"]] if r.rx_mono_ns <= disc["mono_ns"]]
        last_data = max(r.rx_mono_ns for r in before if frame_shape(r.opcode, r.payload)[1] > 0)
        noise = {r.payload for r in before if r.rx_mono_ns > last_data}
        assert {b"[]", b"PONG", STALL_GARBAGE} <= noise  # the stall was not silent
        assert 2.0e9 <= disc["mono_ns"] - last_data < 3.0e9  # caught within its limit (and a loop turn)
    last_hb = [r for r in events(run_dir, "heartbeat")][-1]
    for s, recs in records.items():
        flagged = [r for r in recs if r.flags & 2]
        assert flagged and all(r.payload == STALL_GARBAGE for r in flagged)
        assert last_hb["shards"][str(s)]["not_json_frames"] == len(flagged)


def test_a_refresh_past_capacity_opens_a_new_shard_with_its_own_files_and_moves_nobody(data_dir):
    """20 markets fill 2 shards of 20 tokens. A refresh lists 5 more: a third shard opens during
    the run (its own actor, frames/idx files and events); the two full shards are not touched."""
    from pm_arb.sim.market_data import make_gamma_rows

    with SimExchange(markets=20, rate=300) as sim:
        proc, run_dir = start_capture(sim, data_dir, "grow", "--ws-shards", "2", "--ws-max-tokens-per-shard", "20",
                                      "--capture-universe-refresh-interval-seconds", "0.5",
                                      "--capture-universe-refresh-max-churn-pct", "50", "--capture-universe-refresh-grace-seconds", "1")
        wait_for_runlog(run_dir, lambda r: r["type"] == "run_confirmed")
        start_map = {r["condition_id"]: r["shard"] for r in events(run_dir, "market_assigned")}
        fresh = make_gamma_rows(5, seed=99, first_id=900_000, extras=False)
        sim.set_rows(sim.rows() + fresh)
        wait_for_runlog(run_dir, lambda r: r["type"] == "tokens_first_seen" and r["shard"] == 2, timeout=20)
        code, _, err = stop_with(proc)
        assert code == 0, err
    opened = events(run_dir, "shard_opened")
    assert [(r["shard"], r["shards"], r["cap_tokens"]) for r in opened] == [(2, 3, 20)]
    assert "50 tokens need 3 connections" in opened[0]["reason"]
    added = [r for r in events(run_dir, "market_assigned") if r["reason"] == "refresh"]
    assert {r["condition_id"] for r in added} == {row["conditionId"] for row in fresh} and {r["shard"] for r in added} == {2}
    assert not events(run_dir, "market_released")
    # nobody moved: shards 0 and 1 kept their markets and were never reconnected
    assert {r["shard"] for r in events(run_dir, "shard_disconnected") if r["planned"] and r["cause"] == "refresh"} <= {2}
    assert {r["shard"] for r in events(run_dir, "shard_connecting")} == {0, 1, 2}
    assert max(len(t) for r in events(run_dir, "universe_assigned") for t in r["shard_tokens"].values()) <= 20
    assert (run_dir / "capture" / "shard_02.frames").stat().st_size > 16 and (run_dir / "capture" / "shard_02.idx").exists()
    assert run_cli("capture-verify", "--run-dir", str(run_dir)).returncode == 0
    # the runlog rebuilds the placement at any point: before the refresh and at the end
    replay_end = orjson.loads(run_cli("capture-replay", "--run-dir", str(run_dir), "--json").stdout)["placement"]
    first_refresh_seq = added[0]["seq"]
    replay_start = orjson.loads(run_cli("capture-replay", "--run-dir", str(run_dir), "--until-seq", str(first_refresh_seq - 1), "--json").stdout)["placement"]
    assert replay_start["shards"] == 2 and replay_end["shards"] == 3 and replay_end["opened_midrun"] == [2]
    text = run_cli("capture-replay", "--run-dir", str(run_dir)).stdout
    assert "placement: 25 markets on 3 shards (min 2, cap 20 tokens), busiest 20 tokens vs mean 16.7" in text and "opened mid-run: 02" in text
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    for mk in manifest["universe"]["markets"]:
        assert replay_start["token_shard"][mk["yes_token"]] == replay_end["token_shard"][mk["no_token"]] == mk["shard"] == start_map[mk["condition_id"]]
    for r in added:
        assert replay_end["token_shard"][r["yes_token"]] == 2 and r["yes_token"] not in replay_start["token_shard"]
    # a slice of the new shard names the shard of every token its frames carry
    out = data_dir / "slice"
    assert run_cli("capture-slice", "--run-dir", str(run_dir), "--out", str(out), "--from-seq", "0", "--to-seq", "100000", "--shard", "2").returncode == 0
    token_shard = orjson.loads((out / "manifest.json").read_bytes())["slice_of"]["token_shard"]
    carried = {t for recs in records_by_shard(out).values() for r in recs for t in asset_ids(r.payload)}
    assert carried and all(token_shard[t] == 2 for t in carried)
    assert token_shard == replay_end["token_shard"]
    # the refresh records describe the markets they added, so the reader and the export do too
    listed = {row["conditionId"]: row for row in fresh}
    refreshed = open_run(run_dir).refreshed_markets()
    assert {(mk.condition_id, mk.question, mk.slug, mk.gamma_id, mk.shard) for mk in refreshed} == {
        (cid, row["question"], row["slug"], str(row["id"]), 2) for cid, row in listed.items()}
    export = data_dir / "export"
    assert run_cli("capture-export", "--run-dir", str(run_dir), "--out", str(export), "--tables", "markets,incremental_book_L2").returncode == 0
    markets = pq.read_table(export / "markets").to_pylist()
    late = [r for r in markets if r["source"] == "refresh"]
    assert len(late) == 10 and all(r["question"] == listed[r["condition_id"]]["question"] and r["outcome"] in ("Yes", "No") for r in late)
    l2 = pq.read_table(export / "incremental_book_L2", columns=["symbol", "market", "outcome", "shard"]).to_pylist()
    on_new_shard = [r for r in l2 if r["shard"] == 2]
    assert on_new_shard and all(r["market"] in listed and r["outcome"] in ("Yes", "No") for r in on_new_shard)


def test_a_shard_whose_markets_are_all_delisted_holds_no_connection_until_it_gets_markets_again(data_dir):
    """Shards never close during a run; one emptied by a refresh must not connect with no tokens
    (the exchange refuses a subscription of nothing) and takes new markets later."""
    from pm_arb.sim.market_data import make_gamma_rows

    with SimExchange(markets=4, rate=200) as sim:
        proc, run_dir = start_capture(sim, data_dir, "empty", "--ws-shards", "2", "--ws-max-tokens-per-shard", "4",
                                      "--capture-universe-refresh-interval-seconds", "0.5", "--capture-universe-refresh-max-churn-pct", "100",
                                      "--capture-universe-refresh-grace-seconds", "1")
        wait_for_runlog(run_dir, lambda r: r["type"] == "run_confirmed")
        start = {r["condition_id"]: r["shard"] for r in events(run_dir, "market_assigned")}
        keep = {c for c, s in start.items() if s == 0}
        sim.set_rows([r for r in sim.rows() if r["conditionId"] in keep])  # shard 1 loses both its markets
        wait_for_runlog(run_dir, lambda r: r["type"] == "shard_disconnected" and r["shard"] == 1 and r["cause"] == "refresh")
        wait_for_runlog(run_dir, lambda r: r["type"] == "heartbeat" and r["seq"] > events(run_dir, "shard_disconnected")[-1]["seq"] + 3)
        assert not [r for r in events(run_dir, "shard_connecting") if r["tokens"] == 0]
        sim.set_rows(sim.rows() + make_gamma_rows(2, seed=42, first_id=900_000, extras=False))  # room on shard 1 only
        wait_for_runlog(run_dir, lambda r: r["type"] == "tokens_first_seen" and r["shard"] == 1 and r["seq"] > 20, timeout=20)
        code, _, err = stop_with(proc)
        assert code == 0, err
    assert not [r for r in events(run_dir, "shard_connecting") if r["tokens"] == 0]
    assert not [r for r in events(run_dir, "shard_disconnected") if not r["planned"]]
    refill = [r for r in events(run_dir, "market_assigned") if r["reason"] == "refresh"]
    assert len(refill) == 2 and {r["shard"] for r in refill} == {1}
