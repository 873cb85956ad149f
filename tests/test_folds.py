"""Audit, latency report, gates and the supervisor-state fold on hand-written event lists."""

from __future__ import annotations

from pm_arb.events import types as ev
from pm_arb.events.codec import LogRecord
from pm_arb.events.folds.audit import audit
from pm_arb.events.folds.gates import gates
from pm_arb.events.folds.latency import latency_report
from pm_arb.events.folds.supervisor_state import fold
from pm_arb.metrics.latency_hist import bucket_of

S = 1_000_000_000


def hb(phase="running"):
    return ev.Heartbeat(phase=phase, shards={}, frames_total=0, dropped_total=0, coverage_pct=100.0)


def recs(*items):
    """items: (mono_seconds, event) or (mono_seconds, wall_seconds, event)."""
    out = []
    for i, item in enumerate(items):
        if len(item) == 2:
            t, e = item
            w = t
        else:
            t, w, e = item
        out.append(LogRecord(i, int(t * S), int(1_700_000_000 * S + w * S), e))
    return out


def test_audit_empty_and_single():
    assert audit([]) == {"threshold_s": 2.0, "heartbeats": 0, "intervals": 0, "max_gap_s": 0.0, "mean_gap_s": None,
                         "gaps_over_threshold": 0, "gaps": [], "pass": True, "run_stop": None, "last_record": None}
    one = audit(recs((0, hb())))
    assert (one["heartbeats"], one["intervals"], one["gaps_over_threshold"], one["pass"]) == (1, 0, 0, True)
    assert one["run_stop"] is None and one["last_record"] == {"seq": 0, "type": "heartbeat", "wall_ns_utc": 1_700_000_000 * S}


def test_audit_gap_exactly_at_threshold_passes_and_above_fails():
    r = audit(recs((0, hb()), (2.0, hb()), (4.0, hb())), 2.0)
    assert (r["gaps_over_threshold"], r["max_gap_s"], r["pass"]) == (0, 2.0, True)
    r = audit(recs((0, hb()), (2.0, hb()), (4.000002, hb())), 2.0)
    assert (r["gaps_over_threshold"], r["max_gap_s"], r["pass"]) == (1, 2.000002, False)
    r = audit(recs((0, hb()), (2.0, hb()), (4.5, ev.StopRequested(reason="x")), (5.0, hb())), 2.0)
    assert r["gaps_over_threshold"] == 1
    (gap,) = r["gaps"]
    assert (gap["gap_s"], gap["start_seq"], gap["end_seq"], gap["events_between"]) == (3.0, 1, 3, ["stop_requested"])


def test_audit_uses_monotonic_clock_when_wall_clock_steps_back():
    r = audit(recs((0, 100, hb()), (1, 50, hb()), (2, 51, hb())), 2.0)
    assert r["gaps_over_threshold"] == 0 and r["max_gap_s"] == 1.0 and r["mean_gap_s"] == 1.0


def test_audit_counts_run_stop_as_the_end_of_the_last_interval():
    r = audit(recs((0, hb()), (1, hb()), (9, ev.RunStop(reason="x", frames_total=0, bytes_total=0, dropped_total=0, duration_seconds=9))))
    assert r["gaps_over_threshold"] == 1 and r["gaps"][0]["end_type"] == "run_stop" and r["intervals"] == 2


def test_audit_a_run_whose_heartbeats_never_came_or_came_late_fails():
    """The run's start opens the first interval: records with no heartbeat for 30 s are a 30 s
    gap, not an empty (passing) audit; so is a first heartbeat that came 5 s after the start."""
    start = ev.RunStart(run_id="r", mode="online", pm_arb_version="0", shards=1, confirm_timeout_seconds=45, confirm_min_events=1,
                        heartbeat_interval_seconds=1)
    stop = ev.RunStop(reason="x", frames_total=0, bytes_total=0, dropped_total=0, duration_seconds=30)
    none = audit(recs((0, start), (1, ev.RunConfirmed(seconds_after_start=1)), (30, stop)))
    assert not none["pass"] and none["heartbeats"] == 0 and none["gaps"][0]["gap_s"] == 30.0
    assert [none["gaps"][0]["events_between"], none["gaps"][0]["end_type"]] == [["run_confirmed"], "run_stop"]
    late = audit(recs((0, start), (5, hb()), (6, hb()), (6.5, stop)))
    assert not late["pass"] and late["gaps"][0]["gap_s"] == 5.0 and late["intervals"] == 3
    killed = audit(recs((0, start), (1, ev.RunConfirmed(seconds_after_start=1)), (30, ev.ShardConnected(shard=0, attempt=2, connect_ms=1, subscribe_messages=1))))
    assert not killed["pass"] and killed["gaps"][0]["gap_s"] == 30.0 and killed["run_stop"] is None  # no run_stop: the last record ends it
    prompt = audit(recs((0, start), (0.05, hb()), (1.05, hb()), (1.5, stop)))
    assert prompt["pass"] and prompt["intervals"] == 3 and prompt["heartbeats"] == 2


def metric(frames_total, dropped=0, dropped_total=0, lat_us=(), **depths):
    hist = {}
    for us in lat_us:
        hist[str(bucket_of(us))] = hist.get(str(bucket_of(us)), 0) + 1
    return {"frames_total": frames_total, "dropped": dropped, "dropped_total": dropped_total, "wall_ns_utc": frames_total,
            "ws_in_q_depth": depths.get("ws_in", 0), "parse_q_depth": 0, "write_q_depth": depths.get("write", 0), "loop_lag_ms": 1.0,
            "ws_rx_to_applied_hist_us": hist, "ws_rx_to_applied_ms": {"max": max(lat_us) / 1000 if lat_us else None}}


def test_latency_report_merges_histograms_and_folds_reconnects_and_disconnections():
    events = recs(
        (0, ev.RunStart(run_id="r", mode="online", pm_arb_version="0", shards=2, confirm_timeout_seconds=45, confirm_min_events=1, heartbeat_interval_seconds=1)),
        (1, ev.RunConfirmed(seconds_after_start=1)),
        (2, ev.ShardDisconnected(shard=1, cause="server_close", detail="", planned=False)),
        (2.5, ev.ShardReconnect(shard=1, attempt=2, backoff_seconds=0.5, cause="server_close", planned=False)),
        (3.0, ev.ShardConnected(shard=1, attempt=2, connect_ms=1, subscribe_messages=1)),
        (4, ev.ShardDisconnected(shard=0, cause="refresh", detail="", planned=True)),
        (4, ev.ShardReconnect(shard=0, attempt=2, backoff_seconds=0, cause="refresh", planned=True)),
        (5, ev.FramesDropped(shard=0, queue="write_q", dropped=7, dropped_total=7, capacity=10)),
        (6, ev.ShardDisconnected(shard=0, cause="ping_timeout", detail="", planned=False)),
        (7, ev.StopRequested(reason="SIGINT")),
        (7.5, ev.RunStop(reason="SIGINT", frames_total=20, bytes_total=1, dropped_total=7, duration_seconds=7.5)),
    )
    glob = [metric(10, lat_us=range(1, 51), ws_in=3), metric(20, dropped=7, dropped_total=7, lat_us=range(51, 101), write=9)]
    r = latency_report(events, glob, {0: glob[:1], 1: glob[1:]})
    lat = r["ws_rx_to_applied_ms"]
    assert (lat["count"], lat["p50"], lat["p99"], lat["max"]) == (100, 0.05, 0.099, 0.1)
    assert lat["per_shard"]["0"]["count"] == 50 and lat["per_shard"]["1"]["p50"] == 0.075
    assert r["reconnects"] == {"total": 1, "planned": 1, "per_shard": {"1": {"total": 1, "causes": {"server_close": 1}}}, "causes": {"server_close": 1}}
    mid = r["disconnected"]["midrun"]
    assert (mid["incidents"], mid["total_s"]) == (2, 2.0)  # shard 1 down 2->3 s, shard 0 down 6->7 s (stop)
    assert r["drops"]["dropped_messages_total"] == 7 and r["drops"]["intervals_with_drops"] == 1
    assert r["queue_depth"]["write_q_depth"] == {"samples": 2, "mean": 4.5, "p99": 9, "max": 9}
    aud = audit(events)
    g = gates(aud, r, {"crc_mismatch": 0, "seq_gaps": 0, "idx_mismatch": 0, "torn_tail_bytes": 0, "file_errors": 0}, False)
    assert g["verdict"] == "FAIL"
    assert {k: v["pass"] for k, v in g["gates"].items()} == {
        "heartbeat_gaps": False, "reconnects_midrun": False, "drops": False, "crc_mismatch": True, "clean_stop": True,  # no heartbeat in 7.5 s
        "book_integrity": None, "fatal": True}


def test_gates_each_failure_alone():
    clean_lat = {"reconnects": {"total": 0}, "disconnected": {"midrun": {"incidents": 0}}, "drops": {"dropped_messages_total": 0}}
    clean_aud = {"gaps_over_threshold": 0, "threshold_s": 2.0, "max_gap_s": 1.0, "run_stop": {"seq": 9, "reason": "SIGINT"},
                 "last_record": {"seq": 9, "type": "run_stop", "wall_ns_utc": 0}}
    clean_ver = {"crc_mismatch": 0}
    assert gates(clean_aud, clean_lat, clean_ver, False)["verdict"] == "PASS"
    assert gates(dict(clean_aud, gaps_over_threshold=1), clean_lat, clean_ver, False)["verdict"] == "FAIL"
    assert gates(clean_aud, dict(clean_lat, reconnects={"total": 1}), clean_ver, False)["verdict"] == "FAIL"
    assert gates(clean_aud, dict(clean_lat, drops={"dropped_messages_total": 3}), clean_ver, False)["verdict"] == "FAIL"
    assert gates(clean_aud, clean_lat, {"crc_mismatch": 2}, False)["verdict"] == "FAIL"
    assert gates(clean_aud, clean_lat, clean_ver, True)["verdict"] == "FAIL"
    killed = gates(dict(clean_aud, run_stop=None, last_record={"seq": 41, "type": "heartbeat", "wall_ns_utc": 1_795_546_520 * S}),
                   clean_lat, clean_ver, False)
    assert killed["verdict"] == "FAIL" and killed["gates"]["clean_stop"]["figure"].startswith(
        "no run_stop: the runlog ends at seq 41 (heartbeat, 2026-11-24T18:55:20.000000Z); the capture is still running, or it was killed")
    unchecked = gates(clean_aud, clean_lat, None, False)
    assert unchecked["gates"]["crc_mismatch"]["pass"] is None and unchecked["verdict"] == "PASS"
    books = {"totals": {"incidents": 0, "incidents_by_cause": {}, "tokens_checked": 4, "out_of_sync_s": 0.0}}
    assert gates(clean_aud, clean_lat, clean_ver, False, books=books)["gates"]["book_integrity"]["pass"] is True
    lossy = {"totals": {"incidents": 2, "incidents_by_cause": {"top_mismatch": 1, "silent_token": 1}, "tokens_checked": 4, "out_of_sync_s": 1.5}}
    failed = gates(clean_aud, clean_lat, clean_ver, False, books=lossy)
    assert failed["verdict"] == "FAIL" and failed["gates"]["book_integrity"] == {
        "pass": False, "figure": "incidents=2 (silent_token=1, top_mismatch=1) over 4 tokens, 1.5 s out of sync", "value": 2, "applies": True}


def test_supervisor_fold_tracks_universe_grace_and_coverage():
    events = recs(
        (0, ev.RunStart(run_id="r", mode="online", pm_arb_version="0", shards=2, confirm_timeout_seconds=45, confirm_min_events=1, heartbeat_interval_seconds=1)),
        (0, ev.UniverseAssigned(reason="start", shard_tokens={"0": ["a", "b"], "1": ["c", "d"]}, markets=2, tokens=4)),
        (0, ev.ConfirmBegin(deadline_mono_ns=45 * S, shards=[0, 1])),
        (1, ev.TokensFirstSeen(shard=0, tokens=["a", "b"])),
        (1, ev.TokensFirstSeen(shard=1, tokens=["c"])),
        (2, ev.UniverseAssigned(reason="refresh", shard_tokens={"0": ["a", "b", "e"], "1": ["c", "d"]}, markets=3, tokens=5,
                                grace_tokens=["e"], grace_until_mono_ns=32 * S)),
        (3, ev.UniverseRefresh(duration_ms=1, reason="churn_guard", added_count=0, removed_count=0, churn_pct=50, interval_seconds_used=60,
                               gamma_pages_fetched=1, markets_seen=3, tokens_selected=5, applied=False, consecutive_churn_guards=2, next_interval_seconds=120)),
    )
    st = fold(events)
    assert st.phase == "confirming" and st.churn_guard_consecutive == 2
    assert st.grace_until_mono_ns == {"e": 32 * S}
    assert st.coverage_pct() == 75.0  # e is in grace: 3 of a,b,c,d seen
    assert st.missing_tokens() == ["d", "e"]
    assert fold(events, until_seq=2).universe_tokens() == {"a", "b", "c", "d"}
    later = events + [LogRecord(len(events), 40 * S, 0, hb())]
    assert fold(later).grace_until_mono_ns == {} and fold(later).coverage_pct() == 60.0


def shard_hb(**per_shard):
    """per_shard: shard=(frames, dropped, write_q_depth)"""
    shards = {k.lstrip("s"): {"frames": f, "dropped": d, "write_q_depth": q} for k, (f, d, q) in per_shard.items()}
    return ev.Heartbeat(phase="running", shards=shards, frames_total=0, dropped_total=0, coverage_pct=100.0)


def stop(**written):
    return ev.RunStop(reason="SIGINT", frames_total=0, bytes_total=0, dropped_total=0, duration_seconds=1.0,
                      frames_written={k.lstrip("s"): n for k, n in written.items()})


def test_written_floor_is_handed_off_minus_dropped_minus_queued_and_never_goes_down():
    from pm_arb.events.folds.written import written_floor

    got = written_floor(recs((1, shard_hb(s0=(100, 10, 30), s1=(5, 5, 0))), (2, shard_hb(s0=(150, 10, 0), s1=(0, 0, 0))),
                             (3, shard_hb(s0=(20, 0, 0)))))  # a counter that restarted (new shard actor) lowers nothing
    assert got == {"checked": True, "reason": None, "shards": {0: {"frames_at_least": 140, "runlog_seq": 1, "source": "heartbeat"}}}


def test_written_floor_takes_the_writers_exact_count_from_run_stop():
    from pm_arb.events.folds.written import written_floor

    got = written_floor(recs((1, shard_hb(s0=(100, 0, 40), s1=(50, 0, 0), s3=(80, 0, 0))), (2, stop(s0=100, s1=50, s2=0))))
    assert got["shards"] == {0: {"frames_at_least": 100, "runlog_seq": 1, "source": "run_stop"},
                             1: {"frames_at_least": 50, "runlog_seq": 1, "source": "run_stop"},  # a tie cites the exact count
                             3: {"frames_at_least": 80, "runlog_seq": 0, "source": "heartbeat"}}


def test_written_floor_after_a_write_failure_trusts_only_the_writer():
    """Once a write failed, shards keep handing off frames that are never written: heartbeats overstate."""
    from pm_arb.events.folds.written import written_floor

    failed = ev.Fatal(reason="disk_full", message="write failed", shard=-1)
    with_stop = written_floor(recs((1, shard_hb(s0=(500, 0, 0))), (2, failed), (3, stop(s0=320))))
    assert with_stop["shards"] == {0: {"frames_at_least": 320, "runlog_seq": 2, "source": "run_stop"}}
    crashed = written_floor(recs((1, shard_hb(s0=(500, 0, 0))), (2, failed)))
    assert crashed["checked"] is False and crashed["shards"] == {} and "disk_full" in crashed["reason"]
    other_fatal = ev.Fatal(reason="confirm_timeout", message="x", shard=0)
    assert written_floor(recs((1, shard_hb(s0=(9, 0, 0))), (2, other_fatal)))["shards"][0]["frames_at_least"] == 9


def test_latency_report_says_whether_metrics_cover_every_frame_written():
    start = (0, ev.RunStart(run_id="r", mode="online", pm_arb_version="0", shards=2, confirm_timeout_seconds=45,
                            confirm_min_events=1, heartbeat_interval_seconds=1))
    glob = [metric(10), metric(20)]
    full = latency_report(recs(start, (3, stop(s0=12, s1=8))), glob, {})
    assert full["metrics_coverage"] == {"frames_in_metrics": 20, "frames_written": 20, "complete": True}
    short = latency_report(recs(start, (3, stop(s0=12, s1=8))), glob[:1], {})
    assert short["metrics_coverage"] == {"frames_in_metrics": 10, "frames_written": 20, "complete": False}
    killed = latency_report(recs(start), glob[:1], {})  # no run_stop: nothing exact to compare with
    assert killed["metrics_coverage"] == {"frames_in_metrics": 10, "frames_written": None, "complete": None}
