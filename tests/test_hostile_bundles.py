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


def rewrite_manifest(run_dir, change) -> None:
    path = run_dir / "manifest.json"
    doc = orjson.loads(path.read_bytes())
    change(doc)
    path.write_bytes(orjson.dumps(doc))


def _first_market(doc):
    return doc["universe"]["markets"][0]


# A manifest that is JSON but not what capture writes: (change, what the error names)
MANIFEST_SHAPES = {
    "universe a string": (lambda d: d.__setitem__("universe", "x"), "'universe'"),
    "universe null": (lambda d: d.__setitem__("universe", None), "'universe'"),
    "markets an object": (lambda d: d["universe"].__setitem__("markets", {"a": 1}), "'universe.markets'"),
    "a market a number": (lambda d: d["universe"]["markets"].__setitem__(0, 7), "'universe.markets[0]'"),
    "a market token a number": (lambda d: _first_market(d).__setitem__("yes_token", 12), "'universe.markets[0].yes_token'"),
    "a market shard as text": (lambda d: _first_market(d).__setitem__("shard", "2"), "'universe.markets[0].shard'"),
    "shard_token_counts a list": (lambda d: d["universe"].__setitem__("shard_token_counts", [1]), "'universe.shard_token_counts'"),
    "start time as text": (lambda d: d.__setitem__("started_wall_ns_utc", "yesterday"), "'started_wall_ns_utc'"),
    "config a list": (lambda d: d.__setitem__("config", []), "'config'"),
    "slice_of a string": (lambda d: d.__setitem__("slice_of", "x"), "'slice_of'"),
}


def _manifest_a_directory(run_dir):
    (run_dir / "manifest.json").unlink()
    (run_dir / "manifest.json").mkdir()


@pytest.mark.parametrize("kind", sorted(MANIFEST_SHAPES) + ["a directory"])
def test_a_manifest_of_the_wrong_shape_is_named_by_every_reader(run_copy, kind):
    """The manifest is read by one function; what it returns is what capture wrote, or an error
    naming the field, so no reader crashes on it or quietly reads a smaller universe."""
    if kind == "a directory":
        _manifest_a_directory(run_copy)
        named = "is not a file"
    else:
        change, named = MANIFEST_SHAPES[kind]
        rewrite_manifest(run_copy, change)
    for cmd in ("capture-inspect", "capture-export"):
        extra = ["--out", str(run_copy.parent / "out")] if cmd == "capture-export" else []
        line = assert_one_line_error(run_cli(cmd, "--run-dir", str(run_copy), *extra), 1)
        assert "manifest.json" in line and named in line, line
    # The frames do not depend on the manifest: verify still checks them, and says what it could not.
    proc = run_cli("capture-verify", "--run-dir", str(run_copy))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, (proc.stdout, proc.stderr)
    assert "note: files not checked against the runlog's frame counts: " in proc.stdout and named in proc.stdout, proc.stdout
