"""Names of the files in a run bundle (MASTER.md section 1), in one place."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from pm_arb.errors import UserError

MANIFEST = "manifest.json"
RUNLOG = "runlog.ndjson"
CAPTURE_DIR = "capture"
METRICS_DIR = "metrics"
GLOBAL_METRICS = "global.ndjson"
LATENCY_JSON = "latency_report.json"
LATENCY_TXT = "latency_report.txt"
FATAL_JSON = "fatal.json"
MISSING_TOKENS_JSON = "missing_tokens.json"


def runs_root(data_dir: str | Path) -> Path:
    return Path(data_dir) / "runs"


def shard_metrics_name(shard: int) -> str:
    return f"shard_{shard:02d}.ndjson"


def last_frames_name(shard: int) -> str:
    return f"last_frames_shard_{shard:02d}.bin"


def require_run_dir(run_dir: Path) -> Path:
    """A run dir the user named must exist and be a directory; say what to do when it is not."""
    if not run_dir.exists():
        raise UserError(f"run dir {run_dir} does not exist: pass the dir that `pm_arb capture` printed (data/runs/<run_id>)", 2)
    if not run_dir.is_dir():
        raise UserError(f"run dir {run_dir} is not a directory: pass the dir that `pm_arb capture` printed", 2)
    return run_dir


def read_manifest(run_dir: Path) -> dict:
    path = run_dir / MANIFEST
    if not path.is_file():
        return {}
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise UserError(f"{path} is not readable JSON ({exc}); the frames can still be checked with capture-verify", 1) from None
    return doc if isinstance(doc, dict) else {}


def write_json(path: Path, doc) -> None:
    write_file(path, orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")


def write_file(path: Path, data: bytes) -> None:
    """All of `data` at `path`, or nothing new there: written beside it and renamed over it, and
    the temp file removed when the write fails (a full disk leaves no half report)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def dir_bytes(path: Path) -> int:
    """Bytes the files under a run dir hold now (a few files per shard: cheap enough to walk
    on every status poll)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass  # renamed or removed while walking: counted at the next look
    return total
