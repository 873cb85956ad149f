"""capture-books: rebuild every token's book from a run's frames and report where it lost data.

I/O only: frames come from the shard files (pm_arb.store's scan, every record's checksum
checked) merged by receive time, (re)connects and token assignments from runlog.ndjson; the
checks are pm_arb/book/rebuild.py's pure fold.
"""

from __future__ import annotations

import heapq
from pathlib import Path
from typing import Any, Callable, Iterator

from pm_arb.book.rebuild import Assign, BookFold, Connect
from pm_arb.clock import wall_iso
from pm_arb.commands.reports import load_runlog
from pm_arb.errors import UserError
from pm_arb.events import types as ev
from pm_arb import bundle
from pm_arb.progress import Progress
from pm_arb.store.frames_format import RECORD_OVERHEAD, FrameRecord, HeaderProblem
from pm_arb.store.scan import CorruptRegion, ScanSummary
from pm_arb.store.shard_files import ShardReader, frames_path, shard_numbers

DEFAULT_SILENT_AFTER_S = 600.0
PROGRESS_EVERY = 4096


def _runlog_markers(run_dir: Path, skip_bad_lines: bool) -> tuple[list[Connect | Assign], list[str]]:
    read, warnings = load_runlog(run_dir, skip_bad_lines)
    out: list[Connect | Assign] = []
    for rec in read.records:
        e = rec.event
        if isinstance(e, ev.ShardConnected):
            out.append(Connect(e.shard, rec.mono_ns, rec.wall_ns_utc))
        elif isinstance(e, ev.UniverseAssigned):
            shard_tokens = {int(s): list(toks) for s, toks in e.shard_tokens.items() if str(s).lstrip("-").isdigit()}
            out.append(Assign(shard_tokens, rec.mono_ns, rec.wall_ns_utc))
    out.sort(key=lambda m: m.mono_ns)
    return out, warnings


OnDamage = Callable[[int, CorruptRegion], None]


def merged_frames(capture_dir: Path, on_damage: OnDamage, warnings: list[str]) -> Iterator[tuple[int, FrameRecord]]:
    """(shard, record) for every record that passes its checksum, all shards merged by
    rx_mono_ns (one monotonic clock per run). `on_damage(shard, region)` is called where a
    damaged region is skipped, in that shard's order."""
    shards = shard_numbers(capture_dir) if capture_dir.is_dir() else []
    if not shards:
        raise UserError(f"no capture/*.frames in {capture_dir.parent}: confirm the run dir path and that capture/*.frames exists", 2)
    readers: list[ShardReader] = []
    try:
        for s in shards:
            readers.append(ShardReader(capture_dir, s))
            if readers[-1].header_damage:
                warnings.append(f"shard {s}: {readers[-1].header_damage} (run capture-verify); its records are still read")
    except (HeaderProblem, OSError) as exc:
        for rd in readers:
            rd.close()
        raise UserError(f"cannot read {capture_dir}: {exc}; run capture-verify", 1) from None

    def stream(rd: ShardReader) -> Iterator[tuple[int, int, FrameRecord]]:
        summary = ScanSummary()
        reported = 0
        for rec in rd.scan(summary):
            while reported < len(summary.corrupt):
                on_damage(rd.shard, summary.corrupt[reported])
                reported += 1
            yield rec.rx_mono_ns, rd.shard, rec
        for region in summary.corrupt[reported:]:
            on_damage(rd.shard, region)

    try:
        for _, shard, rec in heapq.merge(*(stream(rd) for rd in readers)):
            yield shard, rec
    finally:
        for rd in readers:
            rd.close()


def run_books(run_dir: Path, tokens: list[str] | None = None, silent_after_s: float = DEFAULT_SILENT_AFTER_S,
              skip_bad_lines: bool = False, show_progress: bool | None = None) -> dict[str, Any]:
    markers, warnings = _runlog_markers(run_dir, skip_bad_lines)
    capture_dir = run_dir / bundle.CAPTURE_DIR
    if not any(isinstance(m, Connect) for m in markers):
        warnings.append("runlog.ndjson has no shard_connected: reconnects cannot be placed, delta_before_snapshot counts from the first frame")
    fold = BookFold(silent_after_s=silent_after_s, only_tokens=frozenset(tokens) if tokens else None)
    damaged: list[str] = []

    def on_damage(shard: int, region: CorruptRegion) -> None:
        seq = f"seq {region.seq}" if region.seq is not None else "an unknown seq"
        damaged.append(f"shard {shard} {seq} (byte {region.offset} of shard_{shard:02d}.frames): {region.reason}")
        fold.damaged(shard)

    total = sum(frames_path(capture_dir, s).stat().st_size for s in shard_numbers(capture_dir)) if capture_dir.is_dir() else 0
    progress = Progress(total, "capture-books", enabled=show_progress)
    frame, connect, assign = fold.frame, fold.connect, fold.assign
    k, n_markers = 0, len(markers)
    done_bytes = 0
    n = 0
    try:
        for shard, rec in merged_frames(capture_dir, on_damage, warnings):
            mono = rec.rx_mono_ns
            while k < n_markers and markers[k].mono_ns <= mono:
                m = markers[k]
                connect(m) if type(m) is Connect else assign(m)  # type: ignore[arg-type]
                k += 1
            frame(shard, rec.seq, mono, rec.rx_wall_ns_utc, rec.flags, rec.payload)
            done_bytes += len(rec.payload) + RECORD_OVERHEAD
            n += 1
            if n % PROGRESS_EVERY == 0:
                progress.update(done_bytes)
                done_bytes = 0
    finally:
        progress.close()
    while k < n_markers:
        m = markers[k]
        connect(m) if type(m) is Connect else assign(m)  # type: ignore[arg-type]
        k += 1
    result = fold.result()
    if tokens:
        unknown = [t for t in tokens if t not in fold.tokens]
        if len(unknown) == len(tokens):
            raise UserError(f"none of the {len(tokens)} token(s) given with --tokens appear in {run_dir}: "
                            "pass token ids from its manifest (capture-inspect lists the universe)", 2)
        if unknown:
            warnings.append(f"{len(unknown)} token(s) given with --tokens never appear in this run: {', '.join(t[:12] + '...' for t in unknown[:5])}")
    for d in damaged[:20]:
        warnings.append(f"damaged record skipped: {d} (run capture-verify)")
    if len(damaged) > 20:
        warnings.append(f"... and {len(damaged) - 20} more damaged record(s) skipped")
    result["run_dir"] = str(run_dir)
    result["warnings"] = warnings
    result["pass"] = result["totals"]["incidents"] == 0
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
    verdict = "PASS" if r["pass"] else "FAIL"
    lines.append(f"{verdict}: incidents={t['incidents']} ({by}); out of sync {t['out_of_sync_s']:g} s, "
                 f"silent {t['silent_s']:g} s (silent after {r['silent_after_s']:g} s)")
    return "\n".join(lines)
