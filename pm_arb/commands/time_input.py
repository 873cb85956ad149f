"""The time a user may type for a window (`--from-wall`, `--to-wall`). Pure: no files, no clock.

Accepted, in this order:
- integer nanoseconds since the epoch (`1795613003595260064`);
- an offset from the run's start (`+10s`, `+1m30s`) or end (`-5m`); units ns, us, ms, s, m, h, d;
- a time of day (`12:52:30`, `12:52:30.250`, optional trailing `Z`), UTC, on the run's date;
- an ISO-8601 date and time (`2026-11-24T13:00:00Z`; no offset means UTC).

"The run's start/end" is what the caller passes: for capture-slice, the receive time of the
run's first and last frame. A time of day means the run's first day, unless that moment is
before the run and the same time on the next day falls inside it (a run across midnight).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timezone

from pm_arb.errors import UserError

NS_PER_UNIT = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000, "d": 86_400_000_000_000}
_OFFSET_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m|h|d)")
_OFFSET = re.compile(r"^([+-])((?:[0-9]+(?:\.[0-9]+)?(?:ns|us|ms|s|m|h|d))+)$")
_TIME_OF_DAY = re.compile(r"^([0-9]{1,2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,9}))?)?Z?$")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
DAY_NS = NS_PER_UNIT["d"]
I64_MIN, I64_MAX = -(2**63), 2**63 - 1  # the range of a record's rx_wall_ns_utc
_SIGNED_INT = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: int() takes digits str.isdigit() does not mean
FORMS = "ISO-8601 (2026-11-24T13:00:00Z), integer ns since the epoch, a time of day on the run's date (12:52:30), or an offset from the run's start or end (+10s, -5m)"


@dataclass(frozen=True)
class TimeSpec:
    """A parsed time, not yet placed on a run. kind: "ns" | "from_start" | "from_end" | "time_of_day"."""

    kind: str
    ns: int  # epoch ns ("ns"), offset ns (from_start/from_end, >= 0), or ns since midnight (time_of_day)
    text: str


def _to_ns(dt: datetime) -> int:
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _offset_ns(body: str) -> int:
    total = 0
    for number, unit in _OFFSET_PART.findall(body):
        whole, _, frac = number.partition(".")
        total += int(whole) * NS_PER_UNIT[unit]
        if frac:  # exact in integers: 1.5s is 1_500_000_000 ns, not a float's nearest
            total += int(frac) * NS_PER_UNIT[unit] // 10 ** len(frac)
    return total


def parse_time(text: str, flag: str) -> TimeSpec:
    s = text.strip()
    if _SIGNED_INT.fullmatch(s):
        value = int(s)
        if not I64_MIN <= value <= I64_MAX:
            raise _out_of_range(text, flag)
        if s[0] in "+-":
            raise UserError(f"invalid value {text!r} for {flag}: an offset needs a unit (+10s, -5m, +250ms); integer ns must be unsigned", 2)
        return TimeSpec("ns", value, text)
    m = _OFFSET.match(s)
    if m:
        return TimeSpec("from_start" if m.group(1) == "+" else "from_end", _offset_ns(m.group(2)), text)
    m = _TIME_OF_DAY.match(s)
    if m:
        hh, mm, ss, frac = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), m.group(4) or ""
        if hh > 23 or mm > 59 or ss > 59:
            raise UserError(f"invalid value {text!r} for {flag}: {hh:02d}:{mm:02d}:{ss:02d} is not a time of day", 2)
        frac_ns = int(frac.ljust(9, "0")) if frac else 0
        return TimeSpec("time_of_day", ((hh * 60 + mm) * 60 + ss) * 1_000_000_000 + frac_ns, text)
    if re.fullmatch(r"[+-][0-9]+\.[0-9]+", s):
        raise UserError(f"invalid value {text!r} for {flag}: an offset needs a unit (+10s, -5m, +250ms); integer ns must be unsigned", 2)
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"invalid value {text!r} for {flag}: expected {FORMS}", 2) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    value = _to_ns(dt)
    if not I64_MIN <= value <= I64_MAX:
        raise _out_of_range(text, flag)
    return TimeSpec("ns", value, text)


def _out_of_range(text: str, flag: str) -> UserError:
    return UserError(
        f"invalid value {text!r} for {flag}: receive times are signed 64-bit ns since the epoch (years 1677 to 2262); nothing was written", 2
    )


def resolve(spec: TimeSpec, run_start_ns: int, run_end_ns: int) -> int:
    """Epoch ns of a parsed time, placed on a run that spans [run_start_ns, run_end_ns]."""
    if spec.kind == "ns":
        return spec.ns
    if spec.kind == "from_start":
        return run_start_ns + spec.ns
    if spec.kind == "from_end":
        return run_end_ns - spec.ns
    start = datetime.fromtimestamp(run_start_ns // 1_000_000_000, tz=timezone.utc)
    midnight = _to_ns(datetime.combine(start.date(), time(0), tzinfo=timezone.utc))
    candidate = midnight + spec.ns
    if candidate < run_start_ns and candidate + DAY_NS <= run_end_ns:
        candidate += DAY_NS
    return candidate

