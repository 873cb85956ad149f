"""`--tokens` of capture-export and capture-books: one parse, one check, the same words.

Given but empty (an unset shell variable, say) or naming no token of the run, the option is
refused rather than reading everything or nothing; ids the run never had are named in a
warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Collection, Iterable

from pm_arb.errors import UserError


def parse_tokens(values: Iterable[str], every: str) -> list[str] | None:
    """The ids of repeated / comma-separated `--tokens` values, in order, once each; None when
    the option was not given. `every` finishes the error: what dropping the option does."""
    values = list(values)
    if not values:
        return None
    wanted = list(dict.fromkeys(t.strip() for item in values for t in item.split(",") if t.strip()))
    if not wanted:
        raise UserError(f"--tokens was given but holds no token id: pass ids (comma-separated or repeated), or drop the option to {every}", 2)
    return wanted


def unknown_tokens_warnings(wanted: Collection[str], known: Collection[str], run_dir: Path) -> list[str]:
    """Refuses `wanted` when none of it is `known` to the run; otherwise a warning naming the
    ids that are not (none: no warning)."""
    unknown = [t for t in wanted if t not in known]
    if len(unknown) == len(wanted):
        raise UserError(f"none of the {len(wanted)} token(s) given with --tokens appear in {run_dir}: "
                        "pass token ids from its manifest (capture-inspect lists the universe)", 2)
    if not unknown:
        return []
    return [f"{len(unknown)} token(s) given with --tokens never appear in this run: {', '.join(t[:12] + '...' for t in unknown[:5])}"]
