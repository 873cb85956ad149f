"""One codec for every event type; readers report bad lines by number and tolerate a torn tail."""

from __future__ import annotations

import dataclasses
import types
import typing

import orjson
import pytest

from pm_arb.events.codec import DecodeError, LogRecord, decode, encode
from pm_arb.events.runlog_file import parse_runlog_bytes
from pm_arb.events.types import EVENT_TYPES, SHARD_NUMBER

SPEC_RECORDS = {"universe_refresh", "shard_refresh_begin", "shard_refresh_applied", "universe_refresh_error", "heartbeat",
                "run_start", "run_stop", "fatal", "shard_reconnect"}
SPEC_REFRESH_FIELDS = {"duration_ms", "reason", "added_count", "removed_count", "churn_pct", "interval_seconds_used",
                       "gamma_pages_fetched", "markets_seen", "tokens_selected"}


def sample_value(t):
    """A value fitting the annotation t (shard-keyed dicts get a shard number as key)."""
    origin = typing.get_origin(t) or t
    if origin is typing.Annotated:
        return "0" if SHARD_NUMBER in typing.get_args(t)[1:] else sample_value(typing.get_args(t)[0])
    if t is bool:
        return True
    if t is int:
        return 7
    if t is float:
        return 1.5
    if t is str:
        return "x\u00e9\n\"q\""
    if t is typing.Any:
        return 3
    if origin in (types.UnionType, typing.Union):
        return sample_value(typing.get_args(t)[0])
    if origin is list:
        return [sample_value(typing.get_args(t)[0])] * 2
    if origin is dict:
        k, v = typing.get_args(t)
        return {sample_value(k): sample_value(v)}
    raise AssertionError(f"no sample for {t}")


def sample(cls) -> object:
    hints = typing.get_type_hints(cls, include_extras=True)
    return cls(**{f.name: sample_value(hints[f.name]) for f in dataclasses.fields(cls)})


def test_spec_record_names_exist_with_spec_fields():
    assert SPEC_RECORDS <= set(EVENT_TYPES)
    names = {f.name for f in dataclasses.fields(EVENT_TYPES["universe_refresh"])}
    assert SPEC_REFRESH_FIELDS <= names
    assert {"duration_ms", "error", "message"} <= {f.name for f in dataclasses.fields(EVENT_TYPES["universe_refresh_error"])}


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_every_event_type_round_trips(name):
    rec = LogRecord(5, 123, 456, sample(EVENT_TYPES[name]))
    line = encode(rec)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line) == rec
    assert line.startswith(b'{"type":"' + name.encode() + b'","seq":5,"mono_ns":123,"wall_ns_utc":456')


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"not json", "not valid JSON"),
        (b"[1,2]", "not a JSON object"),
        (b'{"type":"nope","seq":0,"mono_ns":1,"wall_ns_utc":1}', "unknown event type 'nope'"),
        (b'{"type":"stop_requested","seq":"0","mono_ns":1,"wall_ns_utc":1,"reason":"x"}', "no integer 'seq'"),
        (b'{"type":"stop_requested","seq":0,"mono_ns":1,"wall_ns_utc":1}', "lacks field(s) reason"),
    ],
)
def test_decode_errors_say_why(line, reason):
    with pytest.raises(DecodeError) as err:
        decode(line)
    assert reason in str(err.value)


def test_reader_reports_line_numbers_and_torn_tail():
    good = [encode(LogRecord(i, i, i, EVENT_TYPES["stop_requested"](reason="r"))) for i in range(3)]
    data = good[0] + b"\x00\xffjunk\n" + good[1] + good[2] + b'{"type":"stop_req'
    read = parse_runlog_bytes(data)
    assert [r.seq for r in read.records] == [0, 1, 2]
    assert [(b.line_no, b.torn_tail) for b in read.bad_lines] == [(2, False), (5, True)]
    assert read.seq_gaps == []


def test_reader_reports_seq_gaps():
    lines = [encode(LogRecord(s, s, s, EVENT_TYPES["stop_requested"](reason="r"))) for s in (0, 1, 3)]
    assert parse_runlog_bytes(b"".join(lines)).seq_gaps == [(2, 3)]


def _wrong_values(t) -> list:
    """JSON values that do not fit the annotation t (each a different way to be wrong)."""
    origin = typing.get_origin(t) or t
    if origin is typing.Annotated:
        return _wrong_values(typing.get_args(t)[0]) + ["abc", "-1"]
    if t is bool:
        return [1, "true", None]
    if t is int:
        return ["7", 7.5, True, None, [7]]
    if t is float:
        return ["1.5", None, False]
    if t is str:
        return [7, None, ["x"], {"x": 1}]
    if origin is list:
        return ["ab", {"a": 1}, [None], [["x"]]]
    if origin is dict:
        k, v = typing.get_args(t)
        wrong_keys = ["abc", "-1", "1.5"] if typing.get_origin(k) is typing.Annotated else []
        return (["zz", [["0", 1]]] + [{key: sample_value(v)} for key in wrong_keys]
                + [{sample_value(k): value} for value in _wrong_values(v)])
    if t is typing.Any:
        return []
    if origin in (types.UnionType, typing.Union):
        return [value for value in ("x", None, [1]) if not any(_fits_plainly(value, a) for a in typing.get_args(t))]
    raise AssertionError(f"no wrong value for {t}")


def _fits_plainly(value, t) -> bool:
    return isinstance(value, t) and not (t is int and isinstance(value, bool))


def _wrong_field_lines():
    for name, cls in sorted(EVENT_TYPES.items()):
        body = orjson.loads(encode(LogRecord(1, 2, 3, sample(cls))))
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(cls):
            for value in _wrong_values(hints[f.name]):
                yield pytest.param(orjson.dumps({**body, f.name: value}), f.name, id=f"{name}.{f.name}={value!r}")


@pytest.mark.parametrize("line, field_name", list(_wrong_field_lines()))
def test_a_field_of_the_wrong_type_is_a_bad_line(line, field_name):
    """Every consumer of a record trusts its types (sums counters, int() of shard keys, .items()
    of a dict): a line whose field does not fit its declared type is refused here, named, like
    one that is not JSON, instead of crashing a fold later."""
    with pytest.raises(DecodeError) as err:
        decode(line)
    assert repr(field_name) in str(err.value)


@pytest.mark.parametrize("key", ["seq", "mono_ns", "wall_ns_utc"])
def test_an_envelope_bool_is_not_an_integer(key):
    line = encode(LogRecord(0, 1, 2, EVENT_TYPES["stop_requested"](reason="r"))).replace(f'"{key}":'.encode(), f'"{key}":true,"_x":'.encode())
    with pytest.raises(DecodeError):
        decode(line)
