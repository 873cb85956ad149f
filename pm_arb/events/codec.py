"""The one codec between events and runlog.ndjson lines.

A line is `{"type", "seq", "mono_ns", "wall_ns_utc", ...the event's own fields}`. `seq` is
gapless from 0 and is given by the single appender; the two clocks are stamped where the fact
happened.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import orjson

from pm_arb.events.types import EVENT_TYPES, Event

ENVELOPE_KEYS = ("type", "seq", "mono_ns", "wall_ns_utc")


@dataclass(frozen=True)
class LogRecord:
    seq: int
    mono_ns: int
    wall_ns_utc: int
    event: Event

    @property
    def type(self) -> str:
        return self.event.TYPE


class DecodeError(ValueError):
    pass


def encode(record: LogRecord) -> bytes:
    body: dict[str, Any] = {
        "type": record.event.TYPE,
        "seq": record.seq,
        "mono_ns": record.mono_ns,
        "wall_ns_utc": record.wall_ns_utc,
    }
    for f in dataclasses.fields(record.event):
        body[f.name] = getattr(record.event, f.name)
    return orjson.dumps(body) + b"\n"


def decode(line: bytes | str) -> LogRecord:
    """Parse one runlog line; raise DecodeError with a reason a person can act on."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise DecodeError("not a JSON object")
    kind = obj.get("type")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise DecodeError(f"unknown event type {kind!r}")
    for key in ENVELOPE_KEYS[1:]:
        if not isinstance(obj.get(key), int):
            raise DecodeError(f"{kind} line has no integer {key!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = required - obj.keys()
    if missing:
        raise DecodeError(f"{kind} line lacks field(s) {', '.join(sorted(missing))}")
    try:
        ev = cls(**{k: v for k, v in obj.items() if k in names})
    except TypeError as exc:
        raise DecodeError(f"{kind} line does not fit its type ({exc})") from None
    return LogRecord(obj["seq"], obj["mono_ns"], obj["wall_ns_utc"], ev)
