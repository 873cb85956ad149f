"""The effective configuration of a run: defaults < CLI flags < environment variables.

The spec (MASTER.md section 3) fixes the names, the defaults and the precedence. Environment
variables win over flags on purpose: an operator's environment (systemd unit, tmux profile)
is the last word on a long-running capture.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlparse

from pm_arb.errors import ConfigError

ENV_PREFIX = "PM_ARB_"
# Environment switches of the program itself, not settings of a run (not in the manifest).
PROGRAM_ENV = frozenset({"PM_ARB_DEBUG"})

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}


# Upper bounds. A count or a duration past these is a typo, not a plan: 100000000 shards grew
# memory by 150 MB/s and never connected. Seconds up to a week; counts by what each one costs.
MAX_SECONDS = 7 * 86_400.0
MAX_SHARDS = 256  # a connection and a thread each; 4,000 tokens need 8 at 500 a shard
MAX_QUEUE_FRAMES = 10_000_000  # ~620 B a queued frame: ~6 GB at the bound


def _setting(default: Any, help: str, check: str, group: str = "capture", most: float | None = None) -> Any:
    """`most` is the largest accepted value: every number setting has one (MAX_SECONDS for ">0"/">=0")."""
    if most is None and check in (">0", ">=0"):
        most = MAX_SECONDS
    return field(default=default, metadata={"help": help, "check": check, "group": group, "most": most})


@dataclass(frozen=True)
class Config:
    # --- the spec's key settings -------------------------------------------------------------
    ws_shards: int = _setting(
        8, "Fewest WebSocket connections (shards); more open when the universe needs them under --ws-max-tokens-per-shard.", "int>=1",
        most=MAX_SHARDS,
    )
    ws_ping_interval_seconds: float = _setting(10.0, "Seconds between text PINGs on each shard.", ">0")
    ws_ping_timeout_seconds: float = _setting(10.0, "Seconds to wait for PONG before the connection counts as dead.", ">0")
    ws_data_idle_reconnect_seconds: float = _setting(
        120.0, "Reconnect a shard when no market data arrived for this many seconds (silent-stall watchdog).", ">0"
    )
    capture_confirm_timeout_seconds: float = _setting(
        45.0, "Every shard must see market events within this many seconds of the last connection opening (they open ws_connect_stagger_seconds apart), or the run is fatal.", ">0"
    )
    capture_confirm_min_events: int = _setting(1, "Market events a shard must see to be confirmed.", "int>=1", most=1_000_000)
    capture_universe_refresh_enable: bool = _setting(True, "Refetch Gamma periodically and follow universe changes.", "bool")
    capture_universe_refresh_interval_seconds: float = _setting(60.0, "Base universe refresh cadence.", ">0")
    capture_max_markets: int = _setting(2000, "Upper bound on the active-binary universe.", "int>=1", most=100_000)
    data_dir: str = _setting("./data", "Run bundles go under DATA_DIR/runs/<run_id>/.", "path")
    capture_disk_warn_hours: float = _setting(
        12.0, "Warn (a line and a disk_space_low runlog event) when the data dir's free space will last fewer hours "
        "than this at the current write rate; 0 disables, at most 8760 (a year).", ">=0", most=8760.0,
    )
    # --- universe refresh tuning ---------------------------------------------------------------
    capture_universe_refresh_timeout_seconds: float = _setting(30.0, "Deadline for one refresh's Gamma fetch.", ">0", "refresh")
    capture_universe_refresh_stagger_seconds: float = _setting(0.25, "Delay between shard reconnects during a refresh.", ">=0", "refresh")
    capture_universe_refresh_grace_seconds: float = _setting(
        30.0, "New tokens are left out of coverage until this many seconds have passed.", ">=0", "refresh"
    )
    capture_universe_refresh_min_delta_tokens: int = _setting(2, "Token changes below this are ignored.", "int>=0", "refresh", most=1_000_000)
    capture_universe_refresh_max_churn_pct: float = _setting(10.0, "Churn above this percentage trips the churn guard.", "pct", "refresh")
    capture_universe_refresh_max_interval_seconds: float = _setting(
        600.0, "Longest refresh interval the churn guard backs off to.", ">0", "refresh"
    )
    capture_universe_refresh_churn_guard_consecutive_fatal: int = _setting(
        5, "Consecutive churn guards that make the run fatal.", "int>=1", "refresh", most=1_000
    )
    # --- endpoints -----------------------------------------------------------------------------
    gamma_base_url: str = _setting("https://gamma-api.polymarket.com", "Gamma REST API base URL.", "http-url", "endpoints")
    clob_ws_url: str = _setting(
        "wss://ws-subscriptions-clob.polymarket.com/ws/market", "CLOB market WebSocket URL.", "ws-url", "endpoints"
    )
    # --- discovery -----------------------------------------------------------------------------
    gamma_page_limit: int = _setting(100, "Markets per Gamma keyset page.", "int>=1", "discovery", most=1_000)
    gamma_max_pages: int = _setting(1000, "Pages after which paging is treated as a loop and stopped.", "int>=1", "discovery", most=1_000_000)
    gamma_max_retries: int = _setting(4, "Retries of one Gamma request (HTTP errors, timeouts, bad JSON).", "int>=0", "discovery", most=100)
    gamma_retry_backoff_seconds: float = _setting(0.5, "First retry delay; doubles on each retry.", ">=0", "discovery")
    gamma_request_timeout_seconds: float = _setting(10.0, "Timeout of one Gamma HTTP request.", ">0", "discovery")
    # --- WebSocket shards ----------------------------------------------------------------------
    ws_max_tokens_per_shard: int = _setting(
        400, "Never subscribe more tokens than this on one connection (feeds go silent past ~500): ADR/0007.", "int>=2", "websocket",
        most=100_000,
    )
    ws_connect_stagger_seconds: float = _setting(
        0.5, "Gap between opening one shard's connection and the next at start (many at once draw HTTP 429).", ">=0", "websocket",
        most=60.0,
    )
    ws_subscribe_chunk_size: int = _setting(100, "Token ids per subscribe message (Polymarket: at most 100).", "int>=1", "websocket", most=10_000)
    ws_connect_timeout_seconds: float = _setting(10.0, "Timeout for one WebSocket connect and handshake.", ">0", "websocket")
    ws_reconnect_backoff_initial_seconds: float = _setting(0.5, "First reconnect delay; doubles per failed attempt.", ">=0", "websocket")
    ws_reconnect_backoff_max_seconds: float = _setting(30.0, "Longest reconnect delay.", ">=0", "websocket")
    # --- pipeline ------------------------------------------------------------------------------
    heartbeat_interval_seconds: float = _setting(1.0, "Runlog heartbeat cadence (audit flags gaps over 2 s).", ">0", "pipeline")
    metrics_interval_seconds: float = _setting(1.0, "Metrics record cadence.", ">0", "pipeline")
    parse_q_capacity: int = _setting(
        200_000, "Frames a shard actor may have waiting for its token-coverage scan (never drops frames).", "int>=1", "pipeline", most=MAX_QUEUE_FRAMES
    )
    write_q_capacity: int = _setting(
        250_000, "Frames queued for the writer (all shards) before dropping; ~620 B each in memory.", "int>=1", "pipeline", most=MAX_QUEUE_FRAMES
    )
    write_q_full_wait_ms: float = _setting(
        100.0, "When the writer's queue is full, the reader waits this long for room before dropping (bounded backpressure).",
        ">=0", "pipeline", most=3_600_000.0,
    )
    batch_max_frames: int = _setting(1024, "Frames per hand-off from a shard's reader.", "int>=1", "pipeline", most=1_000_000)
    batch_max_delay_ms: float = _setting(1.0, "Longest a received frame waits in the reader before hand-off.", ">=0", "pipeline", most=60_000.0)
    gil_switch_interval_ms: float = _setting(
        1.0, "Longest one thread may hold the GIL while others wait (Python's default is 5): bounds how long a reader "
        "parsing a burst can hold the writer off.", ">0", "pipeline", most=1_000.0,
    )
    writer_fsync_interval_seconds: float = _setting(5.0, "fsync cadence of frames/idx/runlog files.", ">0", "pipeline")
    last_frames_per_shard: int = _setting(64, "Frames kept per shard for last_frames_shard_NN.bin on a fatal.", "int>=1", "pipeline", most=100_000)
    # --- offline -------------------------------------------------------------------------------
    offline: bool = _setting(False, "Replay a fixture set instead of connecting to Polymarket.", "bool", "offline")
    fixtures: str = _setting("", "Fixture set directory for --offline (default: the bundled set).", "str", "offline")
    offline_speed: float = _setting(1.0, "Offline pacing: 1 = as recorded, 10 = ten times faster, 0 = flat out.", ">=0", "offline", most=1_000_000.0)

    def snapshot(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _describe(check: str, most: float | None = None) -> str:
    if most is not None and check.startswith("int"):
        return f"an integer from {check[-1]} to {int(most)}"
    if most is not None and check in (">0", ">=0"):
        return f"a finite number {check[:-1]} 0 and <= {most:.0f}"
    return {
        "pct": "a percentage > 0 and <= 100",
        "bool": "one of true/false/1/0/yes/no/on/off",
        "path": "a non-empty path",
        "str": "a string",
        "http-url": "an http:// or https:// URL",
        "ws-url": "a ws:// or wss:// URL",
    }[check]


def parse_value(name: str, raw: Any, source: str) -> Any:
    """Turn a raw flag/env value into the field's type, or raise ConfigError naming the source."""
    f = FIELDS[name]
    check = f.metadata["check"]
    most = f.metadata["most"]
    where = f"{env_name(name)} (environment)" if source == "env" else f"{flag_name(name)} (flag)"

    def bad() -> ConfigError:
        return ConfigError(f"invalid value {str(raw)[:60]!r} for {where}: expected {_describe(check, most)}")

    if check == "bool":
        if isinstance(raw, bool):
            return raw
        word = str(raw).strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise bad()
    if check.startswith("int"):
        try:
            value = int(str(raw).strip())
        except ValueError:  # also an integer of more than 4,300 digits
            raise bad() from None
        if not int(check[len("int>="):]) <= value <= most:
            raise bad()
        return value
    if check in (">0", ">=0", "pct"):
        try:
            value = float(str(raw).strip())
        except ValueError:
            raise bad() from None
        if not math.isfinite(value):
            raise bad()
        if check == ">0" and not 0 < value <= most:
            raise bad()
        if check == ">=0" and not 0 <= value <= most:
            raise bad()
        if check == "pct" and not (0 < value <= 100):
            raise bad()
        return value
    text = str(raw)
    if check == "path" and not text.strip():
        raise bad()
    if check == "http-url" and (urlparse(text).scheme not in ("http", "https") or not urlparse(text).netloc):
        raise bad()
    if check == "ws-url" and (urlparse(text).scheme not in ("ws", "wss") or not urlparse(text).netloc):
        raise bad()
    return text


def load_config(flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> tuple[Config, list[str]]:
    """Build the effective Config.

    Returns the config and notes for the user (an env var that overrode a flag given on the
    command line), so a surprise in precedence is visible instead of silent.
    """
    flags = flags or {}
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    notes: list[str] = []
    for name in FIELDS:
        raw_flag = flags.get(name)
        if raw_flag is not None:
            values[name] = parse_value(name, raw_flag, "flag")
        raw_env = environ.get(env_name(name))
        if raw_env is not None:
            values[name] = parse_value(name, raw_env, "env")
            if raw_flag is not None:
                notes.append(f"{env_name(name)}={raw_env} overrides {flag_name(name)} {raw_flag}")
    unknown = sorted(k for k in environ if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX):].lower() not in FIELDS and k not in PROGRAM_ENV)
    for key in unknown:
        notes.append(f"ignoring unknown setting {key} (not a pm_arb setting)")
    return Config(**values), notes


def config_from_snapshot(snapshot: Mapping[str, Any]) -> Config:
    """Rebuild a Config from a manifest snapshot, ignoring keys a newer version may add."""
    return Config(**{k: v for k, v in snapshot.items() if k in FIELDS})
