"""Read a run's files, call the folds, render text. The folds themselves do no I/O."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from pm_arb.store import layout as bundle
from pm_arb.store.layout import require_run_dir
from pm_arb.store.vocabulary import shard_list, verdict
from pm_arb.errors import UserError
from pm_arb.events import types as ev
from pm_arb.events.folds.audit import audit
from pm_arb.events.folds.gates import gates
from pm_arb.events.folds.latency import latency_report
from pm_arb.events.folds.placement import fold as fold_placement
from pm_arb.events.folds.supervisor_state import fold
from pm_arb.events.runlog_file import RunlogRead, read_runlog
from pm_arb.store.shard_files import shard_number


def _read_ndjson(path: Path) -> tuple[list[dict[str, Any]], int]:
    if not path.is_file():
        return [], 0
    recs, bad = [], 0
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            bad += 1
            continue
        if is_metrics_record(obj):
            recs.append(obj)
        else:
            bad += 1
    return recs, bad


# The figures of a metrics line (actors/metrics.py), numbers or null; a line where one is
# anything else is unreadable like one that is not JSON: the reports do arithmetic on them.
_METRIC_NUMBERS = ("mono_ns", "wall_ns_utc", "interval_s", "frames", "bytes", "frames_total", "bytes_total", "frames_per_s",
                   "ws_in_q_depth", "parse_q_depth", "write_q_depth", "dropped", "dropped_total", "connected", "loop_lag_ms", "shard")


def _number(v: Any) -> bool:
    return v is None or type(v) in (int, float)


def is_metrics_record(obj: Any) -> bool:
    """Whether a decoded metrics line has the shape the metrics actor writes."""
    if type(obj) is not dict or not all(_number(obj.get(k)) for k in _METRIC_NUMBERS):
        return False
    lat, hist = obj.get("ws_rx_to_applied_ms"), obj.get("ws_rx_to_applied_hist_us")
    if lat is not None and not (type(lat) is dict and all(map(_number, lat.values()))):
        return False
    return hist is None or (type(hist) is dict and all(k.isascii() and k.isdigit() and type(n) is int for k, n in hist.items()))


def slice_of(run_dir: Path) -> dict[str, Any] | None:
    """The source run a slice was cut from (its manifest's `slice_of`), or None for a whole run."""
    try:
        source = bundle.read_manifest(run_dir).get("slice_of")
    except UserError:
        return None
    return source if isinstance(source, dict) else None


def load_runlog(run_dir: Path, skip_bad_lines: bool) -> tuple[RunlogRead, list[str]]:
    require_run_dir(run_dir)
    read = read_runlog(run_dir, skip_bad_lines=skip_bad_lines)
    warnings = []
    for b in read.bad_lines:
        kind = "torn last line (a crash cut it short), ignored" if b.torn_tail else f"skipped: {b.reason}"
        warnings.append(f"runlog.ndjson:{b.line_no}: {kind}")
    # A slice's runlog holds the events stamped inside its window: it starts past seq 0, and
    # events are stamped by their sender before the runlog orders them, so seq skips inside too.
    gaps = [] if slice_of(run_dir) else read.seq_gaps
    for expected, found in gaps:
        warnings.append(f"runlog.ndjson: seq jumps from {expected - 1} to {found}")
    return read, warnings


def run_audit(run_dir: Path, threshold_s: float, skip_bad_lines: bool) -> dict[str, Any]:
    read, warnings = load_runlog(run_dir, skip_bad_lines)
    result = audit(read.records, threshold_s)
    result = {"verdict": verdict(result.pop("pass")), **result}
    result["warnings"] = warnings
    result["run_dir"] = str(run_dir)
    return result


def render_audit(r: dict[str, Any]) -> str:
    lines = [w for w in r["warnings"]]
    lines.append(
        f"heartbeats: {r['heartbeats']}, intervals: {r['intervals']}, max gap: {r['max_gap_s']:.3f} s, "
        f"mean gap: {r['mean_gap_s'] if r['mean_gap_s'] is None else round(r['mean_gap_s'], 3)} s"
    )
    for g in r["gaps"]:
        lines.append(
            f"  gap {g['gap_s']:.3f} s between seq {g['start_seq']} and seq {g['end_seq']} ({g['end_type']}); "
            f"events between: {', '.join(g['events_between']) or 'none'}"
        )
    lines.append(f"{r['verdict']}: gaps_over_threshold={r['gaps_over_threshold']} (threshold {r['threshold_s']:g} s)")
    return "\n".join(lines)


def load_metrics(run_dir: Path) -> tuple[list[dict[str, Any]], dict[int, list[dict[str, Any]]], int]:
    mdir = run_dir / bundle.METRICS_DIR
    glob, bad = _read_ndjson(mdir / bundle.GLOBAL_METRICS)
    shards: dict[int, list[dict[str, Any]]] = {}
    numbered = [(shard_number(p), p) for p in mdir.glob("shard_*.ndjson")] if mdir.is_dir() else []
    for num, p in sorted((n, p) for n, p in numbered if n is not None):  # by number: shard_100 after shard_99
        shards[num], b = _read_ndjson(p)
        bad += b
    return glob, shards, bad


def run_latency_report(run_dir: Path, skip_bad_lines: bool, verify_totals: dict[str, Any] | None, gap_threshold_s: float = 2.0,
                       books: dict[str, Any] | None = None) -> dict[str, Any]:
    read, warnings = load_runlog(run_dir, skip_bad_lines)
    glob, shards, bad = load_metrics(run_dir)
    if bad:
        warnings.append(f"metrics: {bad} unreadable line(s) skipped")
    report = latency_report(read.records, glob, shards)
    cov = report["metrics_coverage"]
    said = f"; the runlog says {cov['frames_written']:,} frames were written" if cov["frames_written"] else ""
    if not glob:
        warnings.append(f"{bundle.METRICS_DIR}/{bundle.GLOBAL_METRICS} is missing or empty: no latency, queue-depth or loop-lag figures{said}")
    elif cov["complete"] is False:
        warnings.append(
            f"metrics cover {cov['frames_in_metrics']:,} of the {cov['frames_written']:,} frames run_stop says were written: "
            "the latency and queue figures describe part of the run (metrics lines lost or truncated)"
        )
    aud = audit(read.records, gap_threshold_s)
    report["heartbeat_audit"] = {k: aud[k] for k in ("threshold_s", "heartbeats", "max_gap_s", "gaps_over_threshold")}
    fatal_seq = next((r.seq for r in read.records if isinstance(r.event, ev.Fatal)), None)
    report.update(gates(aud, report, verify_totals, (run_dir / bundle.FATAL_JSON).exists(), slice_of(run_dir), fatal_seq, books))
    report["warnings"] = warnings
    # per-shard figures as the vocabulary's list of {"shard": N, ...} (the fold keys them by "N")
    lat = report["ws_rx_to_applied_ms"]
    lat["per_shard"] = shard_list(lat["per_shard"])
    report["reconnects"]["per_shard"] = shard_list(report["reconnects"]["per_shard"])
    report["disconnected"]["midrun"]["per_shard"] = shard_list(report["disconnected"]["midrun"]["per_shard"])
    report["drops"]["by_shard"] = shard_list({s: {"dropped_messages": n} for s, n in report["drops"]["by_shard"].items()})
    return report


def _fmt(v: Any, unit: str = "") -> str:
    """Fixed precision per unit: ms and s to 3 decimals (us), counts as integers."""
    if v is None:
        return "-"
    return f"{v:.3f}{unit}" if isinstance(v, float) else f"{v:,}{unit}"


def render_latency(r: dict[str, Any]) -> str:
    lat = r["ws_rx_to_applied_ms"]
    lines = [f"latency report for run {r['run_id']}: {r['frames_applied']:,} frames applied over {r['metrics_intervals']} metrics intervals"]
    lines.append(
        f"ws_rx_to_applied_ms: p50 {_fmt(lat['p50'], ' ms')}  p95 {_fmt(lat['p95'], ' ms')}  p99 {_fmt(lat['p99'], ' ms')}  "
        f"max {_fmt(lat['max'], ' ms')}  (n={lat['count']:,})"
    )
    for v in lat["per_shard"]:
        lines.append(f"  shard {v['shard']:02d}: p50 {_fmt(v['p50'])} p95 {_fmt(v['p95'])} p99 {_fmt(v['p99'])} max {_fmt(v['max'])} ms (n={v['count']:,})")
    st = r["ws_rx_to_applied_ms_steady"]
    lines.append(
        f"  steady state: p50 {_fmt(st['p50'], ' ms')}  p95 {_fmt(st['p95'], ' ms')}  p99 {_fmt(st['p99'], ' ms')}  "
        f"max {_fmt(st['max'], ' ms')}  (n={st['count']:,} over {st['intervals']} intervals; start-up excluded, ADR/0005)"
    )
    lines.append(f"  ({lat['method']})")
    for q, st in r["queue_depth"].items():
        lines.append(f"{q}: mean {_fmt(st['mean'])}  p99 {_fmt(st['p99'])}  max {_fmt(st['max'])} frames ({st['samples']} samples)")
    ll = r["loop_lag_ms"]
    lines.append(f"loop lag: mean {_fmt(ll['mean'], ' ms')}  p99 {_fmt(ll['p99'], ' ms')}  max {_fmt(ll['max'], ' ms')}")
    d = r["drops"]
    lines.append(f"drops: dropped_messages_total={d['dropped_messages_total']} in {d['intervals_with_drops']} interval(s); by queue {d['by_queue'] or '{}'}")
    rc = r["reconnects"]
    lines.append(f"reconnects: total={rc['total']} (planned refresh reconnects not counted: {rc['planned']}); causes {rc['causes'] or '{}'}")
    mid = r["disconnected"]["midrun"]
    lines.append(f"disconnected midrun: incidents={mid['incidents']}, total {mid['total_s']:.3f} s")
    lines.append("gates:")
    lines.extend(f"  {line}" for line in render_gates(r["gates"]))
    lines.append(f"verdict: {r['verdict']}")
    lines.extend(f"warning: {w}" for w in r["warnings"])
    return "\n".join(lines)


def render_gates(gates: dict[str, Any]) -> list[str]:
    """One line per gate: PASS, FAIL, n/a (does not apply, e.g. to a slice) or ---- (not checked)."""
    lines = []
    for name, g in gates.items():
        if g.get("applies") is False:
            mark = "n/a "
        else:
            mark = "PASS" if g["pass"] else ("FAIL" if g["pass"] is False else "----")
        lines.append(f"{mark}  {name:18s} {g['figure']}")
    return lines


def run_replay(run_dir: Path, until_seq: int | None, skip_bad_lines: bool) -> dict[str, Any]:
    read, warnings = load_runlog(run_dir, skip_bad_lines)
    state = fold(read.records, until_seq=until_seq)
    out = state.to_dict()
    out["missing_token_ids"] = state.missing_tokens()
    placed = fold_placement(read.records, until_seq=until_seq)
    placement = {**placed.to_dict(), "token_shard": placed.token_shard()}
    notes = []
    if any(v["market_events"] > v["frames"] for v in out["shards"]):
        notes.append(
            "market events count each message inside a frame: an initial dump (and any array frame) carries one "
            "book message per token, so a shard can show more market events than frames"
        )
    return {"state": out, "placement": placement, "warnings": warnings, "notes": notes}


def render_replay(r: dict[str, Any]) -> str:
    st = r["state"]
    lines = [w for w in r["warnings"]]
    lines.append(f"run {st['run_id']} ({st['mode']}): phase {st['phase']} at seq {st['last_seq']}")
    if st["fatal"]:
        lines.append(f"fatal: {st['fatal']['reason']} at seq {st['fatal']['seq']}: {st['fatal']['message']}")
    lines.append(
        f"universe: {st['markets']} markets, {st['universe_tokens']} tokens, coverage {st['coverage_pct']}%, "
        f"missing {st['missing_tokens']}, pending grace windows {len(st['pending_grace_windows'])}, "
        f"churn guards in a row {st['churn_guard_consecutive']}"
    )
    lines.append(f"heartbeats: {st['heartbeats']} (last seq {st['last_heartbeat']['seq']}); frames {st['frames_total']:,}, dropped {st['dropped_messages_total']}")
    pl = r["placement"]
    if pl["assignments"]:  # runs before ADR/0007 recorded no placement events
        b = pl["balance"]
        lines.append(
            f"placement: {pl['markets']} markets on {pl['shards']} shards (min {pl['shards_min']}, cap {pl['cap_tokens']} tokens), "
            f"busiest {b['busiest_tokens']} tokens vs mean {b['mean_tokens']:g}, {pl['assignments']} assignments, "
            f"{pl['releases']} releases, opened mid-run: {', '.join(f'{s:02d}' for s in pl['opened_midrun']) or 'none'}"
        )
    for v in st["shards"]:
        lines.append(
            f"  shard {v['shard']:02d}: {len(v['tokens'])} tokens, {'connected' if v['connected'] else 'disconnected'}, "
            f"confirmed={v['confirmed']}, frames {v['frames']:,}, market events {v['market_events']:,}, "
            f"reconnects {v['reconnects_unplanned']} (+{v['reconnects_planned']} planned), last cause {v['last_disconnect_cause']}"
        )
    lines.extend(f"note: {n}" for n in r.get("notes", []))
    return "\n".join(lines)
