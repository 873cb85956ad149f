"""Small surprises explained: shards with no tokens, more market events than frames."""

from __future__ import annotations

import orjson

from tests.conftest import run_cli


def test_shards_without_tokens_are_named_by_capture_and_verify(data_dir):
    cap = run_cli("capture", "--offline", "--offline-speed", "0", "--ws-shards", "30", "--run-id", "sparse", "--data-dir", str(data_dir))
    assert cap.returncode == 0, cap.stderr
    run_dir = data_dir / "runs" / "sparse"
    counts = orjson.loads((run_dir / "manifest.json").read_bytes())["universe"]["shard_token_counts"]
    empty = sorted(int(s) for s, n in counts.items() if n == 0)
    assert empty, "24 markets over 30 shards must leave some shard empty"
    assert f"{len(empty)} of 30 shards had no tokens" in cap.stderr
    doc = orjson.loads(run_cli("capture-verify", "--run-dir", str(run_dir), "--json").stdout)
    assert doc["shards_without_tokens"] == empty
    assert doc["totals"]["shards"] + len(empty) == 30
    text = run_cli("capture-verify", "--run-dir", str(run_dir), "--summary-only").stdout
    assert ", ".join(f"{s:02d}" for s in empty) in text and "had no tokens" in text


def test_replay_says_why_market_events_exceed_frames(offline_run):
    doc = orjson.loads(run_cli("capture-replay", "--run-dir", str(offline_run), "--json").stdout)
    more = [v["shard"] for v in doc["state"]["shards"] if v["market_events"] > v["frames"]]
    assert more, "the fixtures' initial dumps are arrays: one frame, many book messages"
    assert len(doc["notes"]) == 1 and "initial dump" in doc["notes"][0]
    text = run_cli("capture-replay", "--run-dir", str(offline_run)).stdout
    assert "note: market events count each message inside a frame" in text
