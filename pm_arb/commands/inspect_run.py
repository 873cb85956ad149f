"""capture-inspect: what is in a run bundle, how big, over which time, and the latest metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from pm_arb.store.layout import CAPTURE_DIR, METRICS_DIR, read_manifest, require_run_dir
from pm_arb.commands.reports import is_metrics_record
from pm_arb.clock import wall_iso
from pm_arb.metrics.units import human_bytes
from pm_arb.store.frames_format import HeaderProblem
from pm_arb.store.shard_files import ShardReader, shard_numbers
from pm_arb.wire.flags import FLAG_CONTROL

TAIL_LINES = 3


def _tail(path: Path, n: int) -> list[Any]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            lines = [ln for ln in fh.read().split(b"\n") if ln.strip()]
    except OSError as exc:
        return [f"<unreadable: {exc.strerror}>"]
    out: list[Any] = []
    for ln in lines[-n:]:
        try:
            rec = orjson.loads(ln)
        except orjson.JSONDecodeError:
            rec = None
        # Shown as text when it is not a metrics record (not JSON, or figures of another type).
        out.append(rec if is_metrics_record(rec) else ln.decode("utf-8", "replace"))
    return out


def inspect_run(run_dir: Path) -> dict[str, Any]:
    require_run_dir(run_dir)
    files = []
    total = 0
    for p in sorted(run_dir.rglob("*")):
        if p.is_file():
            size = p.stat().st_size
            total += size
            files.append({"path": str(p.relative_to(run_dir)), "bytes": size})
    shards = []
    capture_dir = run_dir / CAPTURE_DIR
    for shard in shard_numbers(capture_dir) if capture_dir.is_dir() else []:
        info: dict[str, Any] = {"shard": shard}
        try:
            with ShardReader(capture_dir, shard) as reader:
                if reader.header_damage:
                    info["header_damage"] = reader.header_damage
                entries = reader.idx
                info["frames"] = len(entries)
                info["payload_bytes"] = sum(e.payload_len for e in entries)
                info["first_rx_wall_ns_utc"] = entries[0].rx_wall_ns_utc if entries else None
                info["last_rx_wall_ns_utc"] = entries[-1].rx_wall_ns_utc if entries else None
                info["first_rx_utc"] = wall_iso(info["first_rx_wall_ns_utc"])
                info["last_rx_utc"] = wall_iso(info["last_rx_wall_ns_utc"])
                info["control_frames"] = sum(1 for e in entries if e.flags & FLAG_CONTROL)
        except (HeaderProblem, OSError) as exc:
            info["error"] = str(exc)
        shards.append(info)
    metrics = {}
    mdir = run_dir / METRICS_DIR
    if mdir.is_dir():
        for p in sorted(mdir.glob("*.ndjson")):
            metrics[p.name] = _tail(p, TAIL_LINES)
    manifest = read_manifest(run_dir)
    return {
        "run_dir": str(run_dir),
        "run_id": manifest.get("run_id"),
        "mode": manifest.get("mode"),
        "total_bytes": total,
        "files": files,
        "shards": shards,
        "frames_total": sum(s.get("frames", 0) for s in shards),
        "metrics_tail": metrics,
        "fatal": (run_dir / "fatal.json").exists(),
    }


def render_inspect(r: dict[str, Any]) -> str:
    lines = [f"run {r['run_id'] or '?'} ({r['mode'] or 'unknown mode'}) at {r['run_dir']}: {human_bytes(r['total_bytes'])} in {len(r['files'])} files"]
    if r["fatal"]:
        lines.append("FATAL run: see fatal.json, missing_tokens.json and runlog.ndjson")
    lines.append("files:")
    for f in r["files"]:
        lines.append(f"  {f['bytes']:>14,} B  {f['path']}")
    lines.append("shards:")
    for s in r["shards"]:
        if "error" in s:
            lines.append(f"  shard {s['shard']:02d}: ERROR {s['error']}")
            continue
        lines.append(
            f"  shard {s['shard']:02d}: {s['frames']:>10,} frames ({s['control_frames']:,} control), "
            f"{human_bytes(s['payload_bytes'])} payload, rx {s['first_rx_utc'] or '-'} .. {s['last_rx_utc'] or '-'}"
        )
        if "header_damage" in s:
            lines.append(f"    {s['header_damage']}; its records were still read")
    lines.append(f"frames total: {r['frames_total']:,}")
    for name, tail in r["metrics_tail"].items():
        lines.append(f"metrics/{name} (last {len(tail)}):")
        for rec in tail:
            if isinstance(rec, dict):
                lat = rec.get("ws_rx_to_applied_ms") or {}
                lines.append(
                    f"  {wall_iso(rec.get('wall_ns_utc'))} frames={rec.get('frames')} frames_total={rec.get('frames_total')} "
                    f"dropped={rec.get('dropped')} write_q_depth={rec.get('write_q_depth')} "
                    f"p99={lat.get('p99')} ms"
                )
            else:
                lines.append(f"  {rec}")
    return "\n".join(lines)
