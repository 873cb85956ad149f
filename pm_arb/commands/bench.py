"""capture-bench: the offline pipeline flat out, against bare append loops on the same bytes.

Both are measured in the same process, on the same machine, in the same run, so the ratio is
meaningful where absolute numbers are not.
"""

from __future__ import annotations

import dataclasses
import math
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pm_arb import bundle
from pm_arb.commands.reports import run_latency_report
from pm_arb.commands.verify import verify_run
from pm_arb.config import Config
from pm_arb.events import types as ev
from pm_arb.events.runlog_file import read_runlog
from pm_arb.fixtures_io import load_fixture_set
from pm_arb.progress import Progress
from pm_arb.run_capture import run_capture
from pm_arb.store.frames_format import encode_record
from pm_arb.store.shard_files import ShardReader, shard_numbers


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _bare_loops(payloads: list[bytes], out_dir: Path, progress: Progress) -> dict[str, Any]:
    """Two baselines on the same payloads: a plain buffered append, and append with our record
    header (both timestamps, seq) and xxh3_64 checksum, written in 1024-frame batches."""
    n = len(payloads)
    nbytes = sum(len(p) for p in payloads)
    plain = out_dir / "bare_plain.bin"
    t0 = time.perf_counter()
    with open(plain, "wb") as fh:
        write = fh.write
        for p in payloads:
            write(p)
        fh.flush()
    t_plain = time.perf_counter() - t0
    progress.update(n)
    framed = out_dir / "bare_framed.bin"
    t0 = time.perf_counter()
    fd = os.open(framed, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        mono = time.monotonic_ns
        wall = time.time_ns
        for start in range(0, n, 1024):
            parts = []
            for seq in range(start, min(n, start + 1024)):
                parts.extend(encode_record(seq, mono(), wall(), 0, 1, payloads[seq]))
            os.write(fd, b"".join(parts))
    finally:
        os.close(fd)
    t_framed = time.perf_counter() - t0
    progress.update(n)
    return {
        "frames": n,
        "bytes": nbytes,
        "plain_append": {"seconds": round(t_plain, 4), "frames_per_s": round(n / t_plain), "mb_per_s": round(nbytes / t_plain / 1e6, 1)},
        "checksummed_append": {"seconds": round(t_framed, 4), "frames_per_s": round(n / t_framed), "mb_per_s": round(nbytes / t_framed / 1e6, 1)},
    }


def run_bench(frames: int, shards: int, fixtures: Path | None, keep: bool, show_progress: bool | None = None) -> dict[str, Any]:
    fixture = load_fixture_set(fixtures)
    per_lap = max(1, len(fixture.frames))
    repeat = max(1, math.ceil(frames / per_lap))
    tmp = Path(tempfile.mkdtemp(prefix="pm_arb_bench_"))
    try:
        config = dataclasses.replace(
            Config(),
            offline=True,
            offline_speed=0.0,
            ws_shards=shards,
            data_dir=str(tmp / "data"),
            fixtures=str(fixture.path),
            capture_confirm_timeout_seconds=120.0,
        )
        rss_before = _peak_rss_mb()
        t0 = time.perf_counter()
        code, run_dir, last = run_capture(config, "bench", "offline", fixture=fixture, offline_repeat=repeat, status=show_progress)
        wall_s = time.perf_counter() - t0
        rss_pipeline = _peak_rss_mb()
        recs = read_runlog(run_dir).records
        start = next(r.mono_ns for r in recs if isinstance(r.event, ev.RunStart))
        stop = next((r.mono_ns for r in recs if isinstance(r.event, ev.RunStop)), recs[-1].mono_ns)
        pipeline_s = (stop - start) / 1e9
        verify = verify_run(run_dir, show_progress=False)["totals"]
        report = run_latency_report(run_dir, False, verify)
        capture_dir = run_dir / bundle.CAPTURE_DIR
        payloads: list[bytes] = []
        for s in shard_numbers(capture_dir):
            with ShardReader(capture_dir, s) as rd:
                payloads.extend(r.payload for r in rd)
        progress = Progress(2 * len(payloads), "baseline", unit="frames", enabled=show_progress)
        base = _bare_loops(payloads, tmp, progress)
        progress.close()
        n = verify["frames"]
        nbytes = verify["bytes"]
        pipe_fps = n / pipeline_s if pipeline_s > 0 else None
        result = {
            "frames": n,
            "bytes": nbytes,
            "shards": shards,
            "fixture_laps": repeat,
            "exit_code": code,
            "pipeline": {
                "seconds": round(pipeline_s, 4),
                "wall_seconds_incl_startup": round(wall_s, 4),
                "frames_per_s": round(pipe_fps) if pipe_fps else None,
                "mb_per_s": round(nbytes / pipeline_s / 1e6, 1) if pipeline_s > 0 else None,
            },
            "baseline": base,
            "ratio_vs_plain_append": round(pipe_fps / base["plain_append"]["frames_per_s"], 3) if pipe_fps else None,
            "ratio_vs_checksummed_append": round(pipe_fps / base["checksummed_append"]["frames_per_s"], 3) if pipe_fps else None,
            "ws_rx_to_applied_ms": {k: report["ws_rx_to_applied_ms"][k] for k in ("p50", "p95", "p99", "max", "count")},
            "peak_queue_depth": {q: v["max"] for q, v in report["queue_depth"].items()},
            "drops": report["drops"]["dropped_messages_total"],
            "verify": {k: verify[k] for k in ("frames", "crc_mismatch", "seq_gaps", "idx_mismatch", "torn_tail_bytes")},
            "peak_rss_mb": {"before": round(rss_before, 1), "after_pipeline": round(rss_pipeline, 1)},
            "data_dir": str(tmp) if keep else None,
        }
        return result
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def render_bench(r: dict[str, Any]) -> str:
    p, b = r["pipeline"], r["baseline"]
    lat = r["ws_rx_to_applied_ms"]
    lines = [
        f"capture-bench: {r['frames']:,} frames, {r['bytes'] / 1e6:.1f} MB over {r['shards']} shards ({r['fixture_laps']} fixture laps)",
        f"{'':28s}{'frames/s':>12s}{'MB/s':>9s}{'seconds':>10s}",
        f"{'pipeline (actors, files)':28s}{p['frames_per_s'] or 0:>12,}{p['mb_per_s'] or 0:>9}{p['seconds']:>10}",
        f"{'bare plain append':28s}{b['plain_append']['frames_per_s']:>12,}{b['plain_append']['mb_per_s']:>9}{b['plain_append']['seconds']:>10}",
        f"{'bare checksummed append':28s}{b['checksummed_append']['frames_per_s']:>12,}{b['checksummed_append']['mb_per_s']:>9}{b['checksummed_append']['seconds']:>10}",
        f"ratio pipeline / plain append: {r['ratio_vs_plain_append']}; / checksummed append: {r['ratio_vs_checksummed_append']}",
        f"ws_rx_to_applied_ms: p50 {lat['p50']} p95 {lat['p95']} p99 {lat['p99']} max {lat['max']} (n={lat['count']:,})",
        "peak queue depth (frames): " + ", ".join(f"{k}={v}" for k, v in r["peak_queue_depth"].items()),
        f"drops: {r['drops']}; verify: crc_mismatch={r['verify']['crc_mismatch']} seq_gaps={r['verify']['seq_gaps']}",
        f"peak RSS: {r['peak_rss_mb']['after_pipeline']} MB (before the run: {r['peak_rss_mb']['before']} MB)",
    ]
    if r["data_dir"]:
        lines.append(f"kept: {r['data_dir']}")
    return "\n".join(lines)
