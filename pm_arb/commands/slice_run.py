"""capture-slice: cut a new, self-verifying run bundle out of a run, by receive time or by seq."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from pm_arb.bundle import CAPTURE_DIR, MANIFEST, METRICS_DIR, RUNLOG, read_manifest, require_run_dir, write_json
from pm_arb.errors import UserError
from pm_arb.events.folds.placement import token_shards_between
from pm_arb.events.runlog_file import read_runlog
from pm_arb.progress import Progress
from pm_arb.store.frames_format import HeaderProblem
from pm_arb.store.shard_files import ShardFileWriter, ShardReader, shard_numbers


def parse_time_ns(text: str, flag: str) -> int:
    """ISO-8601 (naive means UTC) or integer nanoseconds since the epoch."""
    s = text.strip()
    if s.lstrip("-").isdigit():
        return int(s)
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(
            f"invalid value {text!r} for {flag}: expected ISO-8601 (2026-11-24T13:00:00Z) or integer ns since the epoch", 2
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    delta = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def slice_run(
    run_dir: Path,
    out_dir: Path,
    from_wall: int | None = None,
    to_wall: int | None = None,
    from_seq: int | None = None,
    to_seq: int | None = None,
    shards: list[int] | None = None,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    require_run_dir(run_dir)
    by_time = from_wall is not None or to_wall is not None
    by_seq = from_seq is not None or to_seq is not None
    if by_time == by_seq:
        raise UserError("choose one range: --from-wall/--to-wall (receive time) or --from-seq/--to-seq (per-shard seq)", 2)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"--out {out_dir} exists and is not an empty directory: choose a new path (nothing was written)", 2)
    capture_dir = run_dir / CAPTURE_DIR
    available = shard_numbers(capture_dir) if capture_dir.is_dir() else []
    if not available:
        raise UserError(f"no capture/*.frames in {run_dir}: confirm the run dir path and that capture/*.frames exists", 2)
    chosen = [s for s in available if shards is None or s in shards]
    lo_w = from_wall if from_wall is not None else -(2**63)
    hi_w = to_wall if to_wall is not None else 2**63 - 1
    lo_s = from_seq if from_seq is not None else 0
    hi_s = to_seq if to_seq is not None else 2**64 - 1
    if lo_w > hi_w or lo_s > hi_s:
        raise UserError("the range is empty: its start is after its end", 2)
    out_capture = out_dir / CAPTURE_DIR
    out_capture.mkdir(parents=True, exist_ok=True)
    per_shard = []
    mono_lo, mono_hi = None, None
    readers = []
    try:
        for shard in chosen:
            readers.append(ShardReader(capture_dir, shard))
    except HeaderProblem as exc:
        for r in readers:
            r.close()
        raise UserError(f"cannot slice: {exc}", 1) from None
    total = sum(len(r.idx) for r in readers)
    progress = Progress(total, "slice", unit="frames", enabled=show_progress)
    for reader in readers:
        with reader:
            writer = _SliceShardWriter(out_capture, reader.shard)
            count = 0
            for entry in reader.idx:
                progress.update(1)
                inside = (lo_w <= entry.rx_wall_ns_utc <= hi_w) if by_time else (lo_s <= entry.seq <= hi_s)
                if not inside:
                    continue
                writer.add(reader.record_at(entry))
                count += 1
                mono_lo = entry.rx_mono_ns if mono_lo is None else min(mono_lo, entry.rx_mono_ns)
                mono_hi = entry.rx_mono_ns if mono_hi is None else max(mono_hi, entry.rx_mono_ns)
            first_last = writer.close()
            per_shard.append({"shard": reader.shard, "frames": count, "first_seq": first_last[0], "last_seq": first_last[1]})
    progress.close()
    events = _copy_window(run_dir / RUNLOG, out_dir / RUNLOG, by_time, lo_w, hi_w, mono_lo, mono_hi)
    metrics_dir = run_dir / METRICS_DIR
    if metrics_dir.is_dir():
        (out_dir / METRICS_DIR).mkdir(exist_ok=True)
        for p in sorted(metrics_dir.glob("*.ndjson")):
            _copy_window(p, out_dir / METRICS_DIR / p.name, by_time, lo_w, hi_w, mono_lo, mono_hi)
    source_manifest = read_manifest(run_dir)
    rng = {"from_wall_ns_utc": from_wall, "to_wall_ns_utc": to_wall} if by_time else {"from_seq": from_seq, "to_seq": to_seq}
    manifest = dict(source_manifest)
    manifest["slice_of"] = {"run_id": source_manifest.get("run_id"), "run_dir": str(run_dir.resolve()), "range": rng, "shards": chosen}
    if mono_lo is not None:  # the runlog window may not hold the placement events: name every token's shard here
        try:
            records = read_runlog(run_dir, skip_bad_lines=True).records
        except UserError:  # no readable runlog: the slice still holds every frame
            records = []
        manifest["slice_of"]["token_shard"] = token_shards_between(records, mono_lo, mono_hi)
    write_json(out_dir / MANIFEST, manifest)
    return {"out_dir": str(out_dir), "frames": sum(s["frames"] for s in per_shard), "runlog_events": events, "shards": per_shard, "range": rng}


class _SliceShardWriter:
    """Copies records with their original seq and timestamps; payload bytes untouched."""

    def __init__(self, capture_dir: Path, shard: int) -> None:
        self._writer = ShardFileWriter(capture_dir, shard)
        self._batch: list = []
        self.first_seq = None
        self.last_seq = None

    def add(self, rec) -> None:
        if self.first_seq is None:
            self.first_seq = rec.seq
            self._writer.next_seq = rec.seq
        if rec.seq != self._writer.next_seq + len(self._batch):
            self._flush()
            self._writer.next_seq = rec.seq
        self._batch.append((rec.rx_mono_ns, rec.rx_wall_ns_utc, rec.flags, rec.opcode, rec.payload))
        self.last_seq = rec.seq
        if len(self._batch) >= 4096:
            self._flush()

    def _flush(self) -> None:
        if self._batch:
            self._writer.append_batch(self._batch)
            self._batch = []

    def close(self) -> tuple[int | None, int | None]:
        self._flush()
        self._writer.fsync()
        self._writer.close()
        return self.first_seq, self.last_seq


def _copy_window(src: Path, dst: Path, by_time: bool, lo_w: int, hi_w: int, mono_lo, mono_hi) -> int:
    """Copy the NDJSON lines whose stamp falls inside the slice's window, verbatim."""
    if not src.is_file():
        return 0
    kept = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for line in fin:
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(obj, dict):
                continue
            if by_time:
                t = obj.get("wall_ns_utc")
                inside = isinstance(t, int) and lo_w <= t <= hi_w
            else:
                t = obj.get("mono_ns")
                inside = mono_lo is not None and isinstance(t, int) and mono_lo <= t <= mono_hi
            if inside:
                fout.write(line if line.endswith(b"\n") else line + b"\n")
                kept += 1
    return kept
