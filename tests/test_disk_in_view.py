"""Disk in view: rates without flicker, size per hour/day, and the free-space warning."""

from __future__ import annotations

import orjson
import pytest

from tests.conftest import assert_one_line_error, read_runlog_dicts, run_cli
from pm_arb.plant.disk_watch import DiskWatch, RateWindow, projection


def test_status_rate_does_not_flicker_to_zero_between_reports():
    """Shards report once a second and the status polls twice a second (the old line showed 0 every other poll)."""
    w = RateWindow(window_s=10.0)
    rates = []
    for tick in range(40):  # 20 s of polls every 0.5 s; the counter moves by 2,000 on whole seconds
        t = tick * 0.5
        w.add(t, 2_000 * int(t))
        if t >= 2:
            rates.append(w.rate())
    assert min(rates) > 0
    assert all(abs(r - 2_000) <= 2_000 * 0.15 for r in rates), rates


def test_a_counter_that_stops_has_rate_zero_after_a_window():
    w = RateWindow(window_s=5.0)
    for t in range(6):
        w.add(float(t), 100.0 * t)
    assert w.rate() == pytest.approx(100.0)
    for t in range(6, 12):
        w.add(float(t), 500.0)
    assert w.rate() == 0.0
    assert RateWindow().rate() is None


def test_disk_watch_warns_once_below_the_threshold_and_again_after_recovering():
    watch = DiskWatch(threshold_hours=10)
    gib = 2**30
    assert watch.check(100 * gib, None) is None  # no rate yet: no forecast
    assert watch.check(100 * gib, 1 * 2**20) is None  # 28 h left
    low = watch.check(10 * gib, 1 * 2**20)  # 2.8 h left
    assert low is not None and low.hours_left == pytest.approx(10 * 1024 / 3600) and low.threshold_hours == 10
    assert watch.check(9 * gib, 1 * 2**20) is None  # said once
    assert watch.check(500 * gib, 1 * 2**20) is None  # recovered (disk freed)
    assert watch.check(1 * gib, 1 * 2**20) is not None  # low again: said again
    assert DiskWatch(0).check(1, 1e9) is None  # 0 disables
    assert projection(10.0) == {"bytes_per_s": 10.0, "bytes_per_hour": 36_000.0, "bytes_per_day": 864_000.0}


def test_disk_warn_hours_is_bounded(data_dir):
    from pm_arb.config import load_config
    from pm_arb.errors import ConfigError

    for value in ("-1", "8761", "nan", "inf", "lots"):
        with pytest.raises(ConfigError, match="8760"):
            load_config({"capture_disk_warn_hours": value}, environ={})
    assert load_config({"capture_disk_warn_hours": "0"}, environ={})[0].capture_disk_warn_hours == 0.0
    assert load_config({}, environ={"PM_ARB_CAPTURE_DISK_WARN_HOURS": "8760"})[0].capture_disk_warn_hours == 8760.0
    # and from the command line, as a user meets it: one line, exit 2, naming the flag / the env var
    proc = run_cli("capture", "--offline", "--capture-disk-warn-hours", "8761", "--data-dir", str(data_dir))
    assert "--capture-disk-warn-hours" in assert_one_line_error(proc, 2)
    env = run_cli("capture", "--offline", "--data-dir", str(data_dir), env={"PM_ARB_CAPTURE_DISK_WARN_HOURS": "-1"})
    assert "PM_ARB_CAPTURE_DISK_WARN_HOURS" in assert_one_line_error(env, 2)


def test_capture_shows_disk_rate_and_warns_when_free_space_runs_short(data_dir):
    # 8760 h (a year) of free space at ~100 KiB/s would be ~3 PB: any real disk is "short" of that
    proc = run_cli("capture", "--sim", "--duration-seconds", "5", "--ws-shards", "2", "--run-id", "disk",
                   "--capture-disk-warn-hours", "8760", "--status", "--json", "--data-dir", str(data_dir))
    assert proc.returncode == 0, proc.stderr
    summary = orjson.loads(proc.stdout)
    assert summary["disk_bytes"] > 0 and summary["bytes_per_s"] > 0
    assert summary["bytes_per_hour"] == pytest.approx(summary["bytes_per_s"] * 3600)
    assert summary["bytes_per_day"] == pytest.approx(summary["bytes_per_s"] * 86400)
    assert "/h," in proc.stderr and "/day" in proc.stderr  # the status line and the final line
    (low,) = [r for r in read_runlog_dicts(data_dir / "runs" / "disk") if r["type"] == "disk_space_low"]
    assert low["threshold_hours"] == 8760 and 0 < low["hours_left"] < 8760 and low["free_bytes"] > 0
    warning = [ln for ln in proc.stderr.replace("\r", "\n").splitlines() if "warning: data dir" in ln]
    assert len(warning) == 1 and f"{low['hours_left']:.1f} h" in warning[0]
    # the default threshold (12 h) stays quiet on this machine's disk
    quiet = run_cli("capture", "--offline", "--offline-speed", "0", "--run-id", "quiet", "--data-dir", str(data_dir))
    assert quiet.returncode == 0 and "warning: data dir" not in quiet.stderr
