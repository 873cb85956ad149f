"""Config: the spec's defaults, the precedence of layers, and one-line errors for bad values."""

from __future__ import annotations

import pytest

from pm_arb.config import Config, load_config
from pm_arb.errors import ConfigError
from tests.conftest import assert_one_line_error, run_cli

SPEC_DEFAULTS = {
    "ws_shards": 8,
    "ws_ping_interval_seconds": 10.0,
    "ws_ping_timeout_seconds": 10.0,
    "ws_data_idle_reconnect_seconds": 120.0,
    "capture_confirm_timeout_seconds": 45.0,
    "capture_confirm_min_events": 1,
    "capture_universe_refresh_enable": True,
    "capture_universe_refresh_interval_seconds": 60.0,
    "capture_max_markets": 2000,
    "data_dir": "./data",
    "capture_universe_refresh_timeout_seconds": 30.0,
    "capture_universe_refresh_stagger_seconds": 0.25,
    "capture_universe_refresh_grace_seconds": 30.0,
    "capture_universe_refresh_min_delta_tokens": 2,
    "capture_universe_refresh_max_churn_pct": 10.0,
    "capture_universe_refresh_max_interval_seconds": 600.0,
    "capture_universe_refresh_churn_guard_consecutive_fatal": 5,
    "gamma_base_url": "https://gamma-api.polymarket.com",
    "clob_ws_url": "wss://ws-subscriptions-clob.polymarket.com/ws/market",
    "offline": False,
}


def test_defaults_are_the_spec_table():
    cfg, notes = load_config({}, {})
    snap = cfg.snapshot()
    for name, value in SPEC_DEFAULTS.items():
        assert snap[name] == value, name
    assert notes == []


def test_flag_overrides_default_and_env_overrides_flag():
    cfg, _ = load_config({"ws_shards": "4"}, {})
    assert cfg.ws_shards == 4
    cfg, notes = load_config({"ws_shards": "4"}, {"PM_ARB_WS_SHARDS": "6"})
    assert cfg.ws_shards == 6
    assert notes == ["PM_ARB_WS_SHARDS=6 overrides --ws-shards 4"]
    cfg, _ = load_config({}, {"PM_ARB_CAPTURE_UNIVERSE_REFRESH_ENABLE": "off", "PM_ARB_DATA_DIR": "/x"})
    assert cfg.capture_universe_refresh_enable is False and cfg.data_dir == "/x"


def test_unknown_env_setting_is_noted_not_fatal():
    _, notes = load_config({}, {"PM_ARB_WS_SHARD": "3"})
    assert notes == ["ignoring unknown setting PM_ARB_WS_SHARD (not a pm_arb setting)"]


def test_the_programs_own_switch_pm_arb_debug_is_not_called_unknown():
    _, notes = load_config({}, {"PM_ARB_DEBUG": "1", "PM_ARB_WS_SHARD": "3"})
    assert notes == ["ignoring unknown setting PM_ARB_WS_SHARD (not a pm_arb setting)"]


@pytest.mark.parametrize(
    "flags, env, expected",
    [
        ({}, {"PM_ARB_WS_SHARDS": "abc"}, "invalid value 'abc' for PM_ARB_WS_SHARDS (environment): expected an integer from 1 to 256"),
        ({"ws_shards": "0"}, {}, "invalid value '0' for --ws-shards (flag): expected an integer from 1 to 256"),
        ({"ws_ping_timeout_seconds": "-1"}, {}, "invalid value '-1' for --ws-ping-timeout-seconds (flag): expected a finite number > 0 and <= 604800"),
        ({}, {"PM_ARB_CAPTURE_UNIVERSE_REFRESH_ENABLE": "maybe"}, "invalid value 'maybe' for PM_ARB_CAPTURE_UNIVERSE_REFRESH_ENABLE (environment): expected one of true/false/1/0/yes/no/on/off"),
        ({"capture_universe_refresh_max_churn_pct": "150"}, {}, "invalid value '150' for --capture-universe-refresh-max-churn-pct (flag): expected a percentage > 0 and <= 100"),
        ({"clob_ws_url": "http://x/ws"}, {}, "invalid value 'http://x/ws' for --clob-ws-url (flag): expected a ws:// or wss:// URL"),
        ({"offline_speed": "nan"}, {}, "invalid value 'nan' for --offline-speed (flag): expected a finite number >= 0 and <= 1000000"),
        ({"data_dir": "  "}, {}, "invalid value '  ' for --data-dir (flag): expected a non-empty path"),
    ],
)
def test_bad_values_name_setting_source_and_accepted(flags, env, expected):
    with pytest.raises(ConfigError) as err:
        load_config(flags, env)
    assert err.value.message == expected
    assert err.value.exit_code == 2


@pytest.mark.parametrize(
    "args, env, fragment",
    [
        (["capture", "--offline"], {"PM_ARB_WS_SHARDS": "abc"}, "PM_ARB_WS_SHARDS (environment)"),
        (["capture", "--offline", "--ws-shards", "0"], {}, "--ws-shards (flag)"),
        (["capture", "--offline", "--ws-ping-timeout-seconds", "-5"], {}, "--ws-ping-timeout-seconds (flag)"),
        (["discover"], {"PM_ARB_OFFLINE": "perhaps"}, "PM_ARB_OFFLINE (environment)"),
    ],
)
def test_cli_bad_config_exits_2_with_one_line(args, env, fragment, data_dir):
    proc = run_cli(*args, "--data-dir", str(data_dir), env=env)
    line = assert_one_line_error(proc, 2)
    assert line.startswith("error: invalid value") and fragment in line
    assert not (data_dir / "runs").exists() or not any((data_dir / "runs").iterdir())


def test_config_is_frozen():
    with pytest.raises(Exception):
        Config().ws_shards = 3  # type: ignore[misc]
