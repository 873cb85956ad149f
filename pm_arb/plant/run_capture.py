"""`pm_arb capture`: build the run dir, start the actors, wait for the end, report.

This is the edge where the process meets the outside: signals, the terminal, the run dir.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import shutil
import signal
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import pykka

from pm_arb import __version__
from pm_arb.store import layout as bundle
from pm_arb.actors import messages as m
from pm_arb.actors.gauge import DepthGauge
from pm_arb.actors.metrics import MetricsActor
from pm_arb.actors.shard import ShardActor
from pm_arb.actors.supervisor import SupervisorActor
from pm_arb.actors.ticker import Ticker
from pm_arb.actors.universe import UniverseActor
from pm_arb.actors.writer import WriterActor
from pm_arb.capture.offline_reader import OfflineReader
from pm_arb.capture.ws_reader import ws_reader_factory
from pm_arb.clock import SystemClock
from pm_arb.config import Config
from pm_arb.errors import UserError
from pm_arb.events import types as ev
from pm_arb.store.fixtures import FixtureSet, frames_by_shard, load_fixture_set
from pm_arb.universe.gamma import GammaError, fetch_active_rows
from pm_arb.plant.malloc_tuning import tune_malloc
from pm_arb.plant.disk_watch import DiskWatch, RateWindow, projection
from pm_arb.plant.stop_signals import EXIT_NOW, FORCE_AFTER_SECONDS, StopSignals
from pm_arb.metrics.units import human_bytes
from pm_arb.store import run_lock
from pm_arb.universe.placement import PlacementRules, plan_summary

OFFLINE_FULL_WAIT_MS = 3_600_000.0  # the setting's maximum: an hour stuck is a writer that has died
DISK_FORECAST_MIN_SPAN_S = 3.0
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TEST_CRASH_ENV = "PMARB_TEST_INJECT_CRASH"  # tests only; not PM_ARB_ so it is never a setting
CRASHABLE = ("MetricsActor", "ShardActor", "SupervisorActor", "UniverseActor", "WriterActor")
DEPENDENCIES = ("pykka", "websocket-client", "requests", "orjson", "xxhash", "click", "websockets")


_issued_run_ids: set[str] = set()


def default_run_id(now: datetime | None = None) -> str:
    """UTC start time to the millisecond, then the pid: sorts by time, and two captures started
    in the same millisecond on one host still differ (a counter covers one process)."""
    now = now or datetime.now(timezone.utc)
    base = f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z-{os.getpid()}"
    run_id, n = base, 1
    while run_id in _issued_run_ids:
        n += 1
        run_id = f"{base}-{n}"
    _issued_run_ids.add(run_id)
    return run_id


def prepare_run_dir(data_dir: str, run_id: str, named: bool = True) -> Path:
    """Create data_dir/runs/<run_id>/; refuse an existing one (nothing is ever overwritten).

    `named` is False for a generated id, whose clash the user can only fix by starting again.
    """
    retry = "choose another --run-id" if named else "start the capture again (it generates a new run id)"
    if not RUN_ID_RE.match(run_id):
        raise UserError(f"invalid --run-id {run_id!r}: use letters, digits, '.', '_' or '-' (at most 128, not starting with '.' or '-')", 2)
    root = bundle.runs_root(data_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"cannot create {root}: a file is in the way; choose another --data-dir", 2) from None
    except PermissionError:
        raise UserError(f"data dir {data_dir} is not writable: choose another --data-dir or fix its permissions", 2) from None
    except OSError as exc:
        raise UserError(f"cannot create {root}: {exc.strerror}; choose another --data-dir", 2) from None
    run_dir = root / run_id
    if run_dir.exists() or run_dir.is_symlink():
        kind = "directory" if run_dir.is_dir() else "file"
        raise UserError(f"run dir {run_dir} already exists (a {kind}); {retry} (nothing was overwritten)", 2)
    try:
        run_dir.mkdir()
    except FileExistsError:
        raise UserError(f"run dir {run_dir} already exists; {retry} (nothing was overwritten)", 2) from None
    except PermissionError:
        raise UserError(f"data dir {data_dir} is not writable: choose another --data-dir or fix its permissions", 2) from None
    if not os.access(run_dir, os.W_OK):
        raise UserError(f"run dir {run_dir} is not writable: choose another --data-dir", 2)
    return run_dir


def _versions() -> dict[str, str]:
    out = {"pm_arb": __version__, "python": platform.python_version()}
    for dist in DEPENDENCIES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def build_manifest(run_id: str, mode: str, config: Config, universe: dict[str, Any], started_wall_ns: int, started_mono_ns: int, extra: dict[str, Any]) -> dict[str, Any]:
    markets = universe["markets"]
    return {
        "run_id": run_id,
        "mode": mode,
        "started_wall_ns_utc": started_wall_ns,
        "started_utc": datetime.fromtimestamp(started_wall_ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds"),
        "started_mono_ns": started_mono_ns,
        "versions": _versions(),
        "host": {"hostname": socket.gethostname(), "platform": platform.platform(), "pid": os.getpid()},
        "config": config.snapshot(),
        "universe": {
            "markets_count": len(markets),
            "tokens_count": sum(len(t) for t in universe["shard_tokens"].values()),
            "gamma_pages_fetched": universe.get("gamma_pages_fetched"),
            "markets_seen": universe.get("markets_seen"),
            "rejected": universe.get("rejected"),
            "shard_token_counts": {str(s): len(t) for s, t in sorted(universe["shard_tokens"].items())},
            "placement": placement_summary(config, universe),
            "markets": [{**mk.to_dict(), "shard": universe["placement"].placement.shard_of[mk.condition_id]} for mk in markets],
            "note": "the universe at start; refreshes are recorded in runlog.ndjson (universe_refresh, universe_assigned)",
        },
        **extra,
    }


def disk_figures(bytes_per_s: float | None) -> str:
    if bytes_per_s is None:
        return "disk -"
    p = projection(bytes_per_s)
    return f"disk {human_bytes(p['bytes_per_s'])}/s = {human_bytes(p['bytes_per_hour'])}/h, {human_bytes(p['bytes_per_day'])}/day"


def placement_summary(config: Config, universe: dict[str, Any]) -> dict[str, Any]:
    """How many connections the universe takes under the cap, why, and how even they are."""
    return plan_summary(len(universe["markets"]), universe["placement"].placement, PlacementRules.of(config))


class StatusLine:
    """One live line on stderr while capturing, only when stderr is a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._start = time.monotonic()
        self.shown = False

    def update(self, st: dict[str, Any], frames_per_s: float | None, disk_bytes_per_s: float | None) -> None:
        if not self.enabled:
            return
        el = int(time.monotonic() - self._start)
        rate = "-" if frames_per_s is None else f"{frames_per_s:,.0f}"
        line = (
            f"[{el // 3600:02d}:{el % 3600 // 60:02d}:{el % 60:02d}] {st['phase']:<10} "
            f"{rate:>9} frames/s  {st['frames']:>11,} frames  {human_bytes(st['bytes'])}  "
            f"shards {st['shards_connected']}/{st['shards_active']} connected  drops {st['dropped']:,}  "
            f"reconnects {st['reconnects']}  coverage {st['coverage_pct']:.1f}%  {disk_figures(disk_bytes_per_s)}"
        )
        sys.stderr.write("\r" + line[:240] + "\x1b[K")
        sys.stderr.flush()
        self.shown = True

    def say(self, text: str) -> None:
        """A line of its own (a warning) without leaving the live line half-drawn."""
        self.clear()
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def disk_low_line(low: ev.DiskSpaceLow) -> str:
    """The line says what the runlog event says, from the same rounded figures."""
    return (
        f"warning: data dir {low.data_dir} has {human_bytes(low.free_bytes)} free: {low.hours_left:.1f} h at the current "
        f"{human_bytes(low.bytes_per_s)}/s (threshold {low.threshold_hours:g} h, --capture-disk-warn-hours); "
        "free space or move --data-dir before it fills (a full disk ends the run as fatal)"
    )


def install_stop_handlers(stops: StopSignals, run_dir_of: Callable[[], Path | None]) -> dict[int, Any]:
    """SIGINT/SIGTERM -> `stops`; returns the previous handlers. Only in the main thread."""

    def on_signal(signum, _frame):
        name = signal.Signals(signum).name
        if stops.on_signal(name, time.monotonic_ns()) == EXIT_NOW:
            # os.write and os._exit: a handler interrupts the main thread anywhere, perhaps
            # holding stderr's or a queue's lock, so it must take none.
            run_dir = run_dir_of()
            hint = f"; run `pm_arb capture-verify --repair --run-dir {run_dir}`" if run_dir else ""
            os.write(2, f"\n{name} more than {FORCE_AFTER_SECONDS:g} s after {stops.first}: exiting now without a clean stop{hint}\n".encode())
            os._exit(130)

    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, on_signal)
    return old


def test_crash_request() -> tuple[str, m.InjectCrash] | None:
    """Test hook: PMARB_TEST_INJECT_CRASH=<Actor>:<MessageType>[:<nth>] makes that actor raise on
    the nth such message, to test the actor_crash path end to end. Not a setting: tests only.
    Read before anything starts, so a bad value is refused with nothing to clean up."""
    spec = os.environ.get(TEST_CRASH_ENV)
    if not spec:
        return None
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] not in CRASHABLE or (len(parts) == 3 and not parts[2].isdigit()):
        raise UserError(f"{TEST_CRASH_ENV}={spec}: expected <Actor>:<MessageType>[:<n>] with Actor one of {', '.join(CRASHABLE)}", 2)
    return parts[0], m.InjectCrash(parts[1], int(parts[2]) if len(parts) == 3 else 1)


def run_capture(
    config: Config,
    run_id: str | None,
    mode: str,
    duration_s: float = 0.0,
    fixture: FixtureSet | None = None,
    offline_repeat: int = 1,
    status: bool | None = None,
    on_run_dir: Callable[[Path, dict[str, Any]], None] | None = None,
    extra_manifest: dict[str, Any] | None = None,
) -> tuple[int, Path, dict[str, Any]]:
    """Run one capture to its end; returns (exit code, run dir, final status)."""
    # From the first moment: a signal during start-up is a stop request like any other.
    stops = StopSignals()
    where: dict[str, Path] = {}
    old_handlers = install_stop_handlers(stops, lambda: where.get("run_dir"))
    try:
        return _run(stops, where, config, run_id, mode, duration_s, fixture, offline_repeat, status, on_run_dir, extra_manifest)
    finally:
        for sig, h in old_handlers.items():
            signal.signal(sig, h)


def _run(stops: StopSignals, where: dict[str, Path], config: Config, run_id: str | None, mode: str, duration_s: float,
         fixture: FixtureSet | None, offline_repeat: int, status: bool | None,
         on_run_dir: Callable[[Path, dict[str, Any]], None] | None, extra_manifest: dict[str, Any] | None) -> tuple[int, Path, dict[str, Any]]:
    crash_request = test_crash_request()
    malloc_settings = tune_malloc()  # before any actor thread creates its allocator arena
    clock = SystemClock()
    named = run_id is not None
    run_id = run_id if named else default_run_id()
    done = threading.Event()
    result: dict[str, int] = {}

    def on_done(code: int) -> None:
        result["code"] = code
        done.set()

    if mode == "offline":
        fixture = fixture or load_fixture_set(config.fixtures or None)
        # A replay has no socket to protect: it waits for the writer instead of dropping, and its
        # universe is the fixture's, never refreshed. The manifest records the config that ran.
        offline_overrides = {"write_q_full_wait_ms": OFFLINE_FULL_WAIT_MS, "capture_universe_refresh_enable": False}
        config = dataclasses.replace(config, **offline_overrides)

        def fetch_rows(_deadline):
            return fixture.gamma_rows, 0

        refresh = False
    else:

        def fetch_rows(deadline):
            res = fetch_active_rows(config, deadline_s=deadline)
            return res.rows, res.pages

        refresh = config.capture_universe_refresh_enable

    supervisor = SupervisorActor.start(run_id, mode, config, clock, on_done)
    try:
        universe_actor = UniverseActor.start(config, clock, supervisor, fetch_rows, refresh)
        try:
            universe = universe_actor.ask(m.LoadUniverse())
        except GammaError as exc:
            hint = "; without network access, `capture --sim` captures from a loopback simulated exchange" if mode == "online" else ""
            raise UserError(f"cannot discover the universe from Gamma: {exc.message}{hint}", 1) from None
        if not isinstance(universe, dict):  # the universe actor crashed; base.py logged why
            raise UserError("the universe actor crashed while loading the universe (see the line above); nothing was written", 1)
        if stops.first is not None:  # a stop before the run dir exists: nothing to stop cleanly
            raise UserError(f"{stops.first} during start-up: stopped before the run began; nothing was written", 130)
        run_dir = prepare_run_dir(config.data_dir, run_id, named)
        # Held until this process ends: capture-verify --repair refuses a run a capture is writing.
        run_lock_fd = run_lock.hold_for_capture(run_dir)
    except BaseException:
        pykka.ActorRegistry.stop_all()
        raise
    where["run_dir"] = run_dir
    plan = placement_summary(config, universe)
    if on_run_dir is not None:
        on_run_dir(run_dir, plan)
    shards = plan["shards"]
    # Shards a refresh opens mid-run add their gauges here (the writer holds this same dict).
    parse_gauges = {s: DepthGauge() for s in range(shards)}
    write_gauges = {s: DepthGauge() for s in range(shards)}
    started_wall, started_mono = clock.wall_ns(), clock.mono_ns()
    extra = dict(extra_manifest or {})
    extra["malloc"] = malloc_settings
    if mode == "offline":
        extra["fixtures"] = str(fixture.path)
        extra["offline_overrides"] = offline_overrides
    bundle.write_json(run_dir / bundle.MANIFEST, build_manifest(run_id, mode, config, universe, started_wall, started_mono, extra))

    writer = WriterActor.start(run_dir, config, clock, write_gauges)
    metrics = MetricsActor.start(writer, shards, supervisor)
    writer.tell(m.AttachWriterPeers(supervisor, metrics))
    if mode == "offline":
        per_shard = frames_by_shard(fixture, universe["placement"].placement.shard_of, shards)
        source = f"fixture://{fixture.path}"

        def make_reader(shard, tokens, sink, tell, clk):
            return OfflineReader(shard, tokens, per_shard[shard], sink, tell, clk, config, source, offline_repeat)

    else:
        make_reader = ws_reader_factory(config)
    ticker = Ticker(config.heartbeat_interval_seconds, [supervisor, writer, universe_actor])

    def open_shard(s: int):
        """A shard's actor with its own gauges; called at start and by the supervisor when a
        refresh needs another connection under the cap."""
        parse_gauges.setdefault(s, DepthGauge())
        write_gauges.setdefault(s, DepthGauge())
        ref = ShardActor.start(s, config, clock, supervisor, writer, metrics, make_reader, parse_gauges[s], write_gauges[s])
        ticker.targets.append(ref)
        return ref

    shard_refs = {s: open_shard(s) for s in range(shards)}
    supervisor.tell(m.AttachPeers(writer=writer, shards=shard_refs, open_shard=open_shard))
    if crash_request is not None:
        refs = {"SupervisorActor": supervisor, "UniverseActor": universe_actor, "WriterActor": writer, "MetricsActor": metrics, "ShardActor": shard_refs[0]}
        refs[crash_request[0]].tell(crash_request[1])
    # 8 reader threads and the writer share one GIL: with Python's 5 ms default, a reader parsing
    # a burst kept the writer waiting, and a 5k frames/s run's p99 swung between 4 and 12 ms;
    # at 1 ms it stayed at 3.0-3.6 ms (ADR/0006).
    previous_switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(config.gil_switch_interval_ms / 1000.0)
    ticker.start()
    supervisor.tell(m.StartRun(universe["shard_tokens"], len(universe["markets"]), placement=universe["placement"]))

    line = StatusLine(sys.stderr.isatty() if status is None else status)
    last: dict[str, Any] = {}
    t0 = time.monotonic()
    frame_rate, disk_rate = RateWindow(), RateWindow()
    disk_watch = DiskWatch(config.capture_disk_warn_hours)
    next_status = t0
    stop_told = False
    try:
        # The signal handler only records; this loop acts on it (within 0.1 s).
        while not done.wait(0.1):
            if stops.first is not None and not stop_told:
                stop_told = True
                line.clear()
                sys.stderr.write(f"{stops.first}: stopping cleanly (draining queues, fsync); a second Ctrl-C more than "
                                 f"{FORCE_AFTER_SECONDS:g} s from now exits at once without a clean stop\n")
                supervisor.tell(m.RequestStop(stops.first))
            if duration_s and time.monotonic() - t0 >= duration_s and not stop_told:
                stop_told = True
                supervisor.tell(m.RequestStop("duration"))
            if time.monotonic() < next_status:
                continue
            # Without a status line the status (and the disk forecast) is asked every 5 s: a
            # GetStatus costs the supervisor three 4,000-token set builds (coverage), ~2 % of a
            # core at 5k frames/s when asked twice a second for nobody (ADR/0006).
            next_status = time.monotonic() + (0.5 if line.enabled else 5.0)
            try:
                reply = supervisor.ask(m.GetStatus(), timeout=2)
            except pykka.Timeout:
                continue
            except pykka.ActorDeadError:
                sys.stderr.write("error: the supervisor stopped without finishing the run; closing the files\n")
                break
            if isinstance(reply, dict):
                last = reply
                now = time.monotonic()
                frame_rate.add(now, last["frames"])
                disk_rate.add(now, bundle.dir_bytes(run_dir))
                line.update(last, frame_rate.rate(), disk_rate.rate())
                # no forecast from the first seconds alone: they hold the start-up burst
                forecast_rate = disk_rate.rate() if disk_rate.span_s() >= DISK_FORECAST_MIN_SPAN_S else None
                low = disk_watch.check(shutil.disk_usage(run_dir).free, forecast_rate)
                if low is not None:
                    event = ev.DiskSpaceLow(
                        data_dir=str(config.data_dir), free_bytes=low.free_bytes, bytes_per_s=round(low.bytes_per_s, 1),
                        hours_left=round(low.hours_left, 3), threshold_hours=low.threshold_hours,
                    )
                    supervisor.tell(m.Emit(clock.mono_ns(), clock.wall_ns(), event))
                    line.say(disk_low_line(event))
    finally:
        ticker.stop()
        line.clear()
        try:
            reply = supervisor.ask(m.GetStatus(), timeout=2)
            if isinstance(reply, dict):
                last = reply
        except Exception:
            pass
        pykka.ActorRegistry.stop_all(block=True, timeout=10)
        sys.setswitchinterval(previous_switch_interval)
        run_lock.release(run_lock_fd)
    elapsed = time.monotonic() - t0
    on_disk = bundle.dir_bytes(run_dir)
    last = {**last, "disk_bytes": on_disk, **projection(on_disk / elapsed if elapsed > 0 else 0.0),
            "disk_free_bytes": shutil.disk_usage(run_dir).free}
    return result.get("code", 1), run_dir, last
