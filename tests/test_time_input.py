"""The time forms a window accepts (pm_arb/commands/time_input.py): pure, no run needed."""

from __future__ import annotations

import pytest

from pm_arb.commands.time_input import parse_time, resolve
from pm_arb.errors import UserError

S = 1_000_000_000
# 2026-11-24T12:50:00Z and 2026-11-24T13:10:00Z
START = 1_795_524_600 * S
END = START + 20 * 60 * S


def at(text: str, start: int = START, end: int = END) -> int:
    return resolve(parse_time(text, "--from-wall"), start, end)


def test_iso_and_integer_ns_are_absolute():
    assert at("2026-11-24T12:50:00Z") == START
    assert at("2026-11-24T12:50:00") == START  # naive means UTC
    assert at("2026-11-24T13:50:00+01:00") == START
    assert at(str(START + 7)) == START + 7
    assert at("2026-11-24T12:50:00.000001Z") == START + 1_000


def test_offsets_count_from_the_runs_start_or_end():
    assert at("+10s") == START + 10 * S
    assert at("-5m") == END - 300 * S
    assert at("+1m30s") == START + 90 * S
    assert at("+1.5s") == START + 1_500_000_000  # exact, no float rounding
    assert at("+250ms") == START + 250_000_000
    assert at("-0s") == END and at("+0s") == START
    assert at("+2h") == START + 7200 * S


def test_time_of_day_is_on_the_runs_date_and_across_midnight_on_the_next():
    assert at("12:52:30") == START + 150 * S
    assert at("12:52:30.5Z") == START + 150 * S + S // 2
    assert at("12:52") == START + 120 * S
    # a run from 23:50 to 00:20: 00:05 means the next day, 23:55 the first
    late = START + (11 * 3600) * S  # 23:50
    assert at("00:05", late, late + 30 * 60 * S) == late + 15 * 60 * S
    assert at("23:55", late, late + 30 * 60 * S) == late + 5 * 60 * S
    # before a run that does not cross midnight: still that day (the slice then says it misses)
    assert at("08:00:00") == START - (4 * 3600 + 50 * 60) * S


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("yesterday", "expected ISO-8601"),
        ("+10", "needs a unit"),
        ("-5", "needs a unit"),
        ("+5x", "expected ISO-8601"),
        ("25:00", "not a time of day"),
        ("12:61:00", "not a time of day"),
        ("", "expected ISO-8601"),
    ],
)
def test_bad_times_say_which_forms_are_accepted(text, fragment):
    with pytest.raises(UserError) as exc:
        parse_time(text, "--to-wall")
    assert fragment in exc.value.message and "--to-wall" in exc.value.message and exc.value.exit_code == 2



@pytest.mark.parametrize("text", ["999999999999999999999999999", "-999999999999999999999999999", "9999-12-31T23:59:59Z"])
def test_absolute_times_outside_a_records_range_are_refused(text):
    with pytest.raises(UserError, match="signed 64-bit"):
        parse_time(text, "--from-wall")


@pytest.mark.parametrize("text", ["\u00b2", "\u0661\u0662", "+\u0661s", "\u0661\u0662:30"])
def test_only_ascii_digits_are_numbers(text):
    with pytest.raises(UserError, match="expected ISO-8601"):
        parse_time(text, "--from-wall")
