"""Read runlog.ndjson into LogRecords, reporting every bad line by its number."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pm_arb.errors import UserError
from pm_arb.events.codec import DecodeError, LogRecord, decode


# An empty runlog is treated like a missing one: a fold of nothing would report a run that never began.
NOTHING_TO_FOLD = (
    "nothing to fold; a capture writes run_start first, so the file was emptied or cut, or this is not a pm_arb run dir"
)


@dataclass
class BadLine:
    line_no: int
    reason: str
    torn_tail: bool  # the last line, cut short by a crash (no newline at the end)


@dataclass
class RunlogRead:
    records: list[LogRecord] = field(default_factory=list)
    bad_lines: list[BadLine] = field(default_factory=list)
    seq_gaps: list[tuple[int, int]] = field(default_factory=list)  # (expected, found)


def parse_runlog_bytes(data: bytes) -> RunlogRead:
    out = RunlogRead()
    lines = data.split(b"\n")
    ends_clean = data.endswith(b"\n") or not data
    if ends_clean:
        lines = lines[:-1]
    expected = 0
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            out.bad_lines.append(BadLine(i, "empty line", False))
            continue
        try:
            rec = decode(line)
        except DecodeError as exc:
            is_last = i == len(lines)
            out.bad_lines.append(BadLine(i, str(exc), is_last and not ends_clean))
            continue
        if rec.seq != expected:
            out.seq_gaps.append((expected, rec.seq))
        expected = rec.seq + 1
        out.records.append(rec)
    return out


def read_runlog(run_dir: Path, skip_bad_lines: bool = False) -> RunlogRead:
    """Read and decode a run's runlog.

    A torn last line (what a crash leaves) is always tolerated, with a warning from the caller.
    Other bad lines raise UserError unless skip_bad_lines.
    """
    path = run_dir / "runlog.ndjson"
    if not path.is_file():
        raise UserError(f"{path} not found: is {run_dir} a pm_arb run dir? (capture writes runlog.ndjson at start)", 2)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}", 2) from None
    if not data.strip():
        raise UserError(f"{path} is empty: {NOTHING_TO_FOLD}", 2)
    result = parse_runlog_bytes(data)
    hard = [b for b in result.bad_lines if not b.torn_tail]
    if hard and not skip_bad_lines:
        first = hard[0]
        more = f" (and {len(hard) - 1} more)" if len(hard) > 1 else ""
        raise UserError(
            f"{path}:{first.line_no}: {first.reason}{more}; rerun with --skip-bad-lines to fold the rest", 1
        )
    if not result.records:
        raise UserError(f"{path} has no readable record ({len(result.bad_lines)} bad line(s)): {NOTHING_TO_FOLD}", 2)
    return result
