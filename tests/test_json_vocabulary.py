"""One JSON vocabulary: every document says its schema_version, and the same quantity has the
same key in every command (pm_arb/store/vocabulary.py, README "JSON documents")."""

from __future__ import annotations

import orjson
import pytest

from tests.conftest import run_cli
from pm_arb.sim.exchange import SimExchange


@pytest.fixture(scope="module")
def documents(offline_run, tmp_path_factory):
    """Every reporting command's --json document, keyed by command."""
    tmp = tmp_path_factory.mktemp("vocab")
    data = tmp / "data"
    run = str(offline_run)
    docs = {}

    def take(name, *args, env=None):
        proc = run_cli(*args, "--json", env=env)
        assert proc.stdout, (name, proc.stderr)
        docs[name] = orjson.loads(proc.stdout)

    take("capture", "capture", "--offline", "--offline-speed", "0", "--ws-shards", "2", "--data-dir", str(data), "--run-id", "v")
    take("capture-verify", "capture-verify", "--run-dir", run)
    take("capture-inspect", "capture-inspect", "--run-dir", run)
    take("capture-audit", "capture-audit", "--run-dir", run)
    take("capture-latency-report", "capture-latency-report", "--run-dir", str(data / "runs" / "v"))
    take("capture-check", "capture-check", "--run-dir", str(data / "runs" / "v"))
    take("capture-replay", "capture-replay", "--run-dir", run)
    take("capture-books", "capture-books", "--run-dir", run)
    take("capture-slice", "capture-slice", "--run-dir", run, "--out", str(tmp / "cut"), "--from-seq", "0", "--to-seq", "3")
    take("capture-plot", "capture-plot", "--run-dir", run, "--out", str(tmp / "plot"))
    take("runs", "runs", "--data-dir", str(data))
    take("capture-export", "capture-export", "--run-dir", run, "--out", str(tmp / "export"), "--tables", "markets")
    take("capture-bench", "capture-bench", "--frames", "2000", "--shards", "2", "--rounds", "1")
    with SimExchange(markets=6, rate=0) as sim:
        take("discover", "discover", "--gamma-base-url", sim.gamma_url)
    docs["latency_report.json"] = orjson.loads((data / "runs" / "v" / "latency_report.json").read_bytes())
    docs["check.json"] = orjson.loads((data / "runs" / "v" / "check.json").read_bytes())
    return docs


def test_every_document_starts_with_its_schema_version(documents):
    assert len(documents) == 16
    for name, doc in documents.items():
        assert doc["schema_version"] == 1, name
        if not name.endswith(".json"):  # files are written with sorted keys; printed documents lead with it
            assert next(iter(doc)) == "schema_version", name


def test_a_checks_outcome_is_verdict_pass_or_fail_in_every_command(documents):
    for name in ("capture-verify", "capture-audit", "capture-latency-report", "capture-check", "check.json", "capture-books"):
        doc = documents[name]
        assert doc["verdict"] in ("PASS", "FAIL"), name
        assert "ok" not in doc and "pass" not in doc, name
    for gate in documents["capture-check"]["gates"].values():
        assert gate["pass"] in (True, False, None)  # one gate's own outcome
    (run,) = documents["runs"]["runs"]
    assert run["check"]["verdict"] == "PASS"


def test_drops_over_a_run_are_dropped_messages_total_everywhere(documents):
    assert documents["capture"]["dropped_messages_total"] == 0 and "dropped" not in documents["capture"]
    assert documents["capture-latency-report"]["drops"]["dropped_messages_total"] == 0
    assert documents["capture-replay"]["state"]["dropped_messages_total"] == 0 and "dropped_total" not in documents["capture-replay"]["state"]
    assert documents["capture-bench"]["dropped_messages_total"] == 0


PER_SHARD_KEYS = ("shards", "per_shard", "by_shard", "shard_token_counts")


def _per_shard_values(doc, path=""):
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k in PER_SHARD_KEYS and not isinstance(v, int):  # "shards": N is a count
                yield f"{path}.{k}", v
            yield from _per_shard_values(v, f"{path}.{k}")
    elif isinstance(doc, list):
        for v in doc:
            yield from _per_shard_values(v, path + "[]")


def test_per_shard_figures_are_one_shape_a_list_of_objects_with_an_integer_shard(documents):
    seen = set()
    for name, doc in documents.items():
        for path, value in _per_shard_values(doc):
            seen.add(f"{name}{path}")
            assert isinstance(value, list), (name, path)
            shards = [v["shard"] for v in value]
            assert all(isinstance(s, int) for s in shards) and shards == sorted(shards), (name, path)
    for expected in ("capture-latency-report.ws_rx_to_applied_ms.per_shard", "capture-latency-report.reconnects.per_shard",
                     "capture-latency-report.drops.by_shard", "capture-replay.state.shards", "capture-verify.shards",
                     "capture-inspect.shards", "capture-slice.shards", "discover.totals.shard_token_counts",
                     "capture-replay.placement.shard_token_counts"):
        assert expected in seen, expected
    assert documents["capture-replay"]["state"]["shards"][0]["shard"] == 0
    counts = documents["capture-replay"]["placement"]["shard_token_counts"]
    assert [c["shard"] for c in counts] == list(range(documents["capture-replay"]["placement"]["shards"]))
    assert sum(c["tokens"] for c in counts) == 2 * documents["capture-replay"]["placement"]["markets"]


def _shard_keyed_dicts(doc, path=""):
    """Objects keyed by a shard number ("0", "1", ...), whatever their key: the shape the vocabulary
    replaced (token ids are digit strings too, but far longer than any shard number)."""
    if isinstance(doc, dict):
        if doc and all(k.isdigit() and len(k) <= 4 for k in doc):
            yield path
        for k, v in doc.items():
            if k != "metrics_tail":  # capture-inspect shows metrics lines as the bundle stores them
                yield from _shard_keyed_dicts(v, f"{path}.{k}")
    elif isinstance(doc, list):
        for v in doc:
            yield from _shard_keyed_dicts(v, path + "[]")


def test_no_document_keys_an_object_by_shard_number(documents):
    for name, doc in documents.items():
        assert list(_shard_keyed_dicts(doc)) == [], name


def _keys(doc, out=None):
    out = set() if out is None else out
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.add(k)
            _keys(v, out)
    elif isinstance(doc, list):
        for v in doc:
            _keys(v, out)
    return out


def test_times_and_durations_carry_their_unit_in_the_key(documents):
    for name, doc in documents.items():
        for k in _keys(doc):
            assert not k.endswith("_seconds") and k not in ("seconds", "first_rx", "last_rx"), (name, k)
    shard = documents["capture-inspect"]["shards"][0]
    assert isinstance(shard["first_rx_wall_ns_utc"], int) and shard["first_rx_utc"].endswith("Z")
    assert documents["capture-latency-report"]["disconnected"]["midrun"]["total_s"] == 0.0


def test_the_same_gap_reads_the_same_in_check_and_audit(offline_run):
    audit = orjson.loads(run_cli("capture-audit", "--run-dir", str(offline_run), "--json").stdout)
    check = run_cli("capture-check", "--run-dir", str(offline_run)).stdout
    shown = f"{audit['max_gap_s']:.3f} s"
    assert f"max gap {shown}" in check
    assert f"max gap: {shown}" in run_cli("capture-audit", "--run-dir", str(offline_run)).stdout
