"""capture-export: check the request, run the export (export/run_export.py), render the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pm_arb.store.layout import require_outside, require_run_dir
from pm_arb.commands.time_input import parse_time, resolve
from pm_arb.commands.token_option import parse_tokens, unknown_tokens_warnings
from pm_arb.errors import UserError
from pm_arb.export.schemas import ALL_TABLES, CSV_TABLES
from pm_arb.cli.progress import Progress
from pm_arb.metrics.units import human_bytes
from pm_arb.store.frames_format import FILE_HEADER_SIZE, IDX_ENTRY_SIZE


def build_request(run_dir: Path, out: Path, fmt: str, tables: tuple[str, ...], from_wall: str | None, to_wall: str | None,
                  tokens: tuple[str, ...], skip_damaged: bool):
    from pm_arb.export.run_export import ExportRequest

    require_run_dir(run_dir)
    require_outside(run_dir, out)
    chosen: list[str] = []
    for item in tables:
        for name in item.split(","):
            name = name.strip()
            if name and name not in chosen:
                chosen.append(name)
    if tables and not chosen:  # given but empty (an unset shell variable): not "every table"
        raise UserError(f"--tables was given but names no table: pass some of {', '.join(ALL_TABLES)}, "
                        "or drop the option to export every table", 2)
    unknown = [t for t in chosen if t not in ALL_TABLES]
    if unknown:
        raise UserError(f"unknown table {unknown[0]!r} for --tables: choose from {', '.join(ALL_TABLES)}", 2)
    if fmt == "csv" and "frames" in chosen:
        raise UserError("the frames table is Parquet only (its payloads are bytes): drop it from --tables or use --format parquet", 2)
    if not chosen:
        chosen = list(ALL_TABLES if fmt == "parquet" else CSV_TABLES)
    start, end = _wall_window(run_dir, from_wall, to_wall)
    if start is not None and end is not None and start > end:
        raise UserError("the range is empty: --from-wall is after --to-wall", 2)
    token_set, warnings = _token_filter(run_dir, tokens)
    return ExportRequest(run_dir, out, fmt, tuple(t for t in ALL_TABLES if t in chosen), start, end, token_set, skip_damaged,
                         warnings=tuple(warnings))


def _token_filter(run_dir: Path, tokens: tuple[str, ...]) -> tuple[frozenset[str] | None, list[str]]:
    """--tokens as a set (None: every token) and warnings (commands/token_option.py)."""
    wanted = parse_tokens(tokens, "export every token")
    if wanted is None:
        return None, []
    from pm_arb.reader import open_run

    run = open_run(run_dir)
    known = set(run.all_tokens()) | set(run.token_assignments())
    # A run with neither manifest universe nor runlog cannot say which ids it has: no check.
    return frozenset(wanted), unknown_tokens_warnings(wanted, known, run_dir) if known else []


def _wall_window(run_dir: Path, from_wall: str | None, to_wall: str | None) -> tuple[int | None, int | None]:
    """The same time forms as capture-slice; offsets and times of day are placed on the run's frames."""
    specs = [parse_time(text, flag) if text else None for text, flag in ((from_wall, "--from-wall"), (to_wall, "--to-wall"))]
    if not any(s is not None and s.kind != "ns" for s in specs):
        return tuple(s.ns if s is not None else None for s in specs)  # type: ignore[return-value]
    from pm_arb.commands.slice_run import wall_extent

    first, last = wall_extent(run_dir)
    if first is None:
        raise UserError(f"{run_dir} holds no frames to place a relative time on; give ISO-8601 or integer ns", 2)
    return tuple(resolve(s, first, last) if s is not None else None for s in specs)  # type: ignore[return-value]


def run_export(req, force: bool, show_progress: bool | None) -> dict[str, Any]:
    from pm_arb.export.run_export import export_run

    capture = req.run_dir / "capture"
    total = sum(max(0, p.stat().st_size - FILE_HEADER_SIZE) // IDX_ENTRY_SIZE for p in capture.glob("shard_*.idx")) if capture.is_dir() else 0
    progress = Progress(total, "export", unit=" frames", enabled=show_progress)
    try:
        return export_run(req, force, progress)
    finally:
        progress.close()


def render(result: dict[str, Any]) -> list[str]:
    lines = [f"exported {result['frames']:,} frames of {result['run_dir']} to {result['out']} ({result['format']}) "
             f"in {result['duration_s']:.1f} s: {result['frames_per_s']:,.0f} frames/s, {result['payload_mb_per_s']} MB/s of payload"]
    for table in result["tables"]:
        lines.append(f"  {table:<20} {result['rows'][table]:>12,} rows  {human_bytes(result['bytes_written'][table]):>10}")
    lines += [f"warning: {w}" for w in result.get("warnings", [])]
    if result["damaged_skipped"]:
        lines.append(f"skipped {len(result['damaged_skipped'])} damaged record(s):")
        for d in result["damaged_skipped"]:
            lines.append(f"  shard {d['shard']} seq {d['seq']} (byte {d['offset']}): {d['reason']}")
    return lines
