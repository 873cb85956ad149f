"""Steady-state latency: start-up and the stop's drain are left out by ADR/0005's rule."""

from __future__ import annotations

from tests.test_folds import S, recs

from pm_arb.events import types as ev
from pm_arb.events.folds.latency import STARTUP_EXCLUDED_S, latency_report
from pm_arb.metrics.latency_hist import bucket_of


def interval(end_s: float, latency_us: int, frames: int = 100) -> dict:
    return {
        "mono_ns": int(end_s * S), "wall_ns_utc": int((1_700_000_000 + end_s) * S), "interval_s": 1.0, "frames": frames,
        "frames_total": 0, "ws_rx_to_applied_hist_us": {str(bucket_of(latency_us)): frames},
        "ws_rx_to_applied_ms": {"max": latency_us / 1000},
    }


def test_steady_figures_leave_out_start_up_and_the_stop_drain():
    # intervals end at 1..10 s; the first three (start-up burst) are slow, as is the last (drain)
    metrics = [interval(t, 40_000 if t <= 3 or t == 10 else 500) for t in range(1, 11)]
    events = recs((0.2, ev.RunConfirmed(seconds_after_start=0.2)), (9.5, ev.StopRequested(reason="SIGINT")))
    r = latency_report(events, metrics, {})
    whole, steady = r["ws_rx_to_applied_ms"], r["ws_rx_to_applied_ms_steady"]
    assert whole["p99"] >= 39 and whole["max"] == 40.0
    # intervals beginning at 3..8 s and ending before the stop at 9.5 s: 4..9
    assert steady["intervals"] == 6 and steady["count"] == 600
    assert steady["p99"] < 0.51 and steady["max"] == 0.5
    assert steady["from_wall_ns_utc"] == metrics[3]["wall_ns_utc"]


def test_steady_window_waits_for_run_confirmed_and_is_empty_for_a_short_run():
    metrics = [interval(t, 500) for t in range(1, 11)]
    late = latency_report(recs((6.0, ev.RunConfirmed(seconds_after_start=6))), metrics, {})
    assert late["ws_rx_to_applied_ms_steady"]["intervals"] == 4  # intervals beginning at 6..9 s
    short = latency_report(recs((0.1, ev.RunConfirmed(seconds_after_start=0.1))), metrics[: int(STARTUP_EXCLUDED_S)], {})
    st = short["ws_rx_to_applied_ms_steady"]
    assert st["intervals"] == 0 and st["p99"] is None and "too short" in st["rule"]
