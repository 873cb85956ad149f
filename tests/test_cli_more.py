"""capture-bench and sim-exchange as real subprocesses; the WebSocket reader against a dead port."""

from __future__ import annotations

import signal

import orjson
import requests

from pm_arb.actors.gauge import DepthGauge
from pm_arb.actors.messages import ReaderEvent, ReaderFinished
from pm_arb.capture.reader_sink import ReaderSink
from pm_arb.capture.ws_reader import WsReader
from pm_arb.clock import SystemClock
from pm_arb.config import Config
from pm_arb.events import types as ev
from tests.conftest import run_cli, start_sim_exchange


def test_capture_bench_reports_pipeline_and_baseline(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli("capture-bench", "--frames", "5000", "--shards", "2", "--rounds", "2", "--json", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = orjson.loads(proc.stdout)
    assert orjson.loads(out.read_bytes()) == doc and doc["machine"]["cpus"] >= 1
    assert len(doc["per_round"]) == 2 and doc["ratio_vs_plain_append"] in [r["ratio_vs_plain_append"] for r in doc["per_round"]]
    assert doc["frames"] >= 5000 and doc["verify"]["crc_mismatch"] == 0 and doc["dropped_messages_total"] == 0
    assert doc["pipeline"]["frames_per_s"] > 0 and doc["baseline"]["plain_append"]["frames_per_s"] > 0
    assert doc["ratio_vs_plain_append"] == round(doc["pipeline"]["frames_per_s"] / doc["baseline"]["plain_append"]["frames_per_s"], 3)
    assert doc["peak_rss_mb"]["after_pipeline"] > 0 and doc["ws_rx_to_applied_ms"]["count"] == doc["frames"]
    text = run_cli("capture-bench", "--frames", "3000", "--shards", "1")
    assert "ratio pipeline / plain append" in text.stdout and "frames/s" in text.stdout


def test_sim_exchange_serves_gamma_and_prints_its_urls():
    proc, gamma, ws = start_sim_exchange("--markets", "12", "--rate", "0")
    try:
        assert gamma.startswith("http://127.0.0.1:") and ws == gamma.replace("http://", "ws://") + "/ws/market"
        page = requests.get(gamma + "/markets/keyset", params={"limit": 5}, timeout=5).json()
        assert len(page["markets"]) == 5 and "next_cursor" in page
        assert isinstance(page["markets"][0]["clobTokenIds"], str)
        deep = requests.get(gamma + "/markets", params={"offset": 2001}, timeout=5)
        assert deep.status_code == 422 and "keyset" in deep.json()["error"]
        assert requests.get(gamma + "/markets/keyset", params={"offset": 5}, timeout=5).status_code == 422
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
    assert proc.returncode == 0


class Collector:
    def __init__(self):
        self.got = []

    def tell(self, msg):
        self.got.append(msg)


def test_ws_reader_records_connect_failure_and_backoff():
    got = []
    config = Config(clob_ws_url="ws://127.0.0.1:9/ws/market", ws_reconnect_backoff_initial_seconds=0.01,
                    ws_reconnect_backoff_max_seconds=0.02, ws_connect_timeout_seconds=1)
    writer = Collector()
    sink = ReaderSink(0, got.append, writer, SystemClock(), DepthGauge(), 100, DepthGauge(), 100, 10, 1.0, 1)
    reader = WsReader(0, ("t1",), sink, got.append, SystemClock(), config)
    reader.start()
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sum(isinstance(m, ReaderEvent) and isinstance(m.event, ev.ShardReconnect) for m in got) < 3:
        time.sleep(0.01)
    reader.request_stop()
    reader.join(5)
    events = [m.event for m in got if isinstance(m, ReaderEvent)]
    fails = [e for e in events if isinstance(e, ev.ShardDisconnected)]
    recs = [e for e in events if isinstance(e, ev.ShardReconnect)]
    assert fails and all(e.cause == "connect_failed" and not e.planned and "Connection refused" in e.detail for e in fails)
    assert [e.backoff_seconds for e in recs[:3]] == [0.01, 0.02, 0.02]
    assert isinstance(got[-1], ReaderFinished)
