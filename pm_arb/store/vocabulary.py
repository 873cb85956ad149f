"""The words every command's JSON uses (README "JSON documents"): one key per quantity.

- every document printed by `--json`, and every JSON report pm_arb writes for people to read
  back (latency_report.json, check.json), starts with `schema_version`;
- a check's outcome is `verdict`: "PASS" or "FAIL" (a gate's own outcome is `pass`:
  true, false, or null when not checked or not applicable);
- drops over a run are `dropped_messages_total` (the spec's name);
- per-shard figures are a list of objects, each with an integer `shard`, in shard order;
- a wall time is integer ns in a key ending `_wall_ns_utc` (monotonic: `_mono_ns`), its
  ISO-8601 form in a key ending `_utc`; a duration ends in its unit: `_s`, `_ms`, `_us`.

The bundle's own files (runlog, metrics, manifest) keep their formats (ADR/0001): they are
written while capturing and read by the folds, not documents of a command.
"""

from __future__ import annotations

from typing import Any, Mapping

SCHEMA_VERSION = 1


def document(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A command's JSON document: schema_version first, then the body."""
    return {"schema_version": SCHEMA_VERSION, **{k: v for k, v in doc.items() if k != "schema_version"}}


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def shard_list(by_shard: Mapping[Any, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """{"0": {...}, "1": {...}} -> [{"shard": 0, ...}, {"shard": 1, ...}], in shard order."""
    return [{"shard": int(s), **v} for s, v in sorted(by_shard.items(), key=lambda kv: int(kv[0]))]
