"""capture-export's engine: a run's frames to Parquet (and Tardis CSV), one worker process per
shard at a time, as many workers as cores.

Each worker streams its shard through `Run.frame_batches` (checksums verified), writes the
frames table as it goes, decodes each batch (export/decode.py) and folds book events
into quotes (export/quotes.py). Memory stays bounded by one batch per worker, whatever the run's
size. Shards are independent streams (every connection starts from book snapshots), so they
can be exported side by side.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pm_arb.store.layout import write_json
from pm_arb.clock import wall_iso
from pm_arb.store.vocabulary import document
from pm_arb.errors import UserError
from pm_arb.export.decode import Decoder  # imported before the workers fork: once, not per worker
from pm_arb.export.parquet_out import COMPRESSION, PartitionedWriter
from pm_arb.export.schemas import CSV_TABLES, NORMALIZED, SCHEMAS
from pm_arb.export.forked_workers import die_with_parent
from pm_arb.reader import Damage, DamagedRecordError, Run, open_run
from pm_arb.reader.columns import FRAMES_SCHEMA

STAGING = ".staging"  # normalized Parquet before it becomes CSV
SUMMARY = "export_summary.json"  # the --json summary, written when the export is complete


@dataclass(frozen=True)
class ExportRequest:
    run_dir: Path
    out: Path
    fmt: str  # "parquet" | "csv"
    tables: tuple[str, ...]
    start: int | None = None  # receive wall time bounds, ns since the epoch, inclusive
    end: int | None = None
    tokens: frozenset[str] | None = None
    skip_damaged: bool = False
    workers: int = 0  # 0: one per core
    batch_frames: int = 16384  # per worker: bounds RSS (~200 MB a worker, measured), no slower than 64k
    warnings: tuple[str, ...] = ()  # found while checking the request (tokens the run never had), reported in the summary


def token_table(run: Run) -> pa.Table:
    """token -> market (condition id) and outcome, from the run's universe and its refreshes."""
    tokens = list(run.all_tokens().items())
    return pa.table({"symbol": [t for t, _ in tokens], "market": [m.condition_id for _, (m, _) in tokens],
                     "outcome": [o for _, (_, o) in tokens]},
                    schema=pa.schema([("symbol", pa.string()), ("market", pa.string()), ("outcome", pa.string())]))


def markets_table(run: Run, tokens: frozenset[str] | None) -> pa.Table:
    rows: dict[str, list] = {name: [] for name in SCHEMAS["markets"].names}

    def add(token, outcome, market, shard, source) -> None:
        if tokens is not None and token not in tokens:
            return
        rows["token"].append(token)
        rows["outcome"].append(outcome)
        rows["condition_id"].append(market.condition_id if market else None)
        rows["question"].append(market.question if market else None)
        rows["shard"].append(shard)
        rows["gamma_id"].append(market.gamma_id if market else None)
        rows["slug"].append(market.slug if market else None)
        rows["source"].append(source)

    for token, (market, outcome) in run.tokens.items():
        add(token, outcome, market, market.shard, "manifest")
    refreshed = run.all_tokens()
    for token, shard in run.token_assignments().items():
        if token not in run.tokens:
            market, outcome = refreshed.get(token, (None, None))
            add(token, outcome, market, shard, "refresh")
    return pa.table(rows, schema=SCHEMAS["markets"])


# --- one shard, in a worker process ----------------------------------------------------------

_progress_queue = None


def _init_worker(queue, parent_pid: int) -> None:
    global _progress_queue
    die_with_parent(parent_pid)
    _progress_queue = queue
    # PyArrow probes for pandas on the first array it builds from Python objects: an import of
    # 0.2-0.3 s per worker where pandas is installed (a dev environment), for nothing here. The
    # probe runs once, while pandas looks absent; pandas stays importable for any later use.
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, _NoPandas)
        try:
            pa.scalar(0)
        finally:
            sys.meta_path.remove(_NoPandas)


class _NoPandas:
    """An import finder that makes `import pandas` fail, while PyArrow probes for it."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "pandas":
            raise ImportError("pandas is not probed by export workers")
        return None


def _run_id(run: Run, req: ExportRequest) -> str:
    return str(run.manifest.get("run_id") or req.run_dir.name)


def export_shard(req: ExportRequest, shard: int) -> dict[str, Any]:
    """Export one shard; returns rows per table, damage skipped, and an error message (a
    damaged record without --skip-damaged) instead of raising, so it crosses processes intact."""
    from pm_arb.export.quotes import QuoteFold

    run = open_run(req.run_dir)
    damaged: list[Damage] = []
    normalized = [t for t in req.tables if t in NORMALIZED]
    root = req.out / STAGING if req.fmt == "csv" else req.out
    # The run id in file names lets the exports of many runs share one tree (Spark over months).
    stem = f"{_run_id(run, req)}-shard-{shard:02d}"
    writers: dict[str, PartitionedWriter] = {}
    if "frames" in req.tables:
        writers["frames"] = PartitionedWriter(req.out / "frames", FRAMES_SCHEMA, "rx_wall_ns_utc", stem)
    for t in normalized:
        writers[t] = PartitionedWriter(root / t, SCHEMAS[t], "local_timestamp", stem)
    decoder = quotes = None
    if normalized:
        decoder = Decoder(token_table(run))
        quotes = QuoteFold() if "quotes" in normalized else None
    token_filter = pa.array(sorted(req.tokens), pa.string()) if req.tokens is not None else None
    frames = payload_bytes = 0
    error = None
    try:
        for batch in run.frame_batches([shard], req.start, req.end, True, damaged.append if req.skip_damaged else None, req.batch_frames):
            frames += batch.num_rows
            payload_bytes += batch.column("payload").nbytes
            if "frames" in writers:
                writers["frames"].write(batch)
            if decoder is not None:
                decoded = decoder.decode(batch, set(normalized))
                if token_filter is not None:
                    decoded = {k: v.filter(pc.is_in(v.column("symbol"), token_filter)) for k, v in decoded.items()}
                for t in ("incremental_book_L2", "trades", "market_events"):
                    if t in decoded:
                        writers[t].write(decoded[t])
                if quotes is not None:
                    writers["quotes"].write(decoder.finish(quotes.fold(decoded["book_rows"], decoded["best_bid_ask"]), "quotes"))
            if _progress_queue is not None:
                _progress_queue.put(batch.num_rows)
    except DamagedRecordError as exc:
        error = str(exc)
    finally:
        for w in writers.values():
            w.close()
        if decoder is not None:
            decoder.close()
    return {
        "shard": shard, "frames": frames, "payload_bytes": payload_bytes, "error": error,
        "rows": {t: w.rows for t, w in writers.items()},
        "damaged": [d._asdict() for d in damaged],
        "book_changes_rejected": quotes.rejected if quotes else 0,
    }


# --- the whole run -----------------------------------------------------------------------------


def output_names(out: Path, tables: tuple[str, ...]) -> list[Path]:
    """What an export writes under --out (and what --force replaces)."""
    names = [out / t for t in tables] + [out / STAGING, out / SUMMARY]
    names += list(out.glob("polymarket_*.csv.gz")) + [out / "markets.csv.gz"]
    return [p for p in names if p.exists()]


def export_run(req: ExportRequest, force: bool, progress=None) -> dict[str, Any]:
    t0 = time.monotonic()
    run = open_run(req.run_dir)
    shards = run.shards
    if not shards:
        raise UserError(f"no capture/*.frames in {req.run_dir}: confirm the run dir path and that capture/*.frames exists", 2)
    reads_frames = any(t == "frames" or t in NORMALIZED for t in req.tables)
    if reads_frames and (req.start is not None or req.end is not None):
        _require_a_frame_in_window(run, req)
    _prepare_out(req, force)
    workers = req.workers or min(os.cpu_count() or 1, len(shards))
    results = _run_shards(req, shards, workers, progress) if reads_frames else []
    errors = [r["error"] for r in results if r["error"]]
    if errors:
        raise UserError(f"export stopped: {errors[0]}; pass --skip-damaged to export the rest and list what was skipped", 1)
    rows: dict[str, int] = {t: 0 for t in req.tables}
    for r in results:
        for t, n in r["rows"].items():
            rows[t] += n
    if "markets" in req.tables:
        markets = markets_table(run, req.tokens)
        rows["markets"] = markets.num_rows
        if req.fmt == "parquet":
            (req.out / "markets").mkdir(parents=True, exist_ok=True)
            # Named by run, like every other file: many runs' trees merge by copying (Spark).
            pq.write_table(markets, req.out / "markets" / f"{_run_id(run, req)}.parquet", compression=COMPRESSION)
        else:
            from pm_arb.export.csv_out import write_markets_csv

            write_markets_csv(markets, req.out)
    files: list[Path] = []
    if req.fmt == "csv":
        from pm_arb.export.csv_out import staging_to_csv

        files += staging_to_csv(req.out / STAGING, req.out, [t for t in req.tables if t in NORMALIZED])
        shutil.rmtree(req.out / STAGING, ignore_errors=True)
    seconds = time.monotonic() - t0
    frames = sum(r["frames"] for r in results)
    payload = sum(r["payload_bytes"] for r in results)
    input_bytes = sum(p.stat().st_size for p in (req.run_dir / "capture").glob("shard_*.frames"))
    written = {t: _size(req.out, t, req.fmt) for t in req.tables}
    damaged = [d for r in results for d in r["damaged"]]
    summary = {
        "run_dir": str(req.run_dir), "out": str(req.out), "format": req.fmt, "tables": list(req.tables),
        "frames": frames, "rows": rows, "bytes_written": written, "bytes_written_total": sum(written.values()),
        "frames_files_bytes": input_bytes, "payload_bytes": payload, "duration_s": round(seconds, 3),
        "frames_per_s": round(frames / seconds, 1) if seconds else None,
        "payload_mb_per_s": round(payload / 1e6 / seconds, 2) if seconds else None,
        "workers": workers, "damaged_skipped": damaged, "warnings": list(req.warnings) + run.missing_shard_warnings(),
        "book_changes_rejected": sum(r["book_changes_rejected"] for r in results),
    }
    # Written last, whole or not at all: an export dir without it was interrupted.
    write_json(req.out / SUMMARY, document(summary))
    return summary


def _require_a_frame_in_window(run, req: ExportRequest) -> None:
    """A window that misses the run (a wrong date, say) is refused before anything is written,
    as capture-slice refuses it: an empty export looks like an answer. Found by bisection on
    each shard's idx, so it costs a few reads, not a scan."""
    first = next(iter(run.frames(start=req.start, end=req.end, verify=False, on_damage=lambda _d: None)), None)
    if first is None:
        raise UserError(f"the receive-time window {wall_iso(req.start) or 'start'} .. {wall_iso(req.end) or 'end'} selects no frame of "
                        "this run; nothing was written: `pm_arb capture-inspect` shows each shard's first and last receive time", 1)


def _prepare_out(req: ExportRequest, force: bool) -> None:
    out = req.out
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: choose a directory (nothing was written)", 2)
    existing = output_names(out, req.tables) if out.is_dir() else []
    if existing and not force:
        raise UserError(f"--out {out} already holds an export ({existing[0].name}): pass --force to replace it, or choose a new dir (nothing was written)", 2)
    for p in existing:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _run_shards(req: ExportRequest, shards: list[int], workers: int, progress) -> list[dict[str, Any]]:
    if workers <= 1 or len(shards) == 1:
        results = []
        for s in shards:
            results.append(export_shard(req, s))
            if progress is not None:
                progress.update(results[-1]["frames"])
        return results
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(queue, os.getpid())) as pool:
        # Largest shards first, so the last one to finish is a small one.
        order = sorted(shards, key=lambda s: -(req.run_dir / "capture" / f"shard_{s:02d}.frames").stat().st_size)
        pending: set[Future] = {pool.submit(export_shard, req, s) for s in order}
        results = []
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(queue, progress)
            for fut in done:
                results.append(fut.result())
        _drain(queue, progress)
    return sorted(results, key=lambda r: r["shard"])


def _drain(queue, progress) -> None:
    while True:
        try:
            n = queue.get_nowait()
        except Exception:  # queue.Empty
            return
        if progress is not None:
            progress.update(n)


def _size(out: Path, table: str, fmt: str) -> int:
    if fmt == "csv" and table != "frames":
        pattern = "markets.csv.gz" if table == "markets" else f"polymarket_{table}_*.csv.gz"
        return sum(p.stat().st_size for p in out.glob(pattern))
    return sum(p.stat().st_size for p in (out / table).rglob("*.parquet")) if (out / table).is_dir() else 0
