"""Which Gamma markets are captured (ADR/0003); which shard carries each: universe/placement.py."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

import orjson


@dataclass(frozen=True)
class Market:
    id: str
    condition_id: str
    question: str
    slug: str
    yes_token: str
    no_token: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _json_list(value: Any) -> list | None:
    """Gamma sends outcomes/clobTokenIds as strings holding JSON arrays; tolerate real arrays too."""
    if isinstance(value, list):
        return value
    if isinstance(value, str) and value.strip():
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, list) else None
    return None


def rejection(row: Any) -> str | None:
    """Why a Gamma market row is not an active binary YES/NO market, or None when it is."""
    if not isinstance(row, dict):
        return "not an object"
    if row.get("active") is not True:
        return "not active"
    if row.get("closed") is not False:
        return "closed"
    if row.get("archived") is True:
        return "archived"
    if row.get("enableOrderBook") is not True:
        return "no order book"
    if row.get("acceptingOrders") is False:
        return "not accepting orders"
    outcomes = _json_list(row.get("outcomes"))
    if outcomes is None or [str(o).strip().lower() for o in outcomes] != ["yes", "no"]:
        return "outcomes are not exactly Yes/No"
    tokens = _json_list(row.get("clobTokenIds"))
    if tokens is None or len(tokens) != 2 or not all(isinstance(t, str) and t.strip() for t in tokens):
        return "not two token ids"
    if not isinstance(row.get("conditionId"), str) or not row["conditionId"]:
        return "no condition id"
    return None


def to_market(row: dict) -> Market:
    tokens = _json_list(row["clobTokenIds"]) or []
    return Market(
        id=str(row.get("id", "")),
        condition_id=row["conditionId"],
        question=str(row.get("question") or ""),
        slug=str(row.get("slug") or ""),
        yes_token=tokens[0].strip(),
        no_token=tokens[1].strip(),
    )


def _order_key(m: Market) -> tuple:
    # Oldest Gamma id first: a stable order, so a capped universe changes only at its edge.
    # ASCII digits only: str.isdigit() is also true of "²", which int() refuses.
    return (0, int(m.id), m.condition_id) if m.id.isascii() and m.id.isdigit() else (1, 0, m.id + m.condition_id)


def select_markets(rows: Iterable[Any], max_markets: int) -> tuple[list[Market], dict[str, int]]:
    """Active binary markets, deduplicated by condition id, in a deterministic order, capped."""
    rejected: dict[str, int] = {}
    by_condition: dict[str, Market] = {}
    for row in rows:
        why = rejection(row)
        if why is not None:
            rejected[why] = rejected.get(why, 0) + 1
            continue
        m = to_market(row)
        by_condition.setdefault(m.condition_id, m)
    # A token is one subscription on one shard: a market naming the same token twice, or a
    # token another market already holds (the older Gamma id keeps it), is not captured.
    ordered = []
    owner: set[str] = set()
    for m in sorted(by_condition.values(), key=_order_key):
        why = "yes and no token are the same" if m.yes_token == m.no_token else None
        if why is None and (m.yes_token in owner or m.no_token in owner):
            why = "token held by another market"
        if why is not None:
            rejected[why] = rejected.get(why, 0) + 1
            continue
        owner.update((m.yes_token, m.no_token))
        ordered.append(m)
    if len(ordered) > max_markets:
        rejected["over capture_max_markets"] = len(ordered) - max_markets
    return ordered[:max_markets], rejected
