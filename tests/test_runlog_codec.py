"""One codec for every event type; readers report bad lines by number and tolerate a torn tail."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from pm_arb.events.codec import DecodeError, LogRecord, decode, encode
from pm_arb.events.runlog_file import parse_runlog_bytes
from pm_arb.events.types import EVENT_TYPES

SPEC_RECORDS = {"universe_refresh", "shard_refresh_begin", "shard_refresh_applied", "universe_refresh_error", "heartbeat",
                "run_start", "run_stop", "fatal", "shard_reconnect"}
SPEC_REFRESH_FIELDS = {"duration_ms", "reason", "added_count", "removed_count", "churn_pct", "interval_seconds_used",
                       "gamma_pages_fetched", "markets_seen", "tokens_selected"}


def sample(cls) -> object:
    values = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        origin = typing.get_origin(t) or t
        if t is bool:
            values[f.name] = True
        elif t is int:
            values[f.name] = 7
        elif t is float:
            values[f.name] = 1.5
        elif t is str:
            values[f.name] = "x\u00e9\n\"q\""
        elif origin is list:
            values[f.name] = ["a", "b"]
        elif origin is dict:
            values[f.name] = {"0": {"frames": 3}}
        else:
            raise AssertionError(f"no sample for {cls.__name__}.{f.name}: {t}")
    return cls(**values)


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
