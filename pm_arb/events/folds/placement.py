"""Which shard carried which market and token, at any point of a run: a pure fold (ADR/0007).

Built from `market_assigned` / `market_released` (every placement decision, one line each) and
`shards_planned` / `shard_opened` (how many connections were open). `fold(records, until_seq)`
gives the map as it stood at that runlog seq; a live run's placement equals the fold of its
runlog.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from pm_arb.events import types as ev
from pm_arb.events.codec import LogRecord
from pm_arb.universe.placement import Placement, PlacementChange, balance


@dataclass
class PlacementState:
    placement: Placement = field(default_factory=Placement)  # the same map the live universe actor holds
    shards_min: int = 0
    cap_tokens: int = 0
    assignments: int = 0
    releases: int = 0
    opened_midrun: list[int] = field(default_factory=list)

    def token_shard(self) -> dict[str, int]:
        p = self.placement
        return {t: p.shard_of[cid] for cid, pair in p.tokens_of.items() for t in pair}

    def to_dict(self) -> dict[str, Any]:
        loads = self.placement.token_loads()
        return {
            "shards": self.placement.shards,
            "shards_min": self.shards_min,
            "cap_tokens": self.cap_tokens,
            "markets": len(self.placement.shard_of),
            "shard_token_counts": self.placement.shard_token_counts(),
            "balance": balance(loads),
            "assignments": self.assignments,
            "releases": self.releases,
            "opened_midrun": list(self.opened_midrun),
        }


def apply(state: PlacementState, rec: LogRecord) -> PlacementState:
    e = rec.event
    p = state.placement
    if isinstance(e, ev.MarketAssigned):
        p.shard_of[e.condition_id] = e.shard
        p.tokens_of[e.condition_id] = (e.yes_token, e.no_token)
        state.assignments += 1
    elif isinstance(e, ev.MarketReleased):
        p.shard_of.pop(e.condition_id, None)
        p.tokens_of.pop(e.condition_id, None)
        state.releases += 1
    elif isinstance(e, ev.ShardsPlanned):
        p.shards, state.shards_min, state.cap_tokens = e.shards, e.shards_min, e.cap_tokens
    elif isinstance(e, ev.ShardOpened):
        p.shards = max(p.shards, e.shards)
        state.opened_midrun.append(e.shard)
    return state


def fold(records: Iterable[LogRecord], until_seq: int | None = None) -> PlacementState:
    state = PlacementState()
    for rec in records:
        if until_seq is not None and rec.seq > until_seq:
            break
        apply(state, rec)
    return state


def placement_events(change: PlacementChange, reason: str, listing: Mapping[str, Any] | None = None) -> list[ev.Event]:
    """The runlog lines of one placement step, releases first (so a market whose token ids
    changed is released, then assigned again to the same shard). `fold` is their inverse.
    `listing` (condition id -> Gamma market) adds question, slug and id to each assignment."""
    listing = listing or {}
    out: list[ev.Event] = []
    assigned = {cid for cid, *_ in change.assigned}
    for cid, shard in change.released:
        out.append(ev.MarketReleased(condition_id=cid, shard=shard, reason="tokens_changed" if cid in assigned else "delisted"))
    for cid, shard, yes, no in change.assigned:
        m = listing.get(cid)
        out.append(ev.MarketAssigned(condition_id=cid, shard=shard, yes_token=yes, no_token=no, reason=reason,
                                     question=str(getattr(m, "question", "") or ""), slug=str(getattr(m, "slug", "") or ""),
                                     gamma_id=str(getattr(m, "id", "") or "")))
    return out


def token_shards_between(records: Iterable[LogRecord], mono_from: int, mono_to: int) -> dict[str, int]:
    """Every token that was on a shard at some point of [mono_from, mono_to], with its shard:
    the placement as it stood at mono_from plus the assignments inside the window (a market
    keeps its shard while listed, so a token has one shard in any window)."""
    state = PlacementState()
    out: dict[str, int] = {}
    for rec in records:
        if rec.mono_ns > mono_to:
            break
        if rec.mono_ns < mono_from:
            apply(state, rec)
            continue
        if not out:
            out = state.token_shard()
        e = rec.event
        if isinstance(e, ev.MarketAssigned):
            out[e.yes_token] = out[e.no_token] = e.shard
    return out or state.token_shard()
