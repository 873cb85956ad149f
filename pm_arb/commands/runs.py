"""`pm_arb runs`: the runs under the data dir, one line each, from their manifests, runlog tails
and the verdict capture-check last recorded (check.json)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

from pm_arb.store import layout as bundle
from pm_arb.clock import wall_iso
from pm_arb.commands.run_dir import run_dirs
from pm_arb.store.vocabulary import SCHEMA_VERSION
from pm_arb.errors import UserError
from pm_arb.metrics.units import human_bytes

CHECK_JSON = "check.json"
RUNLOG_TAIL_BYTES = 256 * 1024  # a run_stop line with 16 shards is ~1 KiB; heartbeats arrive every second


def run_mode(manifest: dict[str, Any]) -> str | None:
    """offline / sim / online. Runs made before the sim label existed say `online` and carry a `sim` section."""
    mode = manifest.get("mode")
    if mode == "online" and isinstance(manifest.get("sim"), dict):
        return "sim"
    return mode


def _runlog_tail(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / bundle.RUNLOG
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - RUNLOG_TAIL_BYTES))
            data = fh.read()
    except OSError:
        return []
    out = []
    for line in data.split(b"\n")[1 if size > RUNLOG_TAIL_BYTES else 0 :]:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def read_check(run_dir: Path) -> dict[str, Any] | None:
    try:
        doc = orjson.loads((run_dir / CHECK_JSON).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def describe_run(run_dir: Path) -> dict[str, Any]:
    try:
        manifest = bundle.read_manifest(run_dir)
    except UserError:
        manifest = {}
    tail = _runlog_tail(run_dir)
    stop = next((r for r in reversed(tail) if r.get("type") == "run_stop"), None)
    beat = next((r for r in reversed(tail) if r.get("type") == "heartbeat"), None)
    started = manifest.get("started_wall_ns_utc")
    if stop is not None:
        duration_s, frames = stop.get("duration_seconds"), stop.get("frames_total")
    else:
        last_wall = tail[-1].get("wall_ns_utc") if tail else None
        duration_s = (last_wall - started) / 1e9 if isinstance(last_wall, int) and isinstance(started, int) else None
        frames = beat.get("frames_total") if beat else None
    if (run_dir / bundle.FATAL_JSON).exists():
        state = "fatal"
    elif stop is not None:
        state = "stopped"
    else:
        state = "no run_stop"  # still running, or killed from outside
    check = read_check(run_dir)
    return {
        "run_id": run_dir.name,
        "run_dir": str(run_dir),
        "mode": run_mode(manifest),
        "started_wall_ns_utc": started if isinstance(started, int) else None,
        "started_utc": wall_iso(started) if isinstance(started, int) else None,
        "duration_s": round(duration_s, 3) if isinstance(duration_s, (int, float)) else None,
        "frames": frames,
        "disk_bytes": bundle.dir_bytes(run_dir),
        "state": state,
        "check": {"verdict": check.get("verdict"), "checked_utc": check.get("checked_utc")} if check else None,
    }


def list_runs(data_dir: Path) -> dict[str, Any]:
    runs = [describe_run(p) for p in run_dirs(data_dir)]
    return {"data_dir": str(data_dir), "runs_dir": str(bundle.runs_root(data_dir)), "runs": runs}


def render_runs(result: dict[str, Any]) -> str:
    runs = result["runs"]
    if not runs:
        return f"no runs under {result['runs_dir']}; start one with `pm_arb capture --sim --duration-seconds 20`"
    width = max(len("run id"), *(len(r["run_id"]) for r in runs))
    lines = [f"{'run id':<{width}}  {'mode':<7}  {'started (UTC)':<24}  {'duration':>10}  {'frames':>12}  {'size':>10}  {'state':<11}  check"]
    for r in runs:
        dur = "-" if r["duration_s"] is None else f"{r['duration_s']:.1f} s"
        frames = "-" if r["frames"] is None else f"{r['frames']:,}"
        started = (r["started_utc"] or "-")[:23]
        lines.append(
            f"{r['run_id']:<{width}}  {r['mode'] or '-':<7}  {started:<24}  {dur:>10}  {frames:>12}  "
            f"{human_bytes(r['disk_bytes']):>10}  {r['state']:<11}  {(r['check'] or {}).get('verdict') or 'not checked'}"
        )
    lines.append(f"{len(runs)} run(s) under {result['runs_dir']}; pass a run id or `latest` as --run-dir")
    return "\n".join(lines)


def record_check(run_dir: Path, report: dict[str, Any]) -> str | None:
    """Keep capture-check's verdict in the run dir for `pm_arb runs`; a read-only run dir is no error."""
    doc = {
        "schema_version": SCHEMA_VERSION,
        "verdict": report["verdict"],
        "checked_wall_ns_utc": time.time_ns(),
        "gates": {name: g["pass"] for name, g in report["gates"].items()},
    }
    doc["checked_utc"] = wall_iso(doc["checked_wall_ns_utc"])
    try:
        bundle.write_json(run_dir / CHECK_JSON, doc)
    except OSError as exc:
        return f"verdict not recorded in {run_dir / CHECK_JSON} ({exc.strerror}); `pm_arb runs` will show it as not checked"
    return None


def shards_without_tokens(manifest: dict[str, Any]) -> list[int]:
    """Shards the universe at start left empty: no connection, no files (few markets, many shards)."""
    counts = (manifest.get("universe") or {}).get("shard_token_counts") or {}
    return sorted(int(s) for s, n in counts.items() if str(s).isascii() and str(s).isdigit() and n == 0)


def empty_shards_note(manifest: dict[str, Any]) -> str | None:
    empty = shards_without_tokens(manifest)
    if not empty:
        return None
    names = ", ".join(f"{s:02d}" for s in empty)
    configured = (manifest.get("config") or {}).get("ws_shards")
    of = f" of the {configured} configured" if configured else ""
    return (f"shard(s) {names}{of} had no tokens at start (manifest universe.shard_token_counts): "
            "no connection and no files, so they are not counted here")
