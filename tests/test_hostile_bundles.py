"""Hostile run bundles from outside: records of the wrong shape, damaged indexes and manifests,
odd arguments. Every read command answers with one line and exit 1 or 2, never a traceback,
and never reports less damage than there is. Real files and CLI subprocesses throughout."""

from __future__ import annotations

import orjson
import pytest

from tests.conftest import assert_one_line_error, run_cli


def rewrite_runlog(run_dir, type_name, change) -> int:
    """Apply change(record) to the first runlog record of that type; its 1-based line number."""
    path = run_dir / "runlog.ndjson"
    lines = path.read_bytes().splitlines(keepends=True)
    for i, line in enumerate(lines):
        rec = orjson.loads(line)
        if rec["type"] == type_name:
            change(rec)
            lines[i] = orjson.dumps(rec) + b"\n"
            path.write_bytes(b"".join(lines))
            return i + 1
    raise AssertionError(f"no {type_name} in {path}")


def _counters_as_text(rec):
    rec["shards"] = {"0": {"frames": "12", "connected": True}}


# (record type, change, field named, a command that read it unchecked and crashed)
WRONG_SHAPES = {
    "heartbeat counters as text": ("heartbeat", _counters_as_text, "shards", "capture-replay"),
    "run_stop count under a shard key that is no number": (
        "run_stop", lambda r: r.__setitem__("frames_written", {"abc": 5}), "frames_written", "capture-check"),
    "universe_assigned shard_tokens not an object": (
        "universe_assigned", lambda r: r.__setitem__("shard_tokens", "nope"), "shard_tokens", "capture-books"),
    "market_assigned token as a number": (
        "market_assigned", lambda r: r.__setitem__("yes_token", 5), "yes_token", "capture-replay"),
}


@pytest.mark.parametrize("kind", sorted(WRONG_SHAPES))
def test_a_runlog_record_of_the_wrong_shape_is_a_bad_line_named_by_number(run_copy, kind):
    type_name, change, field_name, cmd = WRONG_SHAPES[kind]
    line_no = rewrite_runlog(run_copy, type_name, change)
    line = assert_one_line_error(run_cli(cmd, "--run-dir", str(run_copy)), 1)
    assert f"runlog.ndjson:{line_no}: {type_name} line's field '{field_name}'" in line and "--skip-bad-lines" in line, line
    proc = run_cli(cmd, "--run-dir", str(run_copy), "--skip-bad-lines", "--json")
    assert "Traceback" not in proc.stderr and proc.returncode in (0, 1), proc.stderr
    assert f"runlog.ndjson:{line_no}: skipped: {type_name} line's field '{field_name}'" in proc.stdout, proc.stdout
