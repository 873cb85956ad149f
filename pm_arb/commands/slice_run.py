"""capture-slice: cut a new, self-verifying run bundle out of a run, by receive time or by seq."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import orjson

from pm_arb.store.layout import CAPTURE_DIR, MANIFEST, METRICS_DIR, RUNLOG, read_manifest, require_outside, require_run_dir, write_json
from pm_arb.clock import wall_iso
from pm_arb.commands.time_input import I64_MAX, I64_MIN, TimeSpec, resolve
from pm_arb.errors import UserError
from pm_arb.events.folds.placement import token_shards_between
from pm_arb.events.runlog_file import read_runlog
from pm_arb.reader import open_run
from pm_arb.cli.progress import Progress
from pm_arb.store.frames_format import HeaderProblem
from pm_arb.store.shard_files import ShardFileWriter, ShardReader, shard_numbers


U64_MAX = 2**64 - 1  # the range of a record's seq


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
    """Everything is checked before the first byte is written, and the bundle is built in a temp
    dir beside --out and renamed at the end: a failed slice leaves nothing behind."""
    require_run_dir(run_dir)
    by_time = from_wall is not None or to_wall is not None
    by_seq = from_seq is not None or to_seq is not None
    if by_time == by_seq:
        raise UserError("choose one range: --from-wall/--to-wall (receive time) or --from-seq/--to-seq (per-shard seq)", 2)
    for flag, value, lo, hi in (("--from-seq", from_seq, 0, U64_MAX), ("--to-seq", to_seq, 0, U64_MAX)):
        if value is not None and not lo <= value <= hi:
            raise UserError(f"invalid value {value} for {flag}: expected {lo} to {hi}; nothing was written", 2)
    require_outside(run_dir, out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"--out {out_dir} exists and is not an empty directory: choose a new path (nothing was written)", 2)
    capture_dir = run_dir / CAPTURE_DIR
    available = shard_numbers(capture_dir) if capture_dir.is_dir() else []
    if not available:
        raise UserError(f"no capture/*.frames in {run_dir}: confirm the run dir path and that capture/*.frames exists", 2)
    unknown = sorted(set(shards or []) - set(available))
    if unknown:
        raise UserError(
            f"no shard {', '.join(map(str, unknown))} in {run_dir} (it has shards {', '.join(map(str, available))}); "
            "nothing was written", 2
        )
    chosen = [s for s in available if shards is None or s in shards]
    source_manifest = read_manifest(run_dir)
    readers: list[ShardReader] = []
    try:
        for shard in chosen:
            readers.append(ShardReader(capture_dir, shard))
    except HeaderProblem as exc:
        for r in readers:
            r.close()
        raise UserError(f"cannot slice: {exc}", 1) from None
    try:
        extent = run_extent(readers)
        (lo_w, hi_w), (lo_s, hi_s) = _window(extent, from_wall, to_wall, from_seq, to_seq)
    except UserError:
        for r in readers:
            r.close()
        raise
    warnings = [f"{r.header_damage}; its records were still read and copied" for r in readers if r.header_damage]
    if shards is None:  # a whole-run slice of a run that lost a shard's file says so, as books and export do
        warnings += _missing_shards(run_dir)
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
    with _StagedDir(out_dir) as staging:
        try:
            per_shard, events, (mono_lo, mono_hi) = _write_slice(
                run_dir, staging.path, readers, by_time, (lo_w, hi_w), (lo_s, hi_s), show_progress
            )
        finally:
            for r in readers:
                r.close()
        frames = sum(s["frames"] for s in per_shard)
        if frames == 0:  # a window inside the run that falls between frames
            raise UserError(f"the range selects no frames ({describe_extent(extent)}); nothing was written", 1)
        manifest = dict(source_manifest)
        manifest["slice_of"] = {"run_id": source_manifest.get("run_id"), "run_dir": str(run_dir.resolve()), "range": rng, "shards": chosen}
        # The runlog window may not hold the placement events: name every token's shard here.
        try:
            records = read_runlog(run_dir, skip_bad_lines=True).records
        except UserError:  # no readable runlog: the slice still holds every frame
            records = []
        manifest["slice_of"]["token_shard"] = token_shards_between(records, mono_lo, mono_hi)
        write_json(staging.path / MANIFEST, manifest)
        staging.commit()
    return {"out_dir": str(out_dir), "frames": frames, "runlog_events": events, "shards": per_shard, "range": rng, "warnings": warnings}


def _write_slice(run_dir, out_dir, readers, by_time, wall_range, seq_range, show_progress) -> tuple[list[dict[str, Any]], int, tuple[int | None, int | None]]:
    lo_w, hi_w = wall_range
    lo_s, hi_s = seq_range
    out_capture = out_dir / CAPTURE_DIR
    out_capture.mkdir()
    per_shard = []
    mono_lo, mono_hi = None, None
    progress = Progress(sum(len(r.idx) for r in readers), "slice", unit="frames", enabled=show_progress)
    for reader in readers:
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
    return per_shard, events, (mono_lo, mono_hi)


def run_extent(readers: list[ShardReader]) -> dict[str, Any]:
    """What the chosen shards hold: each one's seq range and receive-time span, from the idx."""
    shards = {}
    for r in readers:
        e = r.idx
        shards[r.shard] = (e[0].seq, e[-1].seq, min(x.rx_wall_ns_utc for x in e), max(x.rx_wall_ns_utc for x in e)) if e else None
    spans = [v for v in shards.values() if v]
    return {
        "first_wall_ns_utc": min((v[2] for v in spans), default=None),
        "last_wall_ns_utc": max((v[3] for v in spans), default=None),
        "shards": shards,
    }


def wall_extent(run_dir: Path) -> tuple[int | None, int | None]:
    """The receive times of a run's first and last frame over every shard (what +/- offsets count from)."""
    capture_dir = run_dir / CAPTURE_DIR
    readers = []
    try:
        for shard in shard_numbers(capture_dir) if capture_dir.is_dir() else []:
            readers.append(ShardReader(capture_dir, shard))
        extent = run_extent(readers)
    except HeaderProblem as exc:
        raise UserError(f"cannot read the run's receive times: {exc}", 1) from None
    finally:
        for r in readers:
            r.close()
    return extent["first_wall_ns_utc"], extent["last_wall_ns_utc"]


def describe_extent(extent: dict[str, Any]) -> str:
    """What the chosen shards hold, so the user can pick a range that selects something."""
    parts = []
    for shard, v in sorted(extent["shards"].items()):
        if v is None:
            parts.append(f"shard {shard} holds no frames")
        else:
            parts.append(f"shard {shard} holds seq {v[0]}..{v[1]}, received {wall_iso(v[2])} .. {wall_iso(v[3])}")
    return "; ".join(parts)


def _window(extent, from_wall, to_wall, from_seq, to_seq) -> tuple[tuple[int, int], tuple[int, int]]:
    """The resolved receive-time and seq bounds; refuses a range that is empty or misses the run."""
    by_time = from_wall is not None or to_wall is not None
    first, last = extent["first_wall_ns_utc"], extent["last_wall_ns_utc"]
    if first is None:
        raise UserError(f"the range selects no frames ({describe_extent(extent)}); nothing was written", 1)
    lo_w = resolve(from_wall, first, last) if from_wall is not None else I64_MIN
    hi_w = resolve(to_wall, first, last) if to_wall is not None else I64_MAX
    for flag, value in (("--from-wall", lo_w), ("--to-wall", hi_w)):
        if not I64_MIN <= value <= I64_MAX:
            raise UserError(f"invalid value for {flag}: it resolves outside the signed 64-bit ns receive times (years 1677 to 2262); nothing was written", 2)
    lo_s = from_seq if from_seq is not None else 0
    hi_s = to_seq if to_seq is not None else U64_MAX
    if lo_w > hi_w or lo_s > hi_s:
        shown = f"{wall_iso(lo_w)} .. {wall_iso(hi_w)}" if by_time else f"seq {lo_s} .. {hi_s}"
        raise UserError(f"the range is empty: its start is after its end ({shown}); nothing was written", 2)
    spans = [v for v in extent["shards"].values() if v]
    if by_time:
        misses = hi_w < first or lo_w > last
        shown = f"{wall_iso(lo_w) if from_wall is not None else 'start'} .. {wall_iso(hi_w) if to_wall is not None else 'end'}"
    else:
        misses = all(hi_s < v[0] or lo_s > v[1] for v in spans)
        shown = f"seq {lo_s} .. {hi_s}"
    if misses:
        raise UserError(f"the range selects no frames ({describe_extent(extent)}): the window {shown} misses the run; nothing was written", 1)
    return (lo_w, hi_w), (lo_s, hi_s)


class _StagedDir:
    """A temp dir beside `target`, renamed onto it by commit(); removed, with any parent dirs it
    had to create, when the block ends without a commit."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.path = target.parent / f".{target.name}.partial-{os.getpid()}"
        self._made_parents: list[Path] = []
        self._committed = False

    def __enter__(self) -> "_StagedDir":
        missing = []
        parent = self.target.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for p in reversed(missing):
            try:
                p.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                self._remove_parents()
                raise UserError(f"cannot create {p}: {exc.strerror}; choose another --out (nothing was written)", 2) from None
            self._made_parents.append(p)
        try:
            self.path.mkdir()
        except OSError as exc:
            self._remove_parents()
            raise UserError(f"cannot create {self.path}: {exc.strerror}; choose another --out (nothing was written)", 2) from None
        return self

    def commit(self) -> None:
        os.rename(self.path, self.target)  # onto a missing or empty dir, atomically
        self._committed = True

    def __exit__(self, *exc) -> None:
        if not self._committed:
            shutil.rmtree(self.path, ignore_errors=True)
            self._remove_parents()

    def _remove_parents(self) -> None:
        for p in reversed(self._made_parents):
            try:
                p.rmdir()
            except OSError:
                pass


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


def _missing_shards(run_dir: Path) -> list[str]:
    try:
        return open_run(run_dir).missing_shard_warnings()
    except UserError:  # a runlog unreadable without --skip-bad-lines: the slice copies it and verify names it
        return []

