"""capture-books: rebuild every token's book from a run's frames and report where it lost data.

I/O only: frames come through pm_arb.reader (every record's checksum checked, shards merged
by receive time), (re)connects and token assignments from runlog.ndjson; the checks are
pm_arb/book/rebuild.py's pure fold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pm_arb.book.rebuild import Assign, BookFold, Connect
from pm_arb.clock import wall_iso
from pm_arb.commands.reports import load_runlog
from pm_arb.errors import UserError
from pm_arb.events import types as ev
from pm_arb.progress import Progress
from pm_arb.reader import Damage, open_run
from pm_arb.store.frames_format import RECORD_OVERHEAD
from pm_arb.store.shard_files import frames_path

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


def run_books(run_dir: Path, tokens: list[str] | None = None, silent_after_s: float = DEFAULT_SILENT_AFTER_S,
              skip_bad_lines: bool = False, show_progress: bool | None = None) -> dict[str, Any]:
    run = open_run(run_dir)
    markers, warnings = _runlog_markers(run_dir, skip_bad_lines)
    if not any(isinstance(m, Connect) for m in markers):
        warnings.append("runlog.ndjson has no shard_connected: reconnects cannot be placed, delta_before_snapshot counts from the first frame")
    is_slice = isinstance(run.manifest, dict) and bool(run.manifest.get("slice_of"))
    if is_slice:
        warnings.append("a slice starts inside the stream: each token's changes before its first snapshot in the window are not checked")
    fold = BookFold(silent_after_s=silent_after_s, only_tokens=frozenset(tokens) if tokens else None, starts_mid_stream=is_slice)
    damaged: list[str] = []

    def on_damage(d: Damage) -> None:
        damaged.append(d.describe())
        fold.damaged(d.shard)

    total = sum(frames_path(run.capture_dir, s).stat().st_size for s in run.shards)
    progress = Progress(total, "capture-books", enabled=show_progress)
    frame, connect, assign = fold.frame, fold.connect, fold.assign
    k, n_markers = 0, len(markers)
    done_bytes = 0
    n = 0
    try:
        for rec in run.frames(on_damage=on_damage):
            mono = rec.rx_mono_ns
            while k < n_markers and markers[k].mono_ns <= mono:
                m = markers[k]
                connect(m) if type(m) is Connect else assign(m)  # type: ignore[arg-type]
                k += 1
            frame(rec.shard, rec.seq, mono, rec.rx_wall_ns_utc, rec.flags, rec.payload)
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
