"""What a user may type for `--run-dir`: a path, a bare run id under DATA_DIR/runs, or `latest`.

One resolver for every command, so `latest` and run ids mean the same thing everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from pm_arb.store import layout as bundle
from pm_arb.config import FIELDS
from pm_arb.errors import UserError

LATEST = "latest"
SHOWN_IN_ERROR = 8  # run ids listed in a not-found error: enough to spot a typo, one line still


def data_dir_from_env() -> Path:
    """The data dir a run-reading command looks in: PM_ARB_DATA_DIR, else the capture default."""
    return Path(os.environ.get("PM_ARB_DATA_DIR") or FIELDS["data_dir"].default)


def run_dirs(data_dir: Path) -> list[Path]:
    """Every run directory under DATA_DIR/runs, oldest first (by manifest start, then name)."""
    root = bundle.runs_root(data_dir)
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(dirs, key=lambda p: (_started_ns(p), p.name))


def _started_ns(run_dir: Path) -> int:
    try:
        started = bundle.read_manifest(run_dir).get("started_wall_ns_utc")
    except UserError:
        started = None
    if isinstance(started, int):
        return started
    # No readable manifest (a capture that died before writing it): the directory's own time.
    return run_dir.stat().st_mtime_ns


def resolve_run_dir(text: str, data_dir: Path | None = None) -> Path:
    """A path that exists wins; then `latest`; then a run id under DATA_DIR/runs."""
    as_path = Path(text)
    if as_path.exists():
        return as_path
    if as_path.is_symlink():  # exists() follows links: a dangling one or a loop is not "no such path"
        raise UserError(f"run dir {text} is a symbolic link that leads to no directory (dangling, or a loop): "
                        "point it at a run dir, or pass the run dir itself", 2)
    data_dir = data_dir_from_env() if data_dir is None else data_dir
    root = bundle.runs_root(data_dir)
    known = run_dirs(data_dir)
    if text == LATEST:
        if known:
            return known[-1]
        raise UserError(f"--run-dir latest: no runs under {root}; start one with `pm_arb capture --sim` (or set PM_ARB_DATA_DIR)", 2)
    if os.sep not in text and text not in (".", ".."):
        candidate = root / text
        if candidate.is_dir():
            return candidate
    names = [p.name for p in known]
    if names:
        shown = ", ".join(names[-SHOWN_IN_ERROR:]) + (f" (and {len(names) - SHOWN_IN_ERROR} older)" if len(names) > SHOWN_IN_ERROR else "")
        what = f"runs under {root}: {shown}"
    else:
        what = f"no runs under {root}"
    raise UserError(
        f"run dir {text} does not exist (not a path, not a run id); {what}; pass the dir `pm_arb capture` printed, "
        "a run id or `latest` (`pm_arb runs` lists them)",
        2,
    )
