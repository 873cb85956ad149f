"""Names of the files in a run bundle (MASTER.md section 1), in one place."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from pm_arb.events import json_text
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


def require_outside(run_dir: Path, out: Path, flag: str = "--out") -> None:
    """A command's output may not go inside the run it reads: the bundle is the evidence, and a
    directory there (named like a shard's frames file, say) changes what every reader finds."""
    run, target = run_dir.resolve(), out.resolve()
    if target == run or run in target.parents:
        raise UserError(f"{flag} {out} is inside the run dir {run_dir}: writing there would change the run's own bundle; "
                        "choose a path outside it (nothing was written)", 2)


def read_manifest(run_dir: Path) -> dict:
    """The run's manifest as capture wrote it ({} when there is none), or UserError naming what
    is wrong with it: every reader takes its fields as written, so one check here stands for all."""
    path = run_dir / MANIFEST
    if not path.exists():
        return {}
    if not path.is_file():
        raise ManifestError(path, "is not a file")
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ManifestError(path, f"is not readable JSON ({exc})") from None
    problem = manifest_problem(doc)
    if problem:
        raise ManifestError(path, f"is not a pm_arb manifest: {problem}")
    return doc


class ManifestError(UserError):
    """manifest.json cannot be used; `problem` says why (exit 1: the run's own file is damaged)."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path} {problem}; restore it from a copy of the run; the frames can still be checked with capture-verify", 1)
        self.problem = problem

# The fields readers use, as run_capture.build_manifest writes them (a slice adds slice_of);
# a field may be absent (older runs), never of another type.
_MANIFEST_FIELDS = {"run_id": str, "mode": str, "started_wall_ns_utc": int, "started_mono_ns": int, "started_utc": str,
                    "config": dict, "universe": dict, "host": dict, "versions": dict, "sim": dict, "slice_of": dict}
_UNIVERSE_FIELDS = {"markets": list, "shard_token_counts": dict, "placement": dict}
_MARKET_FIELDS = {"condition_id": str, "question": str, "shard": int, "id": str, "slug": str}
_JSON_NAMES = {str: "a string", int: "an integer", dict: "an object", list: "an array"}


def manifest_problem(doc) -> str | None:
    """What makes a decoded manifest.json other than what capture writes, or None."""
    if not isinstance(doc, dict):
        return f"the top level is {_json_kind(doc)}, not an object"
    universe = doc.get("universe", {})
    problem = _fields_problem(doc, _MANIFEST_FIELDS, "") or _fields_problem(universe, _UNIVERSE_FIELDS, "universe.")
    if problem:
        return problem
    for shard, count in universe.get("shard_token_counts", {}).items():
        if not (shard.isascii() and shard.isdigit() and _fits(count, int)):
            return f"'universe.shard_token_counts' maps {shard!r} to {_json_kind(count)}, not a shard number to a count"
    for i, market in enumerate(universe.get("markets", [])):
        where = f"universe.markets[{i}]"
        if not isinstance(market, dict):
            return f"{where!r} is {_json_kind(market)}, not an object"
        for token in ("yes_token", "no_token"):
            if not (isinstance(market.get(token), str) and market[token]):
                return f"'{where}.{token}' is {_json_kind(market.get(token))}, not a token id"
        problem = _fields_problem(market, _MARKET_FIELDS, f"{where}.", optional_null=("id", "slug"))
        if problem:
            return problem
    return None


def _fields_problem(doc: dict, fields: dict[str, type], prefix: str, optional_null: tuple[str, ...] = ()) -> str | None:
    for name, kind in fields.items():
        if name in doc and not _fits(doc[name], kind) and not (doc[name] is None and name in optional_null):
            return f"'{prefix}{name}' is {_json_kind(doc[name])}, not {_JSON_NAMES[kind]}"
    return None


def _fits(value, kind: type) -> bool:
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def _json_kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = orjson.dumps(value).decode()
    return text if len(text) <= 40 else text[:37] + "..."


def write_json(path: Path, doc) -> None:
    write_file(path, json_text.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")


def write_file(path: Path, data: bytes) -> None:
    """All of `data` at `path`, or nothing new there: written beside it and renamed over it, and
    the temp file removed when the write fails (a full disk leaves no half report)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        # Named by the file the caller asked for, not the temp file nobody knows of.
        raise OSError(exc.errno, exc.strerror, str(path)) from None
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
