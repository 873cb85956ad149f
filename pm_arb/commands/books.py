"""capture-books: rebuild every token's book from a run's frames and report where it lost data.

I/O only: frames come through pm_arb.reader (every record's checksum checked, shards merged
by receive time), (re)connects and token assignments from runlog.ndjson; the checks are
pm_arb/book/rebuild.py's pure fold. Shards are independent streams (a token lives on one
shard, and every connection starts from snapshots), so groups of shards are folded in forked
worker processes, one per core, and the folds merged (`rebuild.merge`) into the very report a
single fold gives (ADR/0010).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pm_arb.book.rebuild import Assign, BookFold, Connect, merge
from pm_arb.clock import wall_iso
from pm_arb.commands.reports import load_runlog
from pm_arb.commands.token_option import unknown_tokens_warnings
from pm_arb.errors import UserError
from pm_arb.events import types as ev
from pm_arb.export.forked_workers import die_with_parent
from pm_arb.cli.progress import Progress
from pm_arb.reader import Damage, Run, open_run
from pm_arb.store.frames_format import RECORD_OVERHEAD
from pm_arb.store.shard_files import frames_path

DEFAULT_SILENT_AFTER_S = 600.0
PROGRESS_EVERY = 4096
BATCH_FRAMES = 16384  # frames per columnar read: bounds memory, as capture-export's batches
# The columnar read saves ~2 us of CPU a frame but its imports (NumPy, PyArrow compute) cost
# ~0.4 s: it pays from about 200k frames (ADR/0010); smaller runs are read record by record.
COLUMNAR_MIN_BYTES = 128 * 1024 * 1024


def _runlog_markers(run_dir: Path, skip_bad_lines: bool) -> tuple[list[Connect | Assign], list[str]]:
    read, warnings = load_runlog(run_dir, skip_bad_lines)
    out: list[Connect | Assign] = []
    for rec in read.records:
        e = rec.event
        if isinstance(e, ev.ShardConnected):
            out.append(Connect(e.shard, rec.mono_ns, rec.wall_ns_utc))
        elif isinstance(e, ev.UniverseAssigned):
            shard_tokens = {int(s): list(toks) for s, toks in e.shard_tokens.items() if str(s).isascii() and str(s).lstrip("-").isdigit()}
            out.append(Assign(shard_tokens, rec.mono_ns, rec.wall_ns_utc))
    out.sort(key=lambda m: m.mono_ns)
    return out, warnings


@dataclass(frozen=True)
class _Audit:
    """What every part of one audit shares (crosses to worker processes)."""

    run_dir: Path
    markers: list[Connect | Assign]
    silent_after_s: float
    tokens: frozenset[str] | None
    is_slice: bool
    columnar: bool = False  # read in columnar batches (large runs)


_progress_queue = None  # set in worker processes: bytes read, for the parent's progress bar


def _init_worker(queue, parent_pid: int) -> None:
    global _progress_queue
    die_with_parent(parent_pid)
    _progress_queue = queue


class _NotExact(Exception):
    """The columnar read met something whose exact placement needs the record-by-record read."""


def _fold_shards(audit: _Audit, shards: list[int] | None, progress: Progress | None) -> tuple[BookFold, list[tuple[tuple, str]], bool]:
    """Fold `shards` (None: all) in receive order, with every runlog marker placed by mono_ns.
    Returns the fold (normalised by `merge`, so tokens are in the order a serial fold meets
    them), each damaged record skipped (with a key that orders them as a serial read reports
    them: after the last record its shard yielded), and whether receive times never went
    backwards (what `merge` relies on). Large runs are read in columnar batches (no Python object
    per record until the fold); a damaged record or a shard whose receive times step back is read
    again record by record, which is the reference order and names each skip where it happens."""
    if audit.columnar:
        try:
            return _fold_stream(audit, shards, _batched, progress)
        except _NotExact:
            pass
    return _fold_stream(audit, shards, _one_by_one, progress)


def _batched(run: Run, shards: list[int] | None, fold: BookFold, damaged: list, progress: Progress | None) -> Iterator[tuple]:
    import numpy as np

    from pm_arb.reader.columns import int64_values

    def on_damage(d: Damage) -> None:
        raise _NotExact

    last_seq: dict[int, int] = {}
    for batch in run.frame_batches(shards, on_damage=on_damage, max_frames=BATCH_FRAMES):
        shard = _values(batch.column(0), np.int16)
        seq = int64_values(batch.column(1))
        # A shard's records must come in seq order: a receive clock that steps back would have
        # them re-sorted here, unlike the reference read.
        by_shard = np.argsort(shard, kind="stable")
        same = shard[by_shard][1:] == shard[by_shard][:-1]
        if (seq[by_shard][1:] <= seq[by_shard][:-1])[same].any():
            raise _NotExact
        for sh, first in zip(*np.unique(shard, return_index=True)):
            if last_seq.get(int(sh), -1) >= seq[first]:
                raise _NotExact
        for sh, s in zip(shard.tolist(), seq.tolist()):
            last_seq[sh] = s
        payload = batch.column(6)
        yield from zip(shard.tolist(), seq.tolist(), int64_values(batch.column(2)).tolist(), int64_values(batch.column(3)).tolist(),
                       _values(batch.column(4), np.uint8).tolist(), payload.to_pylist())
        _report(progress, payload.nbytes + RECORD_OVERHEAD * batch.num_rows)


def _values(column, dtype):
    """A null-free fixed-width Arrow column as NumPy without a copy (to_numpy() would import pandas)."""
    import numpy as np

    width = np.dtype(dtype).itemsize
    return np.frombuffer(column.buffers()[1], dtype, count=len(column), offset=column.offset * width)


def _one_by_one(run: Run, shards: list[int] | None, fold: BookFold, damaged: list, progress: Progress | None) -> Iterator[tuple]:
    last_of: dict[int, tuple[int, int]] = {}  # shard -> (rx_mono_ns, seq) of its last record read

    def on_damage(d: Damage) -> None:
        mono, seq = last_of.get(d.shard, (-1, -1))
        damaged.append(((mono, d.shard, seq, len(damaged)), d.describe()))
        fold.damaged(d.shard)

    done_bytes = n = 0
    for rec in run.frames(shards, on_damage=on_damage):
        yield rec.shard, rec.seq, rec.rx_mono_ns, rec.rx_wall_ns_utc, rec.flags, rec.payload
        last_of[rec.shard] = (rec.rx_mono_ns, rec.seq)  # the consumer folded it: the next pull may report damage
        done_bytes += len(rec.payload) + RECORD_OVERHEAD
        n += 1
        if n % PROGRESS_EVERY == 0:
            _report(progress, done_bytes)
            done_bytes = 0
    _report(progress, done_bytes)


def _fold_stream(audit: _Audit, shards: list[int] | None, read, progress: Progress | None) -> tuple[BookFold, list[tuple[tuple, str]], bool]:
    run = open_run(audit.run_dir)
    fold = BookFold(silent_after_s=audit.silent_after_s, only_tokens=audit.tokens, starts_mid_stream=audit.is_slice,
                    only_shards=None if shards is None else frozenset(shards))
    damaged: list[tuple[tuple, str]] = []
    markers = audit.markers
    frame, connect, assign = fold.frame, fold.connect, fold.assign
    k, n_markers = 0, len(markers)
    next_marker = markers[0].mono_ns if markers else None
    prev_mono = -1
    monotonic = True
    for shard, seq, mono, wall, flags, payload in read(run, shards, fold, damaged, progress):
        if mono < prev_mono:
            monotonic = False
        prev_mono = mono
        if next_marker is not None and next_marker <= mono:
            while k < n_markers and markers[k].mono_ns <= mono:
                m = markers[k]
                connect(m) if type(m) is Connect else assign(m)  # type: ignore[arg-type]
                k += 1
            next_marker = markers[k].mono_ns if k < n_markers else None
        frame(shard, seq, mono, wall, flags, payload)
    while k < n_markers:
        m = markers[k]
        connect(m) if type(m) is Connect else assign(m)  # type: ignore[arg-type]
        k += 1
    # Normalised, the order of frames of different shards received in the same nanosecond
    # (batches and heapq.merge may differ there) cannot show; a clock that steps back keeps the
    # reference read's order.
    return (merge([fold]) or fold) if monotonic else fold, damaged, monotonic


def _report(progress: Progress | None, n: int) -> None:
    if progress is not None:
        progress.update(n)
    elif _progress_queue is not None:
        _progress_queue.put(n)


def _fold_part(audit: _Audit, shards: list[int]) -> tuple[BookFold, list[tuple[tuple, str]], bool] | None:
    """One group's fold, in a worker; None when it met a UserError (a file it cannot read): the
    parent then folds serially, which stops with that error exactly as one process would."""
    try:
        fold, damaged, monotonic = _fold_shards(audit, shards, None)
    except UserError:
        return None
    for st in fold.tokens.values():
        st.book = None  # type: ignore[assignment]  # the report needs no book: do not ship them back
    return fold, damaged, monotonic


def shard_groups(shard_bytes: dict[int, int], markers: list[Connect | Assign], workers: int) -> list[list[int]]:
    """Shards in at most `workers` groups of about equal bytes, keeping together every shards
    a token was ever assigned to (a token's book must be folded by one process)."""
    parent = {s: s for s in shard_bytes}

    def root(s: int) -> int:
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    home: dict[str, int] = {}
    for m in markers:
        if type(m) is Assign:
            for shard, toks in m.shard_tokens.items():
                if shard not in parent:
                    continue
                for tok in toks:
                    other = home.setdefault(tok, shard)
                    parent[root(shard)] = root(other)
    components: dict[int, list[int]] = {}
    for s in sorted(shard_bytes):
        components.setdefault(root(s), []).append(s)
    bins: list[tuple[int, list[int]]] = [(0, []) for _ in range(max(1, min(workers, len(components))))]
    for comp in sorted(components.values(), key=lambda c: -sum(shard_bytes[s] for s in c)):
        size, shards = min(bins, key=lambda b: b[0])
        bins.remove((size, shards))
        bins.append((size + sum(shard_bytes[s] for s in comp), sorted(shards + comp)))
    return sorted((shards for _, shards in bins if shards), key=lambda g: g[0])


def _fold_parallel(audit: _Audit, groups: list[list[int]], progress: Progress) -> tuple[BookFold, list[tuple[tuple, str]]] | None:
    """Each group of shards folded in its own (forked) process, merged; None when the merge
    cannot be exact (a token met in two groups, receive times going backwards) or a part met an
    error."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    with ProcessPoolExecutor(len(groups), mp_context=ctx, initializer=_init_worker, initargs=(queue, os.getpid())) as pool:
        pending = {pool.submit(_fold_part, audit, g) for g in groups}
        futures = list(pending)
        while pending:
            _, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(queue, progress)
        _drain(queue, progress)
        parts = [f.result() for f in futures]
    if any(p is None or not p[2] for p in parts):
        return None
    fold = merge([p for p, _, _ in parts])
    if fold is None:
        return None
    return fold, sorted((d for _, damaged, _ in parts for d in damaged), key=lambda d: d[0])


def _drain(queue, progress: Progress) -> None:
    while True:
        try:
            n = queue.get_nowait()
        except Exception:  # queue.Empty
            return
        progress.update(n)


def run_books(run_dir: Path, tokens: list[str] | None = None, silent_after_s: float = DEFAULT_SILENT_AFTER_S,
              skip_bad_lines: bool = False, show_progress: bool | None = None, workers: int = 0) -> dict[str, Any]:
    """The audit's report. `workers`: processes folding groups of shards side by side (0: one
    per core; 1: this process only); the report is the same either way."""
    run = open_run(run_dir)
    markers, warnings = _runlog_markers(run_dir, skip_bad_lines)
    warnings += run.missing_shard_warnings()
    if not any(isinstance(m, Connect) for m in markers):
        warnings.append("runlog.ndjson has no shard_connected: reconnects cannot be placed, delta_before_snapshot counts from the first frame")
    is_slice = isinstance(run.manifest, dict) and bool(run.manifest.get("slice_of"))
    if is_slice:
        warnings.append("a slice starts inside the stream: each token's changes before its first snapshot in the window are not checked")
    shard_bytes = {s: frames_path(run.capture_dir, s).stat().st_size for s in run.shards}
    columnar = sum(shard_bytes.values()) >= COLUMNAR_MIN_BYTES
    if columnar:
        import pm_arb.reader.columns  # noqa: F401  # once, before the workers fork

    audit = _Audit(run_dir, markers, silent_after_s, frozenset(tokens) if tokens else None, is_slice, columnar)
    groups = shard_groups(shard_bytes, markers, workers or os.cpu_count() or 1)
    assigned = {shard for m in markers if type(m) is Assign for shard in m.shard_tokens}
    if assigned - set(shard_bytes):
        # Tokens on a shard whose files are gone belong to no group; one process counts them
        # (as never heard from), so one process it is.
        groups = [sorted(shard_bytes)]
    progress = Progress(sum(shard_bytes.values()), "capture-books", enabled=show_progress)
    try:
        done = _fold_parallel(audit, groups, progress) if len(groups) > 1 else None
        if done is None:  # one process, or a parallel fold that could not be merged exactly
            progress.done = 0
            fold, damaged, _ = _fold_shards(audit, None, progress)
        else:
            fold, damaged = done
    finally:
        progress.close()
    result = fold.result()
    if tokens:
        warnings += unknown_tokens_warnings(tokens, fold.tokens, run_dir)
    for _, d in damaged[:20]:
        warnings.append(f"damaged record skipped: {d} (run capture-verify)")
    if len(damaged) > 20:
        warnings.append(f"... and {len(damaged) - 20} more damaged record(s) skipped")
    result["run_dir"] = str(run_dir)
    result["warnings"] = warnings
    result["verdict"] = "PASS" if result["totals"]["incidents"] == 0 else "FAIL"
    return result


def _where(w: dict[str, Any] | None) -> str:
    if w is None:
        return "still open at the end of the run"
    seq = f" seq {w['seq']}" if w["seq"] is not None else " (connect)"
    return f"shard {w['shard']}{seq} at {wall_iso(w['wall_ns_utc'])}"


def render_books(r: dict[str, Any], max_incidents: int = 50) -> str:
    t = r["totals"]
    lines = [f"warning: {w}" for w in r["warnings"]]
    lines.append(
        f"frames: {t['frames']:,} ({t['messages']:,} messages: {t['snapshots']:,} snapshots, {t['changes']:,} level changes, "
        f"{t['top_checks']:,} top-of-book checks, {t['tick_size_changes']:,} tick size changes, {t['malformed']:,} malformed)"
    )
    lines.append(f"tokens: {t['tokens_checked']:,} checked, {t['tokens_clean']:,} clean")
    for inc in r["incidents"][:max_incidents]:
        lines.append(f"  {inc['cause']:22s} token {inc['token'][:16]}...  from {_where(inc['start'])}")
        lines.append(f"  {'':22s} until {_where(inc['end'])}  ({inc['duration_s']:g} s, {inc['findings']} finding(s)): {inc['detail']}")
    if len(r["incidents"]) > max_incidents:
        lines.append(f"  ... {len(r['incidents']) - max_incidents} more (use --json)")
    for c in r["crossed_books"][:10]:
        lines.append(f"warning: crossed book (best bid >= best ask) {c['count']} time(s) on token {c['token'][:16]}..., first at {_where(c['first'])}")
    for m in r["malformed"][:10]:
        lines.append(f"warning: malformed message at shard {m['shard']} seq {m['seq']}: {m['reason']}")
    by = ", ".join(f"{c}={n}" for c, n in sorted(t["incidents_by_cause"].items())) or "none"
    verdict = r["verdict"]
    lines.append(f"{verdict}: incidents={t['incidents']} ({by}); out of sync {t['out_of_sync_s']:g} s, "
                 f"silent {t['silent_s']:g} s (silent after {r['silent_after_s']:g} s)")
    return "\n".join(lines)
