"""pm_arb's command line. Each command reads files or starts the plant, calls one module, prints.

Exit codes: 0 success/clean, 1 the thing checked failed (defects, a failed gate, a fatal run,
an upstream error), 2 bad usage or input (flags, config values, missing run dir).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click
import orjson

from pm_arb import __version__
from pm_arb.config import FIELDS, Config, flag_name, load_config
from pm_arb.errors import UserError

CONFIG_GROUP_ORDER = ("capture", "refresh", "endpoints", "discovery", "websocket", "pipeline", "offline")


def _emit_json(doc: Any) -> None:
    click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())


def handle_errors(fn: Callable) -> Callable:
    """One line on stderr and a meaningful exit code instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except OSError as exc:
            if os.environ.get("PM_ARB_DEBUG"):
                raise
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            click.echo(f"error: {exc.strerror or exc}{where}; set PM_ARB_DEBUG=1 for a traceback", err=True)
            sys.exit(1)

    return wrapper


def config_options(fn: Callable) -> Callable:
    """Add one flag per Config field (kebab-case; booleans as --x/--no-x), all defaulting to unset."""
    names = sorted(FIELDS, key=lambda n: (CONFIG_GROUP_ORDER.index(FIELDS[n].metadata["group"]), list(FIELDS).index(n)))
    for name in reversed(names):
        f = FIELDS[name]
        helptext = f"{f.metadata['help']} [default: {f.default!r}; env PM_ARB_{name.upper()}]"
        if f.metadata["check"] == "bool":
            fn = click.option(f"{flag_name(name)}/--no-{name.replace('_', '-')}", name, default=None, help=helptext)(fn)
        else:
            fn = click.option(flag_name(name), name, default=None, type=str, metavar="VALUE", help=helptext)(fn)
    return fn


def build_config(kwargs: dict[str, Any]) -> Config:
    flags = {k: kwargs.pop(k) for k in list(kwargs) if k in FIELDS}
    config, notes = load_config(flags)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    return config


def run_dir_option(fn: Callable) -> Callable:
    return click.option(
        "--run-dir",
        required=True,
        type=click.Path(path_type=Path, file_okay=True, dir_okay=True),
        help="Run bundle directory (data/runs/<run_id>), as printed by `pm_arb capture`.",
    )(fn)


def json_option(fn: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of the summary.")(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="pm_arb")
def cli() -> None:
    """pm_arb: capture every frame of Polymarket's CLOB market WebSocket, byte for byte, and check it.

    Start with `pm_arb capture --offline` (no network) or `pm_arb capture --sim` (a loopback
    simulated exchange); after a run, `capture-check --run-dir DIR` runs every quality gate.
    """


@cli.command("capture-verify")
@run_dir_option
@click.option("--summary-only", is_flag=True, help="Print only the totals line.")
@click.option("--repair", is_flag=True, help="First truncate torn tails (what a crash leaves) and rebuild lagging idx files.")
@json_option
@handle_errors
def capture_verify(run_dir: Path, summary_only: bool, repair: bool, as_json: bool) -> None:
    """Check every frame's checksum, seq continuity, idx agreement and torn tails.

    Exit 0 when clean, 1 when any defect is found, 2 when the run dir is missing or unreadable.
    """
    from pm_arb.commands.verify import render_verify, verify_run

    result = verify_run(run_dir, repair=repair, show_progress=None if not as_json else False)
    if as_json:
        if summary_only:
            result = {k: v for k, v in result.items() if k != "shards"}
        _emit_json(result)
    else:
        click.echo(render_verify(result, summary_only))
    sys.exit(0 if result["ok"] else 1)


@cli.command("capture-inspect")
@run_dir_option
@json_option
@handle_errors
def capture_inspect(run_dir: Path, as_json: bool) -> None:
    """Summarize a run bundle: file sizes, frames per shard, first/last receive time, metrics tails."""
    from pm_arb.commands.inspect_run import inspect_run, render_inspect

    result = inspect_run(run_dir)
    _emit_json(result) if as_json else click.echo(render_inspect(result))


@cli.command("capture-slice")
@run_dir_option
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="New bundle directory (must not exist or be empty).")
@click.option("--from-wall", help="Start receive time, inclusive: ISO-8601 (UTC if no offset) or integer ns.")
@click.option("--to-wall", help="End receive time, inclusive.")
@click.option("--from-seq", type=click.IntRange(min=0), help="First per-shard seq, inclusive.")
@click.option("--to-seq", type=click.IntRange(min=0), help="Last per-shard seq, inclusive.")
@click.option("--shard", "shards", type=click.IntRange(min=0), multiple=True, help="Only these shards (repeatable; default all).")
@json_option
@handle_errors
def capture_slice(run_dir: Path, out_dir: Path, from_wall, to_wall, from_seq, to_seq, shards, as_json: bool) -> None:
    """Extract frames by receive time or by seq into a new run bundle that passes capture-verify.

    Payloads, seq numbers and timestamps are copied unchanged; the runlog and metrics lines
    inside the window come along, and the manifest names the source run and range.
    """
    from pm_arb.commands.slice_run import parse_time_ns, slice_run

    result = slice_run(
        run_dir,
        out_dir,
        from_wall=parse_time_ns(from_wall, "--from-wall") if from_wall else None,
        to_wall=parse_time_ns(to_wall, "--to-wall") if to_wall else None,
        from_seq=from_seq,
        to_seq=to_seq,
        shards=list(shards) or None,
        show_progress=False if as_json else None,
    )
    if as_json:
        _emit_json(result)
    else:
        for s in result["shards"]:
            click.echo(f"shard {s['shard']:02d}: {s['frames']:,} frames (seq {s['first_seq']}..{s['last_seq']})")
        click.echo(f"wrote {result['frames']:,} frames and {result['runlog_events']} runlog events to {result['out_dir']}")


def main() -> None:
    cli(prog_name="pm_arb")


@cli.command("capture")
@click.option("--run-id", help="Run id (default: UTC timestamp). The run goes to DATA_DIR/runs/<run_id>/; an existing one is refused.")
@click.option("--duration-seconds", type=click.FloatRange(min=0), default=0.0, help="Stop cleanly after this many seconds (0: until SIGINT/SIGTERM).")
@click.option("--sim", is_flag=True, help="Start the loopback simulated exchange in-process and capture from it over real sockets.")
@click.option("--sim-markets", type=click.IntRange(min=1), default=40, show_default=True, help="Active markets the --sim exchange lists.")
@click.option("--sim-rate", type=click.FloatRange(min=0), default=200.0, show_default=True, help="Frames per second the --sim exchange sends in total.")
@click.option("--offline-repeat", type=click.IntRange(min=1), default=1, show_default=True, help="Replay the fixture frames this many times (offline).")
@click.option("--status/--no-status", default=None, help="Live status line on stderr (default: only when stderr is a terminal).")
@json_option
@config_options
@handle_errors
def capture(run_id, duration_seconds, sim, sim_markets, sim_rate, offline_repeat, status, as_json, **kwargs) -> None:
    """Capture every frame of every active YES/NO market into a run bundle.

    Online by default (Gamma + CLOB WebSocket); --offline replays a fixture set; --sim runs
    against a loopback simulated exchange. Stop with SIGINT/SIGTERM (`timeout --signal=INT 10m
    pm_arb capture`) for a clean stop: sources closed, queues drained, files fsynced. Prints the
    run dir first; exits 0 on a clean stop, 1 on a fatal run (see fatal.json).
    """
    import dataclasses

    from pm_arb.run_capture import run_capture

    config = build_config(kwargs)
    mode = "offline" if config.offline else "online"
    sim_exchange = None
    extra = {}
    if sim:
        if config.offline:
            raise UserError("--sim and --offline are exclusive: --sim captures over loopback sockets, --offline replays fixtures", 2)
        from pm_arb.sim.exchange import SimExchange

        sim_exchange = SimExchange(markets=sim_markets, rate=sim_rate)
        sim_exchange.start()
        config = dataclasses.replace(config, gamma_base_url=sim_exchange.gamma_url, clob_ws_url=sim_exchange.ws_url)
        extra["sim"] = {"gamma_url": sim_exchange.gamma_url, "ws_url": sim_exchange.ws_url, "markets": sim_markets, "rate": sim_rate}
        mode = "sim"

    def announce(run_dir: Path) -> None:
        click.echo(str(run_dir))
        sys.stdout.flush()
        click.echo(f"capturing ({mode}, {config.ws_shards} shards) into {run_dir}; stop with Ctrl-C", err=True)

    try:
        code, run_dir, last = run_capture(
            config, run_id, "online" if mode == "sim" else mode, duration_s=duration_seconds,
            offline_repeat=offline_repeat, status=status, on_run_dir=announce, extra_manifest=extra,
        )
    finally:
        if sim_exchange is not None:
            sim_exchange.stop()
    summary = {"run_dir": str(run_dir), "exit_code": code, **last}
    if as_json:
        _emit_json(summary)
    verdict = "stopped cleanly" if code == 0 else f"FATAL ({last.get('fatal_reason')}): see {run_dir / 'fatal.json'}"
    click.echo(
        f"{verdict}: {last.get('frames', 0):,} frames, {last.get('bytes', 0):,} B, drops {last.get('dropped', 0)}, "
        f"reconnects {last.get('reconnects', 0)}; next: pm_arb capture-check --run-dir {run_dir}",
        err=True,
    )
    sys.exit(code)
