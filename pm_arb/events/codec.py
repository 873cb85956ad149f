"""The one codec between events and runlog.ndjson lines.

A line is `{"type", "seq", "mono_ns", "wall_ns_utc", ...the event's own fields}`. `seq` is
gapless from 0 and is given by the single appender; the two clocks are stamped where the fact
happened.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable

import orjson

from pm_arb.events import json_text
from pm_arb.events.types import EVENT_TYPES, SHARD_NUMBER, Event

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
    return json_text.dumps(body) + b"\n"


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
        if type(obj.get(key)) is not int:
            raise DecodeError(f"{kind} line has no integer {key!r}")
    checks, required = _shape(cls)
    missing = required - obj.keys()
    if missing:
        raise DecodeError(f"{kind} line lacks field(s) {', '.join(sorted(missing))}")
    names = checks.keys()
    for name in names & obj.keys():
        fits, expected = checks[name]
        if not fits(obj[name]):
            raise DecodeError(f"{kind} line's field {name!r} is {_short(obj[name])}, not {expected}")
    try:
        ev = cls(**{k: v for k, v in obj.items() if k in names})
    except TypeError as exc:
        raise DecodeError(f"{kind} line does not fit its type ({exc})") from None
    return LogRecord(obj["seq"], obj["mono_ns"], obj["wall_ns_utc"], ev)


# Every reader of a record trusts its declared types (sums counters, int() of shard keys, .items()
# of a dict), so a line whose field does not fit is refused here, by line number, like a line
# that is not JSON, instead of crashing whichever fold meets it first.
Check = Callable[[Any], bool]


@functools.cache
def _shape(cls: type) -> tuple[dict[str, tuple[Check, str]], frozenset[str]]:
    """An event type's fields, each with its check and how to name its type; the required ones."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = dataclasses.fields(cls)
    checks = {f.name: (_check_for(hints[f.name]), _describe(hints[f.name])) for f in fields}
    required = frozenset(f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    return checks, required


# The Python types orjson decodes a JSON value of each annotation into (exact types: orjson makes
# no subclasses, and bool is kept apart from int). JSON does not keep 1.0 apart from 1.
_SCALARS = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}


def _scalar_types(t: Any) -> frozenset[type] | None:
    """The exact types a scalar annotation (or a union of them) admits; None for any other."""
    if t in _SCALARS:
        return frozenset(_SCALARS[t])
    if typing.get_origin(t) in (types.UnionType, typing.Union):
        parts = [_scalar_types(a) for a in typing.get_args(t)]
        return frozenset().union(*parts) if all(p is not None for p in parts) else None
    return None


def _shard_numbers(keys) -> bool:
    """Every key is decimal digits (one joined check: a heartbeat has a key per shard)."""
    joined = "".join(keys)
    return all(keys) and joined.isascii() and (joined.isdigit() or not joined)


def _check_for(t: Any) -> Check:
    """A check of a decoded JSON value against the annotation t, built once per field. Scalars
    and containers of scalars are checked by the set of their types, in C: a runlog holds a
    heartbeat a second, each with a counters object per shard."""
    if t is Any:
        return lambda v: True
    scalars = _scalar_types(t)
    if scalars is not None:
        return lambda v: type(v) in scalars
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Annotated and SHARD_NUMBER in args[1:]:
        return lambda v: type(v) is str and _shard_numbers((v,))
    if origin is list:
        item_types = _scalar_types(args[0])
        if item_types is not None:
            return lambda v: type(v) is list and set(map(type, v)) <= item_types
        item = _check_for(args[0])
        return lambda v: type(v) is list and all(map(item, v))
    if origin is dict:
        key_args = typing.get_args(args[0])
        keys_ok = _shard_numbers if SHARD_NUMBER in key_args[1:] else (lambda keys: True)  # JSON keys are strings
        value_types = _scalar_types(args[1])
        if value_types is not None:
            return lambda v: type(v) is dict and keys_ok(v) and set(map(type, v.values())) <= value_types
        value = _check_for(args[1])
        return lambda v: type(v) is dict and keys_ok(v) and all(map(value, v.values()))
    raise TypeError(f"the runlog codec has no check for {t!r}: events hold JSON-native values only")


def _describe(t: Any) -> str:
    """The annotation as a reader would spell it: int, list[str], dict[shard number, int]."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Annotated:
        return SHARD_NUMBER if SHARD_NUMBER in args[1:] else _describe(args[0])
    if origin in (types.UnionType, typing.Union):
        return " | ".join(map(_describe, args))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(map(_describe, args))}]"
    return getattr(t, "__name__", str(t))


def _short(v: Any) -> str:
    text = orjson.dumps(v).decode()
    return text if len(text) <= 60 else text[:57] + "..."
