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
from pm_arb.events import json_text
from pm_arb.commands import cli_params as P
from pm_arb.commands.cli_params import FiniteFloat
from pm_arb.config import FIELDS, MAX_SHARDS, Config, flag_name, load_config
from pm_arb.errors import UserError

CONFIG_GROUP_ORDER = ("capture", "refresh", "endpoints", "discovery", "websocket", "pipeline", "offline")


def _emit_json(doc: dict[str, Any]) -> None:
    from pm_arb.store.vocabulary import document

    click.echo(json_text.dumps(document(doc), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())


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
            if os.environ.get("PM_ARB_DEBUG"):  # config.PROGRAM_ENV
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


class _RunDirNotFound(click.ClickException):
    exit_code = 2

    def show(self, file=None) -> None:  # one line, the project's error format
        click.echo(f"error: {self.message}", err=True)


class RunDirType(click.ParamType):
    """A path, a bare run id under DATA_DIR/runs, or `latest` (pm_arb/commands/run_dir.py)."""

    name = "RUN"

    def convert(self, value: Any, param: Any, ctx: Any) -> Path:
        from pm_arb.commands.run_dir import resolve_run_dir

        if isinstance(value, Path):
            return value
        try:
            return resolve_run_dir(value)
        except UserError as exc:
            raise _RunDirNotFound(exc.message) from None


def run_dir_option(fn: Callable) -> Callable:
    return click.option(
        "--run-dir",
        required=True,
        type=RunDirType(),
        help="Run bundle: a path (as printed by `pm_arb capture`), a run id under DATA_DIR/runs, or `latest`.",
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

    from pm_arb.store.layout import read_manifest
    from pm_arb.commands.runs import empty_shards_note, shards_without_tokens
    from pm_arb.store.vocabulary import verdict

    result = verify_run(run_dir, repair=repair, show_progress=None if not as_json else False)
    try:
        manifest = read_manifest(run_dir)
    except UserError:
        manifest = {}
    result["shards_without_tokens"] = shards_without_tokens(manifest)
    if not as_json and empty_shards_note(manifest):
        click.echo(f"note: {empty_shards_note(manifest)}")
    if as_json:
        drop = {"ok", "shards"} if summary_only else {"ok"}
        _emit_json({"verdict": verdict(result["ok"]), **{k: v for k, v in result.items() if k not in drop}})
    else:
        click.echo(render_verify(result, summary_only))
    sys.exit(0 if result["ok"] else 1)


@cli.command("capture-inspect")
@run_dir_option
@json_option
@handle_errors
def capture_inspect(run_dir: Path, as_json: bool) -> None:
    """Summarize a run bundle: file sizes, frames per shard, first/last receive time, metrics tails.

    Exit 1 when a shard's files cannot be read or a file header is damaged.
    """
    from pm_arb.commands.inspect_run import inspect_run, render_inspect

    result = inspect_run(run_dir)
    _emit_json(result) if as_json else click.echo(render_inspect(result))
    unreadable = [s for s in result["shards"] if "error" in s]
    if unreadable:
        click.echo(f"error: {len(unreadable)} shard file(s) could not be read (see above); run capture-verify for details", err=True)
        sys.exit(1)
    damaged = [s for s in result["shards"] if "header_damage" in s]
    if damaged:
        click.echo(f"error: {len(damaged)} shard file(s) have a damaged header (see above); run capture-verify for details", err=True)
        sys.exit(1)


@cli.command("capture-slice")
@run_dir_option
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="New bundle directory (must not exist or be empty).")
@click.option("--from-wall", help="Start receive time, inclusive: ISO-8601 (UTC if no offset), integer ns, a time of day on the run's date (12:52:30), or +OFFSET from the run's first frame / -OFFSET from its last (+10s, -5m).")
@click.option("--to-wall", help="End receive time, inclusive (same forms).")
@click.option("--from-seq", type=click.IntRange(min=0, max=2**64 - 1), help="First per-shard seq, inclusive.")
@click.option("--to-seq", type=click.IntRange(min=0, max=2**64 - 1), help="Last per-shard seq, inclusive.")
@click.option("--shard", "shards", type=click.IntRange(min=0, max=65535), multiple=True, help="Only these shards (repeatable; default all).")
@json_option
@handle_errors
def capture_slice(run_dir: Path, out_dir: Path, from_wall, to_wall, from_seq, to_seq, shards, as_json: bool) -> None:
    """Extract frames by receive time or by seq into a new run bundle that passes capture-verify.

    Payloads, seq numbers and timestamps are copied unchanged; the runlog and metrics lines
    inside the window come along, and the manifest names the source run and range. Exit 1 when
    the range selects no frames; a failed slice leaves nothing at --out.
    """
    from pm_arb.commands.slice_run import slice_run
    from pm_arb.commands.time_input import parse_time

    result = slice_run(
        run_dir,
        out_dir,
        from_wall=parse_time(from_wall, "--from-wall") if from_wall else None,
        to_wall=parse_time(to_wall, "--to-wall") if to_wall else None,
        from_seq=from_seq,
        to_seq=to_seq,
        shards=list(shards) or None,
        show_progress=False if as_json else None,
    )
    for warning in result["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        _emit_json(result)
    else:
        for s in result["shards"]:
            click.echo(f"shard {s['shard']:02d}: {s['frames']:,} frames (seq {s['first_seq']}..{s['last_seq']})")
        rng = result["range"]
        if "from_wall_utc" in rng:
            click.echo(f"window: {rng['from_wall_utc'] or 'start'} .. {rng['to_wall_utc'] or 'end'}")
        click.echo(f"wrote {result['frames']:,} frames and {result['runlog_events']} runlog events to {result['out_dir']}")


@cli.command("capture-export")
@run_dir_option
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output directory (created; refuses an existing export without --force).")
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv"]), default="parquet", show_default=True,
              help="Parquet (Hive-partitioned date=/hour=, zstd) or Tardis-format gzip CSV.")
@click.option("--tables", multiple=True, metavar="NAMES",
              help="Comma-separated or repeated: frames, incremental_book_L2, trades, quotes, market_events, markets [default: all the format has].")
@click.option("--from-wall", help="Start receive time, inclusive: the forms of capture-slice (ISO-8601, integer ns, 12:52:30, +10s, -5m).")
@click.option("--to-wall", help="End receive time, inclusive (same forms).")
@click.option("--tokens", multiple=True, metavar="IDS", help="Only these token ids in the normalized tables and markets (comma-separated or repeated).")
@click.option("--force", is_flag=True, help="Replace an export already in --out.")
@click.option("--skip-damaged", is_flag=True, help="Skip damaged records and list them, instead of stopping at the first.")
@json_option
@handle_errors
def capture_export(run_dir: Path, out_dir: Path, fmt: str, tables, from_wall, to_wall, tokens, force: bool, skip_damaged: bool, as_json: bool) -> None:
    """Export a run to Parquet or Tardis-format CSV for DuckDB, Polars, pandas and Spark.

    Tables: frames (every stored frame, payload bytes unchanged; Parquet only),
    incremental_book_L2, trades, quotes (Tardis.dev columns), market_events, markets.
    Every record's checksum is verified on the way; a damaged one stops the export (exit 1).
    """
    from pm_arb.commands.export_run import build_request, render, run_export

    req = build_request(run_dir, out_dir, fmt, tables, from_wall, to_wall, tokens, skip_damaged)
    result = run_export(req, force, show_progress=False if as_json else None)
    if as_json:
        _emit_json(result)
    else:
        for line in render(result):
            click.echo(line)


def main() -> None:
    cli(prog_name="pm_arb")


@cli.command("capture")
@click.option("--run-id", help="Run id (default: UTC start time to the ms and the pid, e.g. 20261125T130000.123Z-4242). The run goes to DATA_DIR/runs/<run_id>/; an existing one is refused.")
@click.option("--duration-seconds", type=FiniteFloat(min=0, max=P.MAX_DURATION_SECONDS), default=0.0, help="Stop cleanly after this many seconds (0: until SIGINT/SIGTERM).")
@click.option("--sim", is_flag=True, help="Start the loopback simulated exchange in-process and capture from it over real sockets.")
@click.option("--sim-markets", type=click.IntRange(min=1, max=P.MAX_SIM_MARKETS), default=40, show_default=True, help="Active markets the --sim exchange lists.")
@click.option("--sim-rate", type=FiniteFloat(min=0, max=P.MAX_RATE), default=200.0, show_default=True, help="Frames per second the --sim exchange sends in total.")
@click.option("--sim-max-tokens-per-connection", type=click.IntRange(min=0, max=P.MAX_SIM_MARKETS * 2), default=500, show_default=True,
              help="Like Polymarket: the --sim exchange sends nothing for tokens past this many on one connection (0: no limit).")
@click.option("--offline-repeat", type=click.IntRange(min=1, max=P.MAX_REPEAT), default=1, show_default=True, help="Replay the fixture frames this many times (offline).")
@click.option("--status/--no-status", default=None, help="Live status line on stderr (default: only when stderr is a terminal).")
@json_option
@config_options
@handle_errors
def capture(run_id, duration_seconds, sim, sim_markets, sim_rate, sim_max_tokens_per_connection, offline_repeat, status, as_json, **kwargs) -> None:
    """Capture every frame of every active YES/NO market into a run bundle.

    Online by default (Gamma + CLOB WebSocket); --offline replays a fixture set; --sim runs
    against a loopback simulated exchange. Stop with SIGINT/SIGTERM (`timeout --signal=INT 10m
    pm_arb capture`) for a clean stop: sources closed, queues drained, files fsynced. Signals
    within 1 s of the first are the same stop; a later one exits at once (130). Prints the
    run dir first; exits 0 on a clean stop, 1 on a fatal run (see fatal.json).
    """
    import dataclasses

    from pm_arb.commands.next_step import next_command
    from pm_arb.metrics.units import human_bytes
    from pm_arb.plant.run_capture import disk_figures, run_capture

    config = build_config(kwargs)
    mode = "offline" if config.offline else "online"
    sim_exchange = None
    extra = {}
    if sim:
        if config.offline:
            raise UserError("--sim and --offline are exclusive: --sim captures over loopback sockets, --offline replays fixtures", 2)
        from pm_arb.sim.exchange import SimExchange

        sim_exchange = SimExchange(markets=sim_markets, rate=sim_rate)
        sim_exchange.max_assets_per_connection = sim_max_tokens_per_connection or None
        sim_exchange.start()
        config = dataclasses.replace(config, gamma_base_url=sim_exchange.gamma_url, clob_ws_url=sim_exchange.ws_url)
        extra["sim"] = {"gamma_url": sim_exchange.gamma_url, "ws_url": sim_exchange.ws_url, "markets": sim_markets, "rate": sim_rate,
                        "max_tokens_per_connection": sim_max_tokens_per_connection}
        mode = "sim"

    def announce(run_dir: Path, plan: dict) -> None:
        if not as_json:  # with --json, stdout is one JSON document (the run dir is in it)
            click.echo(str(run_dir))
            sys.stdout.flush()
        click.echo(f"capturing ({mode}, {plan['shards']} shards: {plan['reason']}) into {run_dir}; stop with Ctrl-C", err=True)

    try:
        code, run_dir, last = run_capture(
            config, run_id, mode, duration_s=duration_seconds,
            offline_repeat=offline_repeat, status=status, on_run_dir=announce, extra_manifest=extra,
        )
    finally:
        if sim_exchange is not None:
            sim_exchange.stop()
    final_keys = ("phase", "shards_active", "shards_open", "balance", "frames", "bytes", "reconnects", "coverage_pct", "fatal_reason",
                  "disk_bytes", "bytes_per_s", "bytes_per_hour", "bytes_per_day", "disk_free_bytes")
    summary = {"run_dir": str(run_dir), "exit_code": code, **{k: last.get(k) for k in final_keys},
               "dropped_messages_total": last.get("dropped")}
    if as_json:
        _emit_json(summary)
    verdict = "stopped cleanly" if code == 0 else f"FATAL ({last.get('fatal_reason')}): see {run_dir / 'fatal.json'}"
    active, opened = last.get("shards_active"), last.get("shards_open") or config.ws_shards
    if active is not None and active < opened:
        click.echo(f"note: {opened - active} of {opened} shards had no tokens (few markets): "
                   f"{active} shard(s) connected and have files", err=True)
    bal = last.get("balance")
    if bal and bal["shards_with_tokens"]:
        click.echo(
            f"shards: {last.get('shards_open')} open, busiest {bal['busiest_tokens']} tokens vs mean {bal['mean_tokens']:g} "
            f"(x{bal['busiest_over_mean']:g}), cap {config.ws_max_tokens_per_shard}",
            err=True,
        )
    # the next step comes last, where the eye lands
    click.echo(
        f"{verdict}: {last.get('frames', 0):,} frames, {last.get('bytes', 0):,} B, drops {last.get('dropped', 0)}, "
        f"reconnects {last.get('reconnects', 0)}; on disk {human_bytes(last.get('disk_bytes', 0))}, "
        f"{disk_figures(last.get('bytes_per_s'))} (run average), {human_bytes(last.get('disk_free_bytes', 0))} free; "
        f"next: {next_command('capture-check', '--run-dir', str(run_dir))}",
        err=True,
    )
    sys.exit(code)


def skip_bad_lines_option(fn: Callable) -> Callable:
    return click.option("--skip-bad-lines", is_flag=True, help="Fold the rest of the runlog when some lines are malformed (each is reported).")(fn)


@cli.command("capture-audit")
@run_dir_option
@click.option("--gap-threshold-seconds", type=FiniteFloat(min=0, min_open=True, max=P.MAX_GAP_THRESHOLD_SECONDS), default=2.0, show_default=True, help="A heartbeat gap longer than this fails the gate.")
@skip_bad_lines_option
@json_option
@handle_errors
def capture_audit(run_dir: Path, gap_threshold_seconds: float, skip_bad_lines: bool, as_json: bool) -> None:
    """Heartbeat-gap audit of runlog.ndjson: count, max gap, every gap over the threshold.

    Exit 0 when gaps_over_threshold is 0, 1 otherwise.
    """
    from pm_arb.commands.reports import render_audit, run_audit

    result = run_audit(run_dir, gap_threshold_seconds, skip_bad_lines)
    _emit_json(result) if as_json else click.echo(render_audit(result))
    sys.exit(0 if result["verdict"] == "PASS" else 1)


def _verify_totals(run_dir: Path, as_json: bool) -> dict[str, Any] | None:
    from pm_arb.commands.verify import verify_run

    try:
        return verify_run(run_dir, show_progress=False if as_json else None)["totals"]
    except UserError:
        return None


def _book_audit(run_dir: Path, skip_bad_lines: bool, as_json: bool) -> dict[str, Any] | None:
    from pm_arb.commands.books import run_books

    try:
        return run_books(run_dir, skip_bad_lines=skip_bad_lines, show_progress=False if as_json else None)
    except UserError:
        return None


def books_option(fn: Callable) -> Callable:
    return click.option("--books/--no-books", "do_books", default=True, show_default=True,
                        help="Also rebuild every token's book for the book_integrity gate (reads every frame; ADR/0010).")(fn)


@cli.command("capture-latency-report")
@run_dir_option
@click.option("--verify/--no-verify", "do_verify", default=True, show_default=True, help="Also check frame checksums for the crc gate.")
@books_option
@skip_bad_lines_option
@json_option
@handle_errors
def capture_latency_report(run_dir: Path, do_verify: bool, do_books: bool, skip_bad_lines: bool, as_json: bool) -> None:
    """Write latency_report.json and latency_report.txt into the run dir and print the text.

    ws_rx_to_applied_ms percentiles (run and per shard), queue depths, drops, reconnects,
    midrun disconnections, loop lag, and every quality gate with an overall verdict.
    """
    from pm_arb.store import layout as bundle
    from pm_arb.commands.reports import render_latency, run_latency_report
    from pm_arb.store.vocabulary import document

    report = run_latency_report(run_dir, skip_bad_lines, _verify_totals(run_dir, as_json) if do_verify else None,
                                books=_book_audit(run_dir, skip_bad_lines, as_json) if do_books else None)
    text = render_latency(report)
    bundle.write_json(run_dir / bundle.LATENCY_JSON, document(report))
    bundle.write_file(run_dir / bundle.LATENCY_TXT, (text + "\n").encode())
    _emit_json(report) if as_json else click.echo(text)
    if report["verdict"] != "PASS":  # ADR/0005: a report whose gates fail is a check that failed
        sys.exit(1)


@cli.command("capture-check")
@run_dir_option
@books_option
@skip_bad_lines_option
@json_option
@handle_errors
def capture_check(run_dir: Path, do_books: bool, skip_bad_lines: bool, as_json: bool) -> None:
    """Every quality gate at once: heartbeat gaps, midrun reconnects, drops, file integrity, a recorded stop, book integrity, fatal.json.

    One line per gate; exit 0 when all pass, 1 when any fails.
    """
    from pm_arb.commands.reports import run_latency_report

    from pm_arb.commands.reports import render_gates
    from pm_arb.commands.runs import record_check

    report = run_latency_report(run_dir, skip_bad_lines, _verify_totals(run_dir, as_json),
                                books=_book_audit(run_dir, skip_bad_lines, as_json) if do_books else None)
    note = record_check(run_dir, report)
    if note:
        click.echo(f"note: {note}", err=True)
    if as_json:
        _emit_json({"run_dir": str(run_dir), "gates": report["gates"], "verdict": report["verdict"], "warnings": report["warnings"]})
    else:
        for w in report["warnings"]:
            click.echo(f"warning: {w}")
        for line in render_gates(report["gates"]):
            click.echo(line)
        click.echo(f"verdict: {report['verdict']}")
    sys.exit(0 if report["verdict"] == "PASS" else 1)


@cli.command("capture-plot")
@run_dir_option
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), help="Directory for run_plot.png and run_plot.html (default: the run dir).")
@click.option("--gap-threshold-seconds", type=FiniteFloat(min=0, min_open=True, max=P.MAX_GAP_THRESHOLD_SECONDS), default=2.0, show_default=True, help="Heartbeat gaps longer than this are shaded.")
@click.option("--books/--no-books", "do_books", default=True, show_default=True,
              help="Also draw the loss audit's incidents (capture-books: rebuilds every token's book, reads every frame).")
@skip_bad_lines_option
@json_option
@handle_errors
def capture_plot(run_dir: Path, out_dir: Path | None, gap_threshold_seconds: float, do_books: bool, skip_bad_lines: bool, as_json: bool) -> None:
    """Draw a run: frames/s, p50/p99 latency per interval, queue depths, drops, each shard's
    disconnected windows, heartbeat gaps, universe refreshes and the loss audit's book incidents
    (--no-books skips the audit, which reads every frame), as a PNG and an HTML page with the
    image inside it (one file to send or open)."""
    from pm_arb.commands.plot import plot_run, render_plot

    result = plot_run(run_dir, out_dir, skip_bad_lines, gap_threshold_seconds, books=do_books,
                      show_progress=False if as_json else None)
    _emit_json(result) if as_json else click.echo(render_plot(result))


@cli.command("runs")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), help="Data dir to list (default: PM_ARB_DATA_DIR, else ./data).")
@json_option
@handle_errors
def runs(data_dir: Path | None, as_json: bool) -> None:
    """List the runs under DATA_DIR/runs: id, mode, start, duration, frames, size, last capture-check verdict.

    Any of these run ids, or `latest`, can be passed as --run-dir to the other commands.
    """
    from pm_arb.commands.run_dir import data_dir_from_env
    from pm_arb.commands.runs import list_runs, render_runs

    result = list_runs(data_dir if data_dir is not None else data_dir_from_env())
    _emit_json(result) if as_json else click.echo(render_runs(result))


@cli.command("capture-books")
@run_dir_option
@click.option("--tokens", "tokens", multiple=True, metavar="TOKEN[,TOKEN...]", help="Check only these token ids (repeat or comma-separate).")
@click.option("--silent-after-seconds", type=FiniteFloat(min=0, min_open=True, max=P.MAX_GAP_THRESHOLD_SECONDS), default=600.0, show_default=True,
              help="silent_token: a token with no message for longer than this while its shard kept receiving.")
@click.option("--workers", type=click.IntRange(min=0, max=256), default=0, show_default=True,
              help="Processes folding groups of shards side by side (0: one per core; 1: one process). Same report either way.")
@skip_bad_lines_option
@json_option
@handle_errors
def capture_books(run_dir: Path, tokens: tuple[str, ...], silent_after_seconds: float, workers: int, skip_bad_lines: bool, as_json: bool) -> None:
    """Rebuild every token's order book from the frames and report where data was lost (book audit).

    Checks each price_change's stated best bid/ask and each best_bid_ask against the rebuilt
    book, each book snapshot against it, changes before a snapshot since a (re)connect, and
    silent tokens; crossed books are warnings. Incidents per token with start, end, duration
    and cause. Exit 0 when there is no incident, 1 otherwise.
    """
    from pm_arb.commands.books import render_books, run_books

    from pm_arb.commands.token_option import parse_tokens

    result = run_books(run_dir, parse_tokens(tokens, "check every token"), silent_after_seconds, skip_bad_lines,
                       show_progress=False if as_json else None, workers=workers)
    _emit_json(result) if as_json else click.echo(render_books(result))
    sys.exit(0 if result["verdict"] == "PASS" else 1)


@cli.command("capture-replay")
@run_dir_option
@click.option("--until-seq", type=click.IntRange(min=0), help="Stop folding after this runlog seq (default: the whole runlog).")
@skip_bad_lines_option
@json_option
@handle_errors
def capture_replay(run_dir: Path, until_seq: int | None, skip_bad_lines: bool, as_json: bool) -> None:
    """Rebuild the supervisor's state by folding runlog.ndjson (the same fold the live supervisor runs).

    For a fatal run, `--until-seq <fatal.json seq>` gives exactly the state fatal.json recorded.
    """
    from pm_arb.commands.reports import render_replay, run_replay

    result = run_replay(run_dir, until_seq, skip_bad_lines)
    _emit_json(result) if as_json else click.echo(render_replay(result))


@cli.command("discover")
@click.option("--limit", type=click.IntRange(min=1, max=P.MAX_LIST), help="Show at most this many markets (after capture_max_markets).")
@json_option
@config_options
@handle_errors
def discover(limit: int | None, as_json: bool, **kwargs) -> None:
    """Print the active-binary YES/NO universe from Gamma (keyset paging to the last page).

    Keeps markets that are active, not closed or archived, order-book enabled, accepting orders,
    with outcomes exactly Yes/No and two token ids; ordered by Gamma id; capped by
    --capture-max-markets. Exit 1 when Gamma cannot be read after the retries.
    """
    from pm_arb.universe.gamma import fetch_active_rows
    from pm_arb.universe.placement import PlacementRules, place, plan_summary
    from pm_arb.universe.select import select_markets

    config = build_config(kwargs)
    res = fetch_active_rows(config)
    markets, rejected = select_markets(res.rows, config.capture_max_markets)
    shown = markets[:limit] if limit else markets
    rules = PlacementRules.of(config)
    placement = place(None, markets, rules).placement
    plan = plan_summary(len(markets), placement, rules)
    totals = {
        "pages_fetched": res.pages,
        "retries": res.retries,
        "markets_seen": len(res.rows),
        "selected": len(markets),
        "tokens": 2 * len(markets),
        "rejected": rejected,
        "shard_token_counts": placement.shard_token_counts(),
        "plan": plan,
    }
    if as_json:
        _emit_json({"totals": totals, "markets": [{**mk.to_dict(), "shard": placement.shard_of[mk.condition_id]} for mk in shown]})
        return
    for mk in shown:
        q = mk.question if len(mk.question) <= 60 else mk.question[:57] + "..."
        click.echo(f"{q:60s}  {mk.condition_id}  YES {mk.yes_token}  NO {mk.no_token}")
    click.echo(
        f"pages fetched: {res.pages}, markets seen: {len(res.rows)}, selected: {len(markets)} ({2 * len(markets)} tokens)"
        + (f", shown: {len(shown)}" if limit else "")
    )
    if rejected:
        click.echo("rejected: " + ", ".join(f"{why}: {n}" for why, n in sorted(rejected.items())))
    click.echo(
        f"plan: {plan['shards']} shards: {plan['reason']}; busiest shard {plan['busiest_tokens']} tokens, "
        f"mean {plan['mean_tokens']:g} (x{plan['busiest_over_mean']:g})"
    )


@cli.command("sim-exchange")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback).")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=0, show_default=True, help="Port (0: any free port).")
@click.option("--markets", type=click.IntRange(min=1, max=P.MAX_SIM_MARKETS), default=40, show_default=True, help="Active binary markets listed (plus rows the filter must reject).")
@click.option("--rate", type=FiniteFloat(min=0, max=P.MAX_RATE), default=200.0, show_default=True, help="Market messages per second across all connections.")
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the generated markets and messages.")
@click.option("--pool", type=click.IntRange(min=0, max=P.MAX_POOL), default=0, show_default=True,
              help="Benchmarks: pre-generate this many messages per connection and cycle them (0: generate each one).")
@click.option("--max-tokens-per-connection", type=click.IntRange(min=0, max=P.MAX_SIM_MARKETS * 2), default=0, show_default=True,
              help="Like Polymarket past ~500: tokens past this many on one connection get no messages (0: no limit).")
@click.option("--rate-from-stdin", is_flag=True,
              help="Benchmarks: each line read on stdin is a new --rate for connections opened after it; "
                   "answers `sent=N` (frames sent so far) on stdout.")
@handle_errors
def sim_exchange(host: str, port: int, markets: int, rate: float, seed: int, pool: int, max_tokens_per_connection: int,
                 rate_from_stdin: bool) -> None:
    """Serve a loopback simulated Polymarket (Gamma REST + CLOB market WebSocket) until Ctrl-C.

    Prints the two base URLs; point a capture at them with --gamma-base-url and --clob-ws-url.
    """
    import signal
    import threading
    import time

    from pm_arb.sim.exchange import SimExchange

    try:
        sim = SimExchange(markets=markets, rate=rate, seed=seed, host=host, port=port, pool=pool)
        sim.max_assets_per_connection = max_tokens_per_connection or None
        sim.start()
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port", 2) from None
    click.echo(f"gamma_base_url={sim.gamma_url}")
    click.echo(f"clob_ws_url={sim.ws_url}")
    sys.stdout.flush()
    click.echo(f"pm_arb capture --gamma-base-url {sim.gamma_url} --clob-ws-url {sim.ws_url}", err=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    started = time.monotonic()
    if rate_from_stdin:
        threading.Thread(target=_rates_from_stdin, args=(sim,), name="sim-rate-stdin", daemon=True).start()
    stop.wait()
    sim.stop()
    elapsed = time.monotonic() - started
    sent = sum(c.sent_count for c in sim.connections.values())
    click.echo(f"sim-exchange: sent {sent:,} frames on {len(sim.connections)} connection(s) in {elapsed:.1f} s "
               f"({sent / max(elapsed, 1e-9):,.0f} frames/s)", err=True)


def _rates_from_stdin(sim) -> None:
    """One benchmark simulator serves several runs at different rates (benchmarks/vs_handwritten.py)."""
    for line in sys.stdin:
        try:
            sim.rate = min(P.MAX_RATE, max(0.0, float(line)))
        except ValueError:
            click.echo(f"sim-exchange: ignored rate {line.strip()!r}: not a number", err=True)
        sent = sum(c.sent_count for c in list(sim.connections.values()))
        click.echo(f"sent={sent}")
        sys.stdout.flush()


@cli.command("capture-bench")
@click.option("--frames", type=click.IntRange(min=1, max=P.MAX_BENCH_FRAMES), default=200_000, show_default=True, help="Frames to push through the pipeline.")
@click.option("--shards", type=click.IntRange(min=1, max=MAX_SHARDS), default=4, show_default=True, help="Shards (fixture markets are spread over them).")
@click.option("--fixtures", type=click.Path(path_type=Path), help="Fixture set (default: the bundled one).")
@click.option("--rounds", type=click.IntRange(min=1, max=P.MAX_ROUNDS), default=3, show_default=True, help="Interleaved pipeline/baseline rounds; the median round is reported.")
@click.option("--keep", is_flag=True, help="Keep the temporary data dir and print its path.")
@click.option("--out", "out_path", type=click.Path(path_type=Path, dir_okay=False), help="Also write the JSON result to this file (e.g. benchmarks/results/capture_bench.json).")
@json_option
@handle_errors
def capture_bench(frames: int, shards: int, fixtures: Path | None, rounds: int, keep: bool, out_path: Path | None, as_json: bool) -> None:
    """Offline ingest benchmark: the full actor pipeline on fixtures, flat out, against a bare append loop.

    Prints frames/s and MB/s for both, their ratio, ws_rx_to_applied_ms percentiles, peak queue
    depths, drops and peak RSS. A benchmark, not a test: nothing here asserts a time.
    """
    from pm_arb.commands.bench import render_bench, run_bench

    if out_path is not None and not out_path.parent.is_dir():
        raise UserError(f"--out {out_path}: directory {out_path.parent} does not exist; create it or choose another path", 2)
    result = run_bench(frames, shards, fixtures, keep, show_progress=False if as_json else None, rounds=rounds)
    if out_path is not None:
        from pm_arb.store.vocabulary import document

        out_path.write_bytes(json_text.dumps(document(result), option=orjson.OPT_INDENT_2) + b"\n")
    _emit_json(result) if as_json else click.echo(render_bench(result))
