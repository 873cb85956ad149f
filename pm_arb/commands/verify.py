"""capture-verify: every record's checksum, seq continuity, idx agreement and torn tails, and
whether the files still hold every frame the runlog says was written (folds/written.py)."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from pm_arb.store.layout import CAPTURE_DIR, MANIFEST, ManifestError, read_manifest, require_run_dir
from pm_arb.errors import UserError
from pm_arb.events.folds.written import written_floor
from pm_arb.events.runlog_file import read_runlog
from pm_arb.cli.progress import Progress
from pm_arb.store.frames_format import FILE_HEADER_SIZE, FRAMES_MAGIC, IDX_ENTRY_SIZE, RECORD_OVERHEAD, HeaderProblem, check_file_header
from pm_arb.store.scan import ScanSummary, scan
from pm_arb.store.shard_files import (
    close_view,
    frames_path,
    idx_entry_for,
    idx_path,
    idx_vouched_until,
    load_idx,
    map_file,
    RepairFailed,
    repair_shard,
    shard_numbers,
)
from pm_arb.store.run_lock import capture_holds, held_for_repair

MAX_LISTED_DEFECTS = 50
DEFECT_TOTALS = ("crc_mismatch", "seq_gaps", "idx_mismatch", "torn_tail_bytes", "frames_missing", "header_damage", "file_errors")

MISSING_FRAMES_HINT = (
    "no capture/*.frames in {run_dir}: confirm the run dir path (the one `pm_arb capture` printed) "
    "and that capture/*.frames exists"
)


def runlog_floor(run_dir: Path) -> dict[str, Any]:
    """What the runlog says each shard's file must hold; unchecked (with the reason) for a
    slice, whose runlog is a window of its source's, or when there is no readable runlog."""
    try:
        manifest = read_manifest(run_dir)
    except ManifestError as exc:
        return {"checked": False, "reason": f"{MANIFEST} {exc.problem}, so whether this run is a slice is unknown", "shards": {}}
    if "slice_of" in manifest:
        return {"checked": False, "reason": "a slice holds part of its source run's frames", "shards": {}}
    try:
        read = read_runlog(run_dir, skip_bad_lines=True)
    except UserError as exc:
        return {"checked": False, "reason": str(exc), "shards": {}}
    floor = written_floor(read.records)
    # A line lost there may be the run_stop that holds the writer's counts: say the check used the rest.
    floor["skipped_lines"] = [{"line_no": b.line_no, "reason": b.reason, "torn_tail": b.torn_tail} for b in read.bad_lines]
    return floor


def verify_shard(
    capture_dir: Path, shard: int, progress: Progress | None = None, floor: dict[str, Any] | None = None, live: bool = False
) -> dict[str, Any]:
    result, last_damaged_seq = _verify_shard_file(capture_dir, shard, progress, live)
    result["runlog_frames_at_least"] = floor["frames_at_least"] if floor else None
    if not floor:
        return result
    # How far the file reaches: its last record's seq, damaged or not; a hole before it is a
    # seq gap, records lost past it are frames_missing.
    reach = max([s + 1 for s in (result["last_seq"], last_damaged_seq) if s is not None], default=0)
    missing = floor["frames_at_least"] - reach
    if missing > 0:
        result["frames_missing"] = missing
        if result["file_error"] and reach == 0:
            result["file_error"] += (
                f"; the runlog ({floor['source']}, seq {floor['runlog_seq']}) says at least "
                f"{floor['frames_at_least']:,} frames were written to it"
            )
        elif len(result["defects"]) < MAX_LISTED_DEFECTS:
            result["defects"].append({"kind": "frames_missing", "frames": missing, "file_holds_seq_below": reach,
                                      "runlog_frames_at_least": floor["frames_at_least"],
                                      "runlog_seq": floor["runlog_seq"], "source": floor["source"]})
    return result


def _verify_shard_file(capture_dir: Path, shard: int, progress: Progress | None, live: bool = False) -> tuple[dict[str, Any], int | None]:
    """The file's own checks; also the seq of its last damaged record (None if none).

    On a live run (a capture holds it), the tail being written and the idx entries not yet
    written for it are expected, and counted apart instead of as defects.
    """
    fpath = frames_path(capture_dir, shard)
    result: dict[str, Any] = {
        "shard": shard,
        "frames": 0,
        "bytes": 0,
        "crc_mismatch": 0,
        "seq_gaps": 0,
        "idx_mismatch": 0,
        "idx_entries": 0,
        "torn_tail_bytes": 0,
        "frames_missing": 0,
        "header_damage": 0,
        "first_seq": None,
        "last_seq": None,
        "file_error": None,
        "defects": [],
    }
    if live:
        result["growing_tail_bytes"] = 0
        result["frames_not_yet_indexed"] = 0
    defects: list[dict[str, Any]] = result["defects"]

    def defect(**kw: Any) -> None:
        if len(defects) < MAX_LISTED_DEFECTS:
            defects.append(kw)

    # The idx before the frames: its entries are written after their records, so read in this
    # order they can only lag the frames, even while a capture appends to both.
    idx_file = load_idx(idx_path(capture_dir, shard), shard)
    idx_entries, idx_problem = idx_file.entries, idx_file.problem
    try:
        buf = map_file(fpath)
    except OSError as exc:
        result["file_error"] = f"{fpath.name} is missing" if exc.errno == errno.ENOENT else f"cannot read {fpath.name}: {exc.strerror}"
        return result, None
    try:
        try:
            header_damage = check_file_header(bytes(buf[:FILE_HEADER_SIZE]), FRAMES_MAGIC, fpath.name, shard)
        except HeaderProblem as exc:
            result["file_error"] = str(exc)
            return result, None
        for damage in (header_damage, idx_file.header_damage):
            if damage:
                result["header_damage"] += 1
                defect(kind="header_damage", reason=damage + "; the records behind it were still checked")
        by_offset = {e.offset: e for e in idx_entries}
        summary = ScanSummary()
        records = []
        last_offset_done = FILE_HEADER_SIZE
        for rec in scan(buf, summary, idx_vouched_until(idx_entries)):
            records.append(idx_entry_for(rec))
            if progress is not None:
                progress.update(rec.offset - last_offset_done + RECORD_OVERHEAD + len(rec.payload))
                last_offset_done = rec.offset + RECORD_OVERHEAD + len(rec.payload)
        if progress is not None:
            progress.update(len(buf) - last_offset_done)
        result["frames"] = summary.records
        result["bytes"] = summary.payload_bytes
        if live:
            result["growing_tail_bytes"] = summary.torn_tail_bytes
        elif summary.torn_tail_bytes:
            result["torn_tail_bytes"] = summary.torn_tail_bytes
            defect(kind="torn_tail", offset=summary.end_of_valid, bytes=summary.torn_tail_bytes)
        # A damaged record is reported once, as a checksum mismatch, at the seq the idx or its
        # neighbours say it had; the hole it leaves is not counted again as a seq gap.
        corrupt_at = sorted(summary.corrupt, key=lambda c: c.offset)
        last_damaged_seq = None
        for region in corrupt_at:
            result["crc_mismatch"] += 1
            entry = by_offset.get(region.offset)
            seq = entry.seq if entry is not None else region.seq
            if seq is None:
                before = [r for r in records if r.offset < region.offset]
                seq = before[-1].seq + 1 if before else (records[0].seq - 1 if records else 0)
            defect(kind="crc_mismatch", offset=region.offset, bytes=region.length, seq=seq, reason=region.reason)
            last_damaged_seq = seq if last_damaged_seq is None else max(last_damaged_seq, seq)
        if records:
            # The span the file holds: a record written again out of place (a copy of seq 5 after
            # seq 639) is a seq gap, and must not make the file seem to end at seq 5.
            result["first_seq"] = min(r.seq for r in records)
            result["last_seq"] = max(r.seq for r in records)
        ci = 0
        for a, b in zip(records, records[1:]):
            while ci < len(corrupt_at) and corrupt_at[ci].offset < a.offset:
                ci += 1
            explained = ci < len(corrupt_at) and a.offset < corrupt_at[ci].offset < b.offset
            if b.seq != a.seq + 1 and not explained:
                result["seq_gaps"] += 1
                defect(kind="seq_gap", after_seq=a.seq, next_seq=b.seq)
        result["idx_entries"] = len(idx_entries)
        if idx_problem:
            result["idx_mismatch"] += max(1, len(records))
            defect(kind="idx_unreadable", reason=idx_problem)
        else:
            # Matched by offset, so one damaged record does not make every later entry "wrong".
            indexed_until = max(by_offset, default=-1)
            mismatched = 0
            for expected in records:
                got = by_offset.get(expected.offset)
                if got == expected:
                    continue
                if live and got is None and expected.offset > indexed_until:
                    result["frames_not_yet_indexed"] += 1
                    continue
                mismatched += 1
                if mismatched == 1:
                    fields = [f for f in expected._fields if got is None or getattr(got, f) != getattr(expected, f)]
                    defect(kind="idx_mismatch", seq=expected.seq, offset=expected.offset,
                           fields="no entry" if got is None else ",".join(fields))
            known = {r.offset for r in records} | {c.offset for c in corrupt_at}
            partial = (idx_file.size - FILE_HEADER_SIZE) % IDX_ENTRY_SIZE
            if partial and not live:
                defect(kind="idx_partial_entry", bytes=partial)
            # An entry for no record, or a second entry for one (a repeated entry): the idx holds
            # more than the frames do, so it needs rebuilding like one that lacks an entry.
            listed: set[int] = set()
            extra = 0
            out_of_order = 0
            prev_offset = -1
            for e in idx_entries:
                repeated = e.offset in listed
                extra += e.offset not in known or repeated
                # Readers bisect the idx by receive time: its entries must be in file order.
                out_of_order += not repeated and e.offset < prev_offset
                prev_offset = max(prev_offset, e.offset)
                listed.add(e.offset)
            if extra:
                defect(kind="idx_extra_entries", entries=extra)
            if out_of_order:
                defect(kind="idx_out_of_order", entries=out_of_order)
            result["idx_mismatch"] = mismatched + extra + out_of_order
    finally:
        close_view(buf)
    return result, last_damaged_seq


def verify_run(run_dir: Path, repair: bool = False, show_progress: bool | None = None) -> dict[str, Any]:
    require_run_dir(run_dir)
    capture_dir = run_dir / CAPTURE_DIR
    on_disk = shard_numbers(capture_dir) if capture_dir.is_dir() else []
    repairs: list[dict[str, Any]] = []
    if repair:
        with held_for_repair(run_dir):  # refuses a run a capture is writing: its tail is not torn
            repairs = _repair_shards(capture_dir, on_disk)
    live = not repair and capture_holds(run_dir)
    floor = (
        {"checked": False, "reason": "the run is live: a capture is still writing it", "shards": {}}
        if live else runlog_floor(run_dir)
    )
    shards = sorted(set(on_disk) | set(floor["shards"]))
    if not shards:
        raise UserError(MISSING_FRAMES_HINT.format(run_dir=run_dir), 2)
    total_bytes = sum(frames_path(capture_dir, s).stat().st_size for s in on_disk)
    progress = Progress(total_bytes, "verify", enabled=show_progress)
    per_shard = [verify_shard(capture_dir, s, progress, floor["shards"].get(s), live) for s in shards]
    progress.close()
    totals = {
        "shards": len(per_shard),
        "frames": sum(r["frames"] for r in per_shard),
        "bytes": sum(r["bytes"] for r in per_shard),
        "crc_mismatch": sum(r["crc_mismatch"] for r in per_shard),
        "seq_gaps": sum(r["seq_gaps"] for r in per_shard),
        "idx_mismatch": sum(r["idx_mismatch"] for r in per_shard),
        "torn_tail_bytes": sum(r["torn_tail_bytes"] for r in per_shard),
        "frames_missing": sum(r["frames_missing"] for r in per_shard),
        "header_damage": sum(r["header_damage"] for r in per_shard),
        "file_errors": sum(1 for r in per_shard if r["file_error"]),
    }
    ok = not any(totals[k] for k in DEFECT_TOTALS)
    runlog_check = {"checked": floor["checked"], "reason": floor["reason"]}
    if floor.get("skipped_lines"):
        runlog_check["skipped_lines"] = floor["skipped_lines"]
    out = {"run_dir": str(run_dir), "ok": ok, "live": live, "totals": totals, "runlog_check": runlog_check, "shards": per_shard}
    if live:
        totals["growing_tail_bytes"] = sum(r["growing_tail_bytes"] for r in per_shard)
        totals["frames_not_yet_indexed"] = sum(r["frames_not_yet_indexed"] for r in per_shard)
    if repair:
        out["repairs"] = repairs
    return out


def _repair_shards(capture_dir: Path, shards: list[int]) -> list[dict[str, Any]]:
    repairs: list[dict[str, Any]] = []
    for shard in shards:
        try:
            rep = repair_shard(frames_path(capture_dir, shard), idx_path(capture_dir, shard), shard)
        except HeaderProblem as exc:
            repairs.append({"shard": shard, "error": str(exc)})
            continue
        except RepairFailed as exc:
            done = f" (shards {', '.join(str(r['shard']) for r in repairs)} were repaired first)" if repairs else ""
            raise UserError(f"repair of shard {shard:02d} failed: {exc}{done}", 1) from None
        repairs.append(
            {
                "shard": shard,
                "torn_tail_bytes_truncated": rep.torn_tail_bytes_truncated,
                "idx_entries_rebuilt": rep.idx_entries_rebuilt,
                "idx_bytes_truncated": rep.idx_bytes_truncated,
                "corrupt_regions_left": rep.corrupt_regions,
                "idx_entries_kept_as_evidence": rep.idx_entries_kept_as_evidence,
            }
        )
    return repairs


def render_verify(result: dict[str, Any], summary_only: bool) -> str:
    t = result["totals"]
    lines = []
    if not summary_only:
        for r in result["shards"]:
            if r["file_error"]:
                lines.append(f"shard {r['shard']:02d}: ERROR {r['file_error']}")
                continue
            status = "ok" if not any(r[k] for k in DEFECT_TOTALS if k != "file_errors") else "DEFECTS"
            seqs = f"seq {r['first_seq']}..{r['last_seq']}" if r["first_seq"] is not None else "no frames"
            lines.append(
                f"shard {r['shard']:02d}: {status:7s} {r['frames']:>10,} frames {r['bytes']:>14,} B  {seqs}  "
                f"crc_mismatch={r['crc_mismatch']} seq_gaps={r['seq_gaps']} idx_mismatch={r['idx_mismatch']} "
                f"torn_tail={r['torn_tail_bytes']} B frames_missing={r['frames_missing']} header_damage={r['header_damage']}"
            )
            for d in r["defects"][:5]:
                lines.append("    " + ", ".join(f"{k}={v}" for k, v in d.items()))
    for rep in result.get("repairs", []):
        lines.append("repair shard {shard:02d}: ".format(shard=rep["shard"]) + ", ".join(f"{k}={v}" for k, v in rep.items() if k != "shard"))
    verdict = "PASS" if result["ok"] else "FAIL"
    lines.append(
        f"{verdict}: {t['shards']} shards, {t['frames']:,} frames, {t['bytes']:,} B payload; "
        f"crc_mismatch={t['crc_mismatch']} seq_gaps={t['seq_gaps']} idx_mismatch={t['idx_mismatch']} "
        f"torn_tail_bytes={t['torn_tail_bytes']} frames_missing={t['frames_missing']} header_damage={t['header_damage']} "
        f"file_errors={t['file_errors']}"
    )
    if result.get("live"):
        lines.append(
            f"note: the run is live (a capture is writing it): its growing tail ({t['growing_tail_bytes']:,} B, "
            f"{t['frames_not_yet_indexed']:,} frames not yet in the idx) is not counted as damage; verify again after it stops"
        )
    check = result.get("runlog_check", {})
    if check and not check["checked"]:
        lines.append(f"note: files not checked against the runlog's frame counts: {check['reason']}")
    skipped = check.get("skipped_lines") if check else None
    if skipped and check["checked"]:
        first = skipped[0]
        lines.append(f"note: the runlog's frame counts were read past {len(skipped)} unreadable line(s) of runlog.ndjson "
                     f"(line {first['line_no']}: {first['reason']}); a count on such a line was not checked")
    if t["frames_missing"]:
        lines.append(
            "hint: the runlog says more frames were written than the files hold: a file was deleted, truncated "
            "or replaced after the run; restore it from a copy (--repair cannot bring frames back)"
        )
    if any("not a crash tear" in d.get("reason", "") for r in result["shards"] for d in r["defects"]):
        lines.append(
            "hint: records the idx lists as written are cut short or damaged at the end of the file: lost after they were "
            "written (a cut copy, a full disk, power loss before fsync), not torn by a crash; --repair keeps them as "
            "evidence; restore the file from a copy"
        )
    if not result["ok"] and t["torn_tail_bytes"] and "repairs" not in result:
        lines.append("hint: a torn tail is what a crash leaves; `pm_arb capture-verify --repair` truncates it and rebuilds the idx")
    elif not result["ok"] and t["idx_mismatch"] and not t["crc_mismatch"] and "repairs" not in result:
        lines.append("hint: the idx disagrees with the frames; `pm_arb capture-verify --repair` rebuilds it from the frames")
    return "\n".join(lines)
