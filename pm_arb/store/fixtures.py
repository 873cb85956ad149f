"""Fixture sets for offline capture: `markets.json` (Gamma rows) and `frames.ndjson` (WS frames).

A frames line is {"t_ms": offset, "market": condition id or null, "text": "..."} for a text
frame or {"t_ms", "market", "b64": "..."} for a binary one. `market: null` frames (PONG) go to
every shard; the others go to the shard of their market.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import orjson

from pm_arb.errors import UserError
from pm_arb.store.frames_format import OPCODE_BINARY, OPCODE_TEXT

DEFAULT_FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "default"


@dataclass(frozen=True)
class FixtureFrame:
    t_ns: int
    opcode: int
    payload: bytes
    market: str | None


@dataclass(frozen=True)
class FixtureSet:
    path: Path
    gamma_rows: list
    frames: list[FixtureFrame]


def default_fixture_dir() -> Path:
    if (DEFAULT_FIXTURES / "markets.json").is_file():
        return DEFAULT_FIXTURES
    raise UserError("the bundled fixture set is missing; pass --fixtures DIR (a dir with markets.json and frames.ndjson)", 2)


def load_fixture_set(path: str | Path | None) -> FixtureSet:
    d = Path(path) if path else default_fixture_dir()
    markets_file, frames_file = d / "markets.json", d / "frames.ndjson"
    for f in (markets_file, frames_file):
        if not f.is_file():
            raise UserError(f"fixture set {d} has no {f.name}: a fixture dir holds markets.json and frames.ndjson", 2)
    try:
        rows = orjson.loads(markets_file.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise UserError(f"{markets_file} is not valid JSON ({exc})", 2) from None
    if isinstance(rows, dict) and isinstance(rows.get("markets"), list):
        rows = rows["markets"]
    if not isinstance(rows, list):
        raise UserError(f"{markets_file} must hold a JSON array of Gamma market objects", 2)
    frames = []
    for n, line in enumerate(frames_file.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
            t_ns = int(float(obj["t_ms"]) * 1_000_000)
            if "b64" in obj:
                payload, opcode = base64.b64decode(obj["b64"]), OPCODE_BINARY
            else:
                payload, opcode = obj["text"].encode("utf-8"), OPCODE_TEXT
            market = obj.get("market")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"{frames_file}:{n}: not a fixture frame line ({exc.__class__.__name__}: {exc})", 2) from None
        frames.append(FixtureFrame(t_ns, opcode, payload, market))
    frames.sort(key=lambda f: f.t_ns)
    return FixtureSet(d, rows, frames)


def frames_by_shard(fixture: FixtureSet, shard_of: dict[str, int], shards: int) -> dict[int, list[FixtureFrame]]:
    """Each shard's share of the fixture frames: its markets' frames (by the placement's
    condition id -> shard map) plus the broadcast ones."""
    out: dict[int, list[FixtureFrame]] = {s: [] for s in range(shards)}
    active_shards = set(shard_of.values())
    for f in fixture.frames:
        if f.market is None:
            for s in active_shards:
                out[s].append(f)
        elif f.market in shard_of:
            out[shard_of[f.market]].append(f)
    return out
