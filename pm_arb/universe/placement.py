"""Which connection (shard) carries each market: capped, stable, balanced (ADR/0007).

Pure: `place(previous, markets, rules)` returns the next placement and what changed, and the
supervisor records that as events, so a fold of the runlog rebuilds the same map.

The rules, in order of priority:
1. A shard never holds more than `cap_tokens` tokens; a market's two tokens share a shard.
2. A listed market keeps its shard. Only delisting frees a place; nothing is ever moved.
3. There are at least `min_shards` shards, and more when the markets need them under the cap.
   Shards are never closed during a run (a shard emptied by delistings just has no tokens).
4. A new market goes to its rendezvous-hash favourite (highest xxh64 of condition id and shard
   number) when that shard is below the balance bound, otherwise to its next favourite below it
   (bounded-load rendezvous hashing). The bound is `ceil((1 + slack) * mean)` markets per shard,
   never above the cap, so the busiest shard a placement fills stays near the mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

import xxhash


class PlacedMarket(Protocol):
    condition_id: str
    yes_token: str
    no_token: str


@dataclass(frozen=True)
class PlacementRules:
    cap_tokens: int  # ws_max_tokens_per_shard: never more tokens on one connection
    min_shards: int  # ws_shards
    slack: float = 0.1  # balance bound: a shard takes new markets while below (1 + slack) x mean (ADR/0007, measured)

    @property
    def cap_markets(self) -> int:
        return max(1, self.cap_tokens // 2)

    @classmethod
    def of(cls, config) -> "PlacementRules":
        """From a Config: ws_max_tokens_per_shard and ws_shards."""
        return cls(cap_tokens=config.ws_max_tokens_per_shard, min_shards=config.ws_shards)


@dataclass
class Placement:
    """condition id -> shard and -> (yes, no) tokens, and how many shards are open."""

    shard_of: dict[str, int] = field(default_factory=dict)
    tokens_of: dict[str, tuple[str, str]] = field(default_factory=dict)
    shards: int = 0

    def shard_tokens(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {s: [] for s in range(self.shards)}
        for cid, s in self.shard_of.items():
            out[s].extend(self.tokens_of[cid])
        return {s: sorted(t) for s, t in out.items()}

    def token_loads(self) -> list[int]:
        loads = [0] * self.shards
        for s in self.shard_of.values():
            loads[s] += 2
        return loads

    def shard_token_counts(self) -> list[dict[str, int]]:
        """Tokens per shard in the JSON vocabulary's per-shard shape (README "JSON documents")."""
        return [{"shard": s, "tokens": n} for s, n in enumerate(self.token_loads())]

    def copy(self) -> "Placement":
        return Placement(dict(self.shard_of), dict(self.tokens_of), self.shards)


@dataclass(frozen=True)
class PlacementChange:
    """One step: the placement after it, and every assignment and release it made."""

    placement: Placement
    assigned: list[tuple[str, int, str, str]]  # (condition id, shard, yes token, no token), in placement order
    released: list[tuple[str, int]]  # (condition id, shard it left)
    opened: list[int]  # shards this step opened (numbers from the previous count upwards)
    shards_needed: int  # ceil(markets / markets per shard under the cap)
    bound_markets: int  # the balance bound new markets were placed under

    def changed_shards(self) -> dict[int, tuple[int, int]]:
        """shard -> (tokens added, tokens removed), for the shards whose token set changed."""
        out: dict[int, list[int]] = {}
        for _cid, s, *_ in self.assigned:
            out.setdefault(s, [0, 0])[0] += 2
        for _cid, s in self.released:
            out.setdefault(s, [0, 0])[1] += 2
        return {s: (a, r) for s, (a, r) in sorted(out.items())}


def preference(condition_id: str, shards: int) -> list[int]:
    """The market's shards in order of preference: rendezvous (highest-random-weight) hashing.

    Unlike `hash % shards`, adding a shard changes the favourite of only ~1/shards of markets,
    and each market's fall-back order is its own, so overflow does not pile onto one neighbour.
    """
    key = condition_id.encode() + b"/"
    weights = [(xxhash.xxh64_intdigest(key + str(s).encode()), s) for s in range(shards)]
    weights.sort(reverse=True)
    return [s for _w, s in weights]


def shards_needed(markets: int, rules: PlacementRules) -> int:
    return max(rules.min_shards, math.ceil(markets / rules.cap_markets))


def place(previous: Placement | None, markets: Iterable[PlacedMarket], rules: PlacementRules) -> PlacementChange:
    """Place `markets` (the full listed universe, in a stable order) given the previous placement."""
    prev = previous or Placement()
    listed = {m.condition_id: m for m in markets}
    nxt = Placement(shards=prev.shards)
    released: list[tuple[str, int]] = []
    assigned: list[tuple[str, int, str, str]] = []
    for cid, s in prev.shard_of.items():
        m = listed.get(cid)
        if m is None:
            released.append((cid, s))
            continue
        nxt.shard_of[cid] = s
        nxt.tokens_of[cid] = tokens = (m.yes_token, m.no_token)
        if tokens != prev.tokens_of[cid]:  # same market, new token ids: it stays, its tokens change
            released.append((cid, s))
            assigned.append((cid, s, *tokens))
    needed = shards_needed(len(listed), rules)
    opened = list(range(prev.shards, max(prev.shards, needed)))
    nxt.shards = max(prev.shards, needed)
    n = nxt.shards
    # ceil(mean) <= bound <= cap, so n * bound >= markets: some shard is always below the bound.
    bound = min(rules.cap_markets, math.ceil((1 + rules.slack) * len(listed) / n)) if listed else 0
    load = [0] * n
    for s in nxt.shard_of.values():
        load[s] += 1
    for cid, m in listed.items():
        if cid in nxt.shard_of:
            continue
        s = next(s for s in preference(cid, n) if load[s] < bound)
        load[s] += 1
        nxt.shard_of[cid] = s
        nxt.tokens_of[cid] = (m.yes_token, m.no_token)
        assigned.append((cid, s, m.yes_token, m.no_token))
    return PlacementChange(nxt, assigned, released, opened, needed, bound)


def plan_text(markets: int, shards: int, rules: PlacementRules) -> str:
    """Why this many connections, in one line (start message, discover, shards_planned)."""
    tokens = 2 * markets
    if shards > rules.min_shards:
        return (f"{tokens:,} tokens need {shards} connections of at most {rules.cap_tokens} tokens each "
                f"(--ws-shards {rules.min_shards} is the minimum)")
    return f"{shards} connections (--ws-shards); {tokens:,} tokens fit at most {rules.cap_tokens} to a connection"


def plan_summary(markets: int, placement: Placement, rules: PlacementRules) -> dict[str, Any]:
    """The plan as reported at start (manifest, start-up line) and by `discover`."""
    return {
        "shards": placement.shards,
        "shards_min": rules.min_shards,
        "cap_tokens": rules.cap_tokens,
        "reason": plan_text(markets, placement.shards, rules),
        **balance(placement.token_loads()),
    }


def balance(token_loads: list[int]) -> dict[str, float | int]:
    """Busiest shard against the mean of the shards that carry tokens."""
    active = [t for t in token_loads if t]
    if not active:
        return {"shards_with_tokens": 0, "busiest_tokens": 0, "mean_tokens": 0.0, "busiest_over_mean": 0.0}
    mean = sum(active) / len(active)
    return {
        "shards_with_tokens": len(active),
        "busiest_tokens": max(active),
        "mean_tokens": round(mean, 1),
        "busiest_over_mean": round(max(active) / mean, 3),
    }
