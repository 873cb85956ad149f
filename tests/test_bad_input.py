"""Bad arguments and bad files for every command: exit 1 or 2 with one clear line, never a traceback."""

from __future__ import annotations

import struct

import pytest
import xxhash

from tests.conftest import assert_one_line_error, run_cli

RUN_READERS = ["capture-verify", "capture-inspect", "capture-audit", "capture-latency-report", "capture-check", "capture-replay"]


def newer_version_header(magic: bytes, shard: int) -> bytes:
    head = struct.pack("<8sHH", magic, 9, shard)
    return head + struct.pack("<I", xxhash.xxh32_intdigest(head))


def damage(run_dir, kind):
    frames = run_dir / "capture" / "shard_00.frames"
    if kind == "empty frames file":
        frames.write_bytes(b"")
    elif kind == "frames file is a directory":
        frames.unlink()
        frames.mkdir()
    elif kind == "wrong magic":
        frames.write_bytes(b"NOTPMARB" + frames.read_bytes()[8:])
    elif kind == "newer format version":
        frames.write_bytes(newer_version_header(b"PMARBFRM", 0) + frames.read_bytes()[16:])
    elif kind == "truncated idx":
        idx = run_dir / "capture" / "shard_00.idx"
        idx.write_bytes(idx.read_bytes()[:100])
    elif kind == "runlog binary junk":
        (run_dir / "runlog.ndjson").write_bytes((run_dir / "runlog.ndjson").read_bytes() + b"\x00\xff\xfe\x80junk\n")
    elif kind == "runlog missing":
        (run_dir / "runlog.ndjson").unlink()
    elif kind == "runlog is a directory":
        (run_dir / "runlog.ndjson").unlink()
        (run_dir / "runlog.ndjson").mkdir()
    elif kind == "manifest garbage":
        (run_dir / "manifest.json").write_bytes(b"{not json")
    else:
        raise AssertionError(kind)


# (damage, command) -> (exit code, fragment of the last stderr line or of stdout)
CASES = {
    ("empty frames file", "capture-verify"): (1, "shorter than its 16-byte header"),
    ("empty frames file", "capture-inspect"): (1, "could not be read"),
    ("frames file is a directory", "capture-verify"): (1, "cannot read shard_00.frames"),
    # A damaged header is reported, and the records behind it are still read.
    ("wrong magic", "capture-verify"): (1, "shard_00.frames has a damaged header (magic b'NOTPMARB'"),
    ("wrong magic", "capture-inspect"): (1, "damaged header"),
    ("wrong magic", "capture-check"): (1, "FAIL  crc_mismatch"),
    ("newer format version", "capture-verify"): (1, "upgrade pm_arb"),
    ("truncated idx", "capture-verify"): (1, "--repair"),
    ("runlog binary junk", "capture-audit"): (1, "--skip-bad-lines"),
    ("runlog binary junk", "capture-latency-report"): (1, "--skip-bad-lines"),
    ("runlog binary junk", "capture-check"): (1, "--skip-bad-lines"),
    ("runlog binary junk", "capture-replay"): (1, "--skip-bad-lines"),
    ("runlog missing", "capture-audit"): (2, "runlog.ndjson not found"),
    ("runlog missing", "capture-replay"): (2, "runlog.ndjson not found"),
    ("runlog missing", "capture-check"): (2, "runlog.ndjson not found"),
    ("runlog is a directory", "capture-audit"): (2, "runlog.ndjson not found"),
    ("manifest garbage", "capture-inspect"): (1, "manifest.json is not readable JSON"),
    # The frames still verify; only the runlog comparison is off, and verify says why.
    ("manifest garbage", "capture-verify"): (0, "not checked against the runlog's frame counts: manifest.json is not readable JSON"),
    ("runlog missing", "capture-verify"): (0, "not checked against the runlog's frame counts: /"),
}


@pytest.mark.parametrize("kind, cmd", sorted(CASES))
def test_bad_files(run_copy, kind, cmd):
    damage(run_copy, kind)
    code, fragment = CASES[(kind, cmd)]
    proc = run_cli(cmd, "--run-dir", str(run_copy))
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert fragment in proc.stdout + proc.stderr


@pytest.mark.parametrize("cmd", RUN_READERS)
def test_run_dir_that_is_a_file(cmd, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert "is not a directory" in assert_one_line_error(run_cli(cmd, "--run-dir", str(f)), 2)


@pytest.mark.parametrize("cmd", ["capture-verify", "capture-audit", "capture-check", "capture-replay"])
def test_empty_run_dir(cmd, tmp_path):
    proc = run_cli(cmd, "--run-dir", str(tmp_path))
    line = assert_one_line_error(proc, 2)
    assert "capture/*.frames" in line or "runlog.ndjson not found" in line


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (["capture", "--offline", "--fixtures", "/nonexistent/fx"], 2, "has no markets.json"),
        (["capture", "--offline", "--sim"], 2, "--sim and --offline are exclusive"),
        (["capture", "--offline", "--run-id", "../escape"], 2, "invalid --run-id"),
        (["capture", "--offline", "--run-id", ""], 2, "invalid --run-id"),
        (["capture", "--bogus-flag"], 2, "No such option"),
        (["capture-verify"], 2, "Missing option '--run-dir'"),
        (["capture-bench", "--frames", "0"], 2, "Invalid value for '--frames'"),
        (["capture-bench", "--out", "/nonexistent/dir/bench.json"], 2, "directory /nonexistent/dir does not exist"),
        (["capture-audit", "--run-dir", ".", "--gap-threshold-seconds", "-1"], 2, "Invalid value for '--gap-threshold-seconds'"),
        (["capture-replay", "--run-dir", ".", "--until-seq", "x"], 2, "Invalid value for '--until-seq'"),
        (["discover", "--gamma-base-url", "ftp://x"], 2, "expected an http:// or https:// URL"),
        (["sim-exchange", "--port", "70000"], 2, "Invalid value for '--port'"),
        (["no-such-command"], 2, "No such command"),
    ],
)
def test_bad_arguments(args, code, fragment, data_dir):
    proc = run_cli(*args, env={"PM_ARB_DATA_DIR": str(data_dir)})
    line = assert_one_line_error(proc, code)
    assert fragment in line, line


def test_bad_fixture_files(tmp_path, data_dir):
    fx = tmp_path / "fx"
    fx.mkdir()
    (fx / "markets.json").write_text("[]")
    (fx / "frames.ndjson").write_text('{"t_ms": 1, "market": null, "text": "PONG"}\n{"t_ms": "soon"}\n')
    proc = run_cli("capture", "--offline", "--fixtures", str(fx), "--data-dir", str(data_dir))
    assert "frames.ndjson:2: not a fixture frame line" in assert_one_line_error(proc, 2)
    (fx / "markets.json").write_text("{oops")
    proc = run_cli("capture", "--offline", "--fixtures", str(fx), "--data-dir", str(data_dir))
    assert "markets.json is not valid JSON" in assert_one_line_error(proc, 2)


def test_universe_with_no_markets_is_a_clean_fatal(tmp_path, data_dir):
    fx = tmp_path / "fx"
    fx.mkdir()
    (fx / "markets.json").write_text("[]")
    (fx / "frames.ndjson").write_text("")
    proc = run_cli("capture", "--offline", "--fixtures", str(fx), "--data-dir", str(data_dir), "--run-id", "empty")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "FATAL (universe_empty)" in proc.stderr
    assert (data_dir / "runs" / "empty" / "fatal.json").exists()


def test_sim_exchange_port_in_use():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        proc = run_cli("sim-exchange", "--port", str(s.getsockname()[1]))
        assert "choose another --port" in assert_one_line_error(proc, 2)
    finally:
        s.close()
