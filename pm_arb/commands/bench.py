"""capture-bench: the offline pipeline flat out, against bare append loops on the same bytes.

Both are measured in the same process, on the same machine, in the same run, on the same
payload objects, so the ratio is meaningful where absolute numbers are not. Rounds interleave
pipeline and baselines; the median round is reported, with every round beside it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pm_arb.store import layout as bundle
from pm_arb.commands.reports import run_latency_report
from pm_arb.commands.verify import verify_run
from pm_arb.config import Config
from pm_arb.events import types as ev
from pm_arb.events.runlog_file import read_runlog
from pm_arb.store.fixtures import frames_by_shard, load_fixture_set
from pm_arb.cli.progress import Progress
from pm_arb.plant.run_capture import run_capture
from pm_arb.store.frames_format import encode_record
from pm_arb.store.shard_files import writev_all


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _bare_loops(payloads: list[bytes], out_dir: Path) -> dict[str, Any]:
    """Two baselines on the pipeline's own input objects, in its order: a plain buffered append
    (the issue's "bare append loop"), and append with our record header (both timestamps, seq)
    and xxh3_64 checksum, written in 1024-frame batches with writev (as the writer does: under
    the capture's malloc settings a joined 0.5 MB batch costs an mmap and its page faults)."""
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
    plain.unlink()
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
            writev_all(fd, parts)
    finally:
        os.close(fd)
    t_framed = time.perf_counter() - t0
    framed.unlink()
    return {
        "plain_append": _rate(n, nbytes, t_plain),
        "checksummed_append": _rate(n, nbytes, t_framed),
    }


def _rate(n: int, nbytes: int, seconds: float) -> dict[str, Any]:
    return {"duration_s": round(seconds, 4), "frames_per_s": round(n / seconds), "mb_per_s": round(nbytes / seconds / 1e6, 1)}


def _pipeline_inputs(fixture, run_dir: Path, shards: int, repeat: int) -> list[bytes]:
    """The payload objects the offline readers pushed, shard by shard, lap by lap."""
    manifest = bundle.read_manifest(run_dir)
    shard_of = {mk["condition_id"]: mk["shard"] for mk in manifest["universe"]["markets"]}
    out: list[bytes] = []
    for frames in frames_by_shard(fixture, shard_of, manifest["universe"]["placement"]["shards"]).values():
        out.extend([f.payload for f in frames] * repeat)
    return out


def _one_pipeline_run(fixture, shards: int, repeat: int, data_dir: Path, show_progress: bool | None) -> tuple[dict[str, Any], Path]:
    config = dataclasses.replace(
        Config(),
        offline=True,
        offline_speed=0.0,
        ws_shards=shards,
        data_dir=str(data_dir),
        fixtures=str(fixture.path),
        capture_confirm_timeout_seconds=120.0,
    )
    t0 = time.perf_counter()
    code, run_dir, _last = run_capture(config, "bench", "offline", fixture=fixture, offline_repeat=repeat, status=show_progress)
    wall_s = time.perf_counter() - t0
    recs = read_runlog(run_dir).records
    start = next(r.mono_ns for r in recs if isinstance(r.event, ev.RunStart))
    # run_stop is recorded once the writer has applied every frame (a FlushMetrics round trip),
    # before the closing fsync: the window is receive-to-applied for the whole run.
    stop = next((r.mono_ns for r in recs if isinstance(r.event, ev.RunStop)), recs[-1].mono_ns)
    return {"exit_code": code, "duration_s": (stop - start) / 1e9, "wall_incl_startup_s": wall_s}, run_dir


def run_bench(
    frames: int, shards: int, fixtures: Path | None, keep: bool, show_progress: bool | None = None, rounds: int = 3
) -> dict[str, Any]:
    """`rounds` times: the pipeline, then both baselines on the same payload objects. Rounds
    interleave so that a machine that slows down for a while (a shared VM does) slows both
    sides; the ratio reported is the median of the per-round ratios."""
    fixture = load_fixture_set(fixtures)
    per_lap = max(1, len(fixture.frames))
    repeat = max(1, math.ceil(frames / per_lap))
    tmp = Path(tempfile.mkdtemp(prefix="pm_arb_bench_"))
    try:
        rss_before = _peak_rss_mb()
        progress = Progress(rounds, "bench rounds", unit="rounds", enabled=show_progress)
        per_round = []
        first_run_dir = None
        for k in range(rounds):
            pipe, run_dir = _one_pipeline_run(fixture, shards, repeat, tmp / f"round{k}", False)
            if k == 0:
                first_run_dir = run_dir
                rss_pipeline = _peak_rss_mb()
                inputs = _pipeline_inputs(fixture, run_dir, shards, repeat)
            else:
                shutil.rmtree(run_dir.parent.parent, ignore_errors=True)
            base = _bare_loops(inputs, tmp)
            n = len(inputs)
            fps = n / pipe["duration_s"] if pipe["duration_s"] > 0 else 0.0
            per_round.append({
                "pipeline_frames_per_s": round(fps),
                "pipeline_s": round(pipe["duration_s"], 4),
                "plain_append_frames_per_s": base["plain_append"]["frames_per_s"],
                "checksummed_append_frames_per_s": base["checksummed_append"]["frames_per_s"],
                "ratio_vs_plain_append": round(fps / base["plain_append"]["frames_per_s"], 3),
                "ratio_vs_checksummed_append": round(fps / base["checksummed_append"]["frames_per_s"], 3),
                "exit_code": pipe["exit_code"],
                "_base": base,
                "_pipe": pipe,
            })
            progress.update(1)
        progress.close()
        # Frames, latency, queues and integrity are read from the first round's bundle.
        verify = verify_run(first_run_dir, show_progress=False)["totals"]
        report = run_latency_report(first_run_dir, False, verify)
        n = verify["frames"]
        nbytes = verify["bytes"]
        mid = sorted(per_round, key=lambda r: r["ratio_vs_plain_append"])[len(per_round) // 2]
        pipe = mid["_pipe"]
        result = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "processor": platform.processor() or platform.machine()},
            "frames": n,
            "bytes": nbytes,
            "shards": shards,
            "fixture_laps": repeat,
            "rounds": rounds,
            "exit_code": max(r["exit_code"] for r in per_round),
            "pipeline": {
                "duration_s": round(pipe["duration_s"], 4),
                "wall_incl_startup_s": round(pipe["wall_incl_startup_s"], 4),
                "frames_per_s": round(n / pipe["duration_s"]) if pipe["duration_s"] > 0 else None,
                "mb_per_s": round(nbytes / pipe["duration_s"] / 1e6, 1) if pipe["duration_s"] > 0 else None,
            },
            "baseline": {"frames": n, "bytes": nbytes, **mid["_base"]},
            "ratio_vs_plain_append": mid["ratio_vs_plain_append"],
            "ratio_vs_checksummed_append": mid["ratio_vs_checksummed_append"],
            "per_round": [{k: v for k, v in r.items() if not k.startswith("_")} for r in per_round],
            "ws_rx_to_applied_ms": {k: report["ws_rx_to_applied_ms"][k] for k in ("p50", "p95", "p99", "max", "count")},
            "peak_queue_depth": {q: v["max"] for q, v in report["queue_depth"].items()},
            "dropped_messages_total": report["drops"]["dropped_messages_total"],
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
        f"{'pipeline (actors, files)':28s}{p['frames_per_s'] or 0:>12,}{p['mb_per_s'] or 0:>9}{p['duration_s']:>10}",
        f"{'bare plain append':28s}{b['plain_append']['frames_per_s']:>12,}{b['plain_append']['mb_per_s']:>9}{b['plain_append']['duration_s']:>10}",
        f"{'bare checksummed append':28s}{b['checksummed_append']['frames_per_s']:>12,}{b['checksummed_append']['mb_per_s']:>9}{b['checksummed_append']['duration_s']:>10}",
        f"ratio pipeline / plain append: {r['ratio_vs_plain_append']}; / checksummed append: {r['ratio_vs_checksummed_append']}"
        f" (median of {r['rounds']} interleaved rounds; the row above is that round)",
        "per round, pipeline / plain / checksummed frames/s: "
        + "; ".join(f"{x['pipeline_frames_per_s']:,} / {x['plain_append_frames_per_s']:,} / {x['checksummed_append_frames_per_s']:,}" for x in r["per_round"]),
        f"ws_rx_to_applied_ms: p50 {lat['p50']} p95 {lat['p95']} p99 {lat['p99']} max {lat['max']} (n={lat['count']:,})",
        "peak queue depth (frames): " + ", ".join(f"{k}={v}" for k, v in r["peak_queue_depth"].items()),
        f"drops: {r['dropped_messages_total']}; verify: crc_mismatch={r['verify']['crc_mismatch']} seq_gaps={r['verify']['seq_gaps']}",
        f"peak RSS: {r['peak_rss_mb']['after_pipeline']} MB (before the run: {r['peak_rss_mb']['before']} MB)",
    ]
    if r["data_dir"]:
        lines.append(f"kept: {r['data_dir']}")
    return "\n".join(lines)
