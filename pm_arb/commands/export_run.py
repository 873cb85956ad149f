"""capture-export: check the request, run the export (export/run_export.py), render the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pm_arb.bundle import require_run_dir
from pm_arb.commands.slice_run import parse_time_ns
from pm_arb.errors import UserError
from pm_arb.export.schemas import ALL_TABLES, CSV_TABLES
from pm_arb.progress import Progress, human_bytes
from pm_arb.store.frames_format import FILE_HEADER_SIZE, IDX_ENTRY_SIZE


def build_request(run_dir: Path, out: Path, fmt: str, tables: tuple[str, ...], from_wall: str | None, to_wall: str | None,
                  tokens: tuple[str, ...], skip_damaged: bool):
    from pm_arb.export.run_export import ExportRequest

    require_run_dir(run_dir)
    chosen: list[str] = []
    for item in tables:
        for name in item.split(","):
            name = name.strip()
            if name and name not in chosen:
                chosen.append(name)
    unknown = [t for t in chosen if t not in ALL_TABLES]
    if unknown:
        raise UserError(f"unknown table {unknown[0]!r} for --tables: choose from {', '.join(ALL_TABLES)}", 2)
    if fmt == "csv" and "frames" in chosen:
        raise UserError("the frames table is Parquet only (its payloads are bytes): drop it from --tables or use --format parquet", 2)
    if not chosen:
        chosen = list(ALL_TABLES if fmt == "parquet" else CSV_TABLES)
    start = parse_time_ns(from_wall, "--from-wall") if from_wall else None
    end = parse_time_ns(to_wall, "--to-wall") if to_wall else None
    if start is not None and end is not None and start > end:
        raise UserError("the range is empty: --from-wall is after --to-wall", 2)
    token_set = frozenset(t.strip() for item in tokens for t in item.split(",") if t.strip()) or None
    return ExportRequest(run_dir, out, fmt, tuple(t for t in ALL_TABLES if t in chosen), start, end, token_set, skip_damaged)


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
             f"in {result['seconds']:.1f} s: {result['frames_per_second']:,.0f} frames/s, {result['payload_mb_per_second']} MB/s of payload"]
    for table in result["tables"]:
        lines.append(f"  {table:<20} {result['rows'][table]:>12,} rows  {human_bytes(result['bytes_written'][table]):>10}")
    if result["damaged_skipped"]:
        lines.append(f"skipped {len(result['damaged_skipped'])} damaged record(s):")
        for d in result["damaged_skipped"]:
            lines.append(f"  shard {d['shard']} seq {d['seq']} (byte {d['offset']}): {d['reason']}")
    return lines
