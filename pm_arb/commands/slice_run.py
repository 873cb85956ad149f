"""capture-slice: cut a new, self-verifying run bundle out of a run, by receive time or by seq."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from pm_arb.bundle import CAPTURE_DIR, MANIFEST, METRICS_DIR, RUNLOG, read_manifest, require_run_dir, write_json
from pm_arb.clock import wall_iso
from pm_arb.commands.time_input import TimeSpec, resolve
from pm_arb.errors import UserError
from pm_arb.progress import Progress
from pm_arb.store.frames_format import HeaderProblem
from pm_arb.store.shard_files import ShardFileWriter, ShardReader, shard_numbers


def slice_run(
    run_dir: Path,
    out_dir: Path,
    from_wall: TimeSpec | None = None,
    to_wall: TimeSpec | None = None,
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
    readers = []
    try:
        for shard in chosen:
            readers.append(ShardReader(capture_dir, shard))
    except HeaderProblem as exc:
        for r in readers:
            r.close()
        raise UserError(f"cannot slice: {exc}", 1) from None
    extent = run_extent(readers)
    if extent["first_wall_ns_utc"] is None:
        for r in readers:
            r.close()
        raise UserError(f"cannot slice: the chosen shards of {run_dir} hold no frames", 2)
    lo_w = resolve(from_wall, extent["first_wall_ns_utc"], extent["last_wall_ns_utc"]) if from_wall is not None else -(2**63)
    hi_w = resolve(to_wall, extent["first_wall_ns_utc"], extent["last_wall_ns_utc"]) if to_wall is not None else 2**63 - 1
    lo_s = from_seq if from_seq is not None else 0
    hi_s = to_seq if to_seq is not None else 2**64 - 1
    problem = None
    if lo_w > hi_w or lo_s > hi_s:
        problem = f"the range is empty: its start ({_show_bound(lo_w, lo_s, by_time)}) is after its end ({_show_bound(hi_w, hi_s, by_time)})"
    elif _misses(extent, by_time, lo_w, hi_w, lo_s, hi_s):
        problem = f"the window {_show_bound(lo_w, lo_s, by_time)} .. {_show_bound(hi_w, hi_s, by_time)} misses the run"
    if problem:
        for r in readers:
            r.close()
        raise UserError(f"{problem}; {describe_extent(extent)}; nothing was written", 2)
    out_capture = out_dir / CAPTURE_DIR
    out_capture.mkdir(parents=True, exist_ok=True)
    per_shard = []
    mono_lo, mono_hi = None, None
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
    if by_time:  # the window as resolved, beside what was typed
        rng = {
            "from_wall_ns_utc": lo_w if from_wall is not None else None,
            "to_wall_ns_utc": hi_w if to_wall is not None else None,
            "from_wall_utc": wall_iso(lo_w) if from_wall is not None else None,
            "to_wall_utc": wall_iso(hi_w) if to_wall is not None else None,
            "from_wall_input": from_wall.text if from_wall is not None else None,
            "to_wall_input": to_wall.text if to_wall is not None else None,
        }
    else:
        rng = {"from_seq": from_seq, "to_seq": to_seq}
    manifest = dict(source_manifest)
    manifest["slice_of"] = {"run_id": source_manifest.get("run_id"), "run_dir": str(run_dir.resolve()), "range": rng, "shards": chosen}
    write_json(out_dir / MANIFEST, manifest)
    return {"out_dir": str(out_dir), "frames": sum(s["frames"] for s in per_shard), "runlog_events": events, "shards": per_shard, "range": rng}


def run_extent(readers: list[ShardReader]) -> dict[str, Any]:
    """The receive-time span of the chosen shards and each one's seq range, from the idx alone."""
    walls = [(r.idx[0].rx_wall_ns_utc, r.idx[-1].rx_wall_ns_utc) for r in readers if len(r.idx)]
    return {
        "first_wall_ns_utc": min((w[0] for w in walls), default=None),
        "last_wall_ns_utc": max((w[1] for w in walls), default=None),
        "shards": {r.shard: (r.idx[0].seq, r.idx[-1].seq) for r in readers if len(r.idx)},
    }


def _misses(extent: dict[str, Any], by_time: bool, lo_w: int, hi_w: int, lo_s: int, hi_s: int) -> bool:
    if by_time:
        return hi_w < extent["first_wall_ns_utc"] or lo_w > extent["last_wall_ns_utc"]
    return all(hi_s < first or lo_s > last for first, last in extent["shards"].values())


def _show_bound(wall: int, seq: int, by_time: bool) -> str:
    if not by_time:
        return f"seq {seq}"
    if abs(wall) >= 2**62:  # an open end
        return "open"
    return wall_iso(wall) or "-"


def describe_extent(extent: dict[str, Any]) -> str:
    seqs = ", ".join(f"shard {s:02d} seq {a}..{b}" for s, (a, b) in sorted(extent["shards"].items()))
    return f"the run's frames were received {wall_iso(extent['first_wall_ns_utc'])} .. {wall_iso(extent['last_wall_ns_utc'])} ({seqs})"


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
