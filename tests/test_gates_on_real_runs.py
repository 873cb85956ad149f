"""capture-check on a clean real run, and on copies made bad in each of the five ways."""

from __future__ import annotations

import orjson
import pytest

from tests.conftest import run_cli


def rewrite_runlog(run_dir, edit):
    path = run_dir / "runlog.ndjson"
    recs = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    recs = edit(recs)
    for i, r in enumerate(recs):
        r["seq"] = i
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recs))


def insert_before_stop(recs, *new):
    i = next(k for k, r in enumerate(recs) if r["type"] == "stop_requested")
    base = recs[i - 1]
    extra = [{"seq": 0, "mono_ns": base["mono_ns"] + 1, "wall_ns_utc": base["wall_ns_utc"] + 1, **n} for n in new]
    return recs[:i] + extra + recs[i:]


def make_gap(run_dir):
    def edit(recs):
        for r in recs[[k for k, r in enumerate(recs) if r["type"] == "heartbeat"][-1]:]:
            r["mono_ns"] += 3_000_000_000
        return recs

    rewrite_runlog(run_dir, edit)


def make_reconnect(run_dir):
    rewrite_runlog(run_dir, lambda recs: insert_before_stop(
        recs,
        {"type": "shard_disconnected", "shard": 0, "cause": "server_close", "detail": "x", "planned": False},
        {"type": "shard_reconnect", "shard": 0, "attempt": 2, "backoff_seconds": 0.5, "cause": "server_close", "planned": False},
    ))


def make_drops(run_dir):
    rewrite_runlog(run_dir, lambda recs: insert_before_stop(
        recs, {"type": "frames_dropped", "shard": 1, "queue": "write_q", "dropped": 12, "dropped_total": 12, "capacity": 100}))


def make_crc(run_dir):
    p = run_dir / "capture" / "shard_02.frames"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x10
    p.write_bytes(data)


def make_fatal(run_dir):
    (run_dir / "fatal.json").write_text('{"reason": "confirm_timeout"}')


def test_clean_run_passes_every_gate(offline_run):
    proc = run_cli("capture-check", "--run-dir", str(offline_run))
    assert proc.returncode == 0, proc.stdout
    assert [ln.split()[0] for ln in proc.stdout.splitlines()[:5]] == ["PASS"] * 5
    assert proc.stdout.strip().endswith("verdict: PASS")


@pytest.mark.parametrize(
    "damage, gate",
    [(make_gap, "heartbeat_gaps"), (make_reconnect, "reconnects_midrun"), (make_drops, "drops"), (make_crc, "crc_mismatch"), (make_fatal, "fatal")],
)
def test_each_kind_of_bad_run_fails_exactly_its_gate(run_copy, damage, gate):
    damage(run_copy)
    proc = run_cli("capture-check", "--run-dir", str(run_copy), "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = orjson.loads(proc.stdout)
    assert doc["verdict"] == "FAIL"
    assert {k for k, g in doc["gates"].items() if g["pass"] is False} == {gate}
    text = run_cli("capture-check", "--run-dir", str(run_copy)).stdout
    assert f"FAIL  {gate}" in text


def test_malformed_runlog_line_is_reported_and_skipped_on_request(run_copy):
    p = run_copy / "runlog.ndjson"
    lines = p.read_bytes().splitlines(keepends=True)
    lines.insert(3, b"\x00\x01 not json\n")
    p.write_bytes(b"".join(lines))
    proc = run_cli("capture-audit", "--run-dir", str(run_copy))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "runlog.ndjson:4: not valid JSON" in proc.stderr and "--skip-bad-lines" in proc.stderr
    ok = run_cli("capture-audit", "--run-dir", str(run_copy), "--skip-bad-lines")
    assert ok.returncode == 0 and "runlog.ndjson:4: skipped: not valid JSON" in ok.stdout
    replay = orjson.loads(run_cli("capture-replay", "--run-dir", str(run_copy), "--skip-bad-lines", "--json").stdout)
    assert replay["state"]["phase"] == "stopped" and replay["warnings"][0].startswith("runlog.ndjson:4:")


def test_latency_report_writes_json_and_txt(run_copy):
    proc = run_cli("capture-latency-report", "--run-dir", str(run_copy))
    assert proc.returncode == 0, proc.stderr
    doc = orjson.loads((run_copy / "latency_report.json").read_bytes())
    assert (run_copy / "latency_report.txt").read_text().strip() == proc.stdout.strip()
    assert doc["ws_rx_to_applied_ms"]["count"] == 3075 and doc["verdict"] == "PASS"
    for key in ("p50", "p95", "p99", "max"):
        assert doc["ws_rx_to_applied_ms"][key] is not None
    assert set(doc["queue_depth"]) == {"ws_in_q_depth", "parse_q_depth", "write_q_depth"}
    assert doc["drops"]["dropped_messages_total"] == 0 and doc["reconnects"]["total"] == 0
    assert doc["disconnected"]["midrun"]["incidents"] == 0


def test_latency_report_exits_1_when_its_verdict_is_fail(run_copy):
    """ADR/0005: every command exits 1 when what it checked failed; the report's gates included."""
    make_drops(run_copy)
    proc = run_cli("capture-latency-report", "--run-dir", str(run_copy), "--no-books", "--json")
    doc = orjson.loads(proc.stdout)
    assert doc["verdict"] == "FAIL" and doc["gates"]["drops"]["pass"] is False
    assert proc.returncode == 1, proc.stderr
    assert orjson.loads((run_copy / "latency_report.json").read_bytes())["verdict"] == "FAIL"  # written all the same
