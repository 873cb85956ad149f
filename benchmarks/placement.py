"""Benchmark: placement of markets on connections (ADR/0007), by simulation of universes.

    uv run python benchmarks/placement.py [--universes 20] [--refreshes 60] [--churn-pct 2]

For random universes (random 64-hex condition ids, as Gamma's) it compares the old rule
(`xxh64(condition_id) % ws_shards`, no cap) with bounded-load rendezvous placement at several
balance slacks: connections, busiest shard's tokens and busiest / mean, markets on their
favourite shard, and, over a sequence of refreshes that delist and list `churn-pct` of the
markets each time, how many connections each refresh reconnects. Pure computation, no sockets.
Writes benchmarks/results/placement.json.
"""

from __future__ import annotations

import argparse
import random
import statistics
from dataclasses import dataclass

import xxhash
from _harness import machine, save, table

from pm_arb.universe.placement import PlacementRules, balance, place, preference


@dataclass(frozen=True)
class Mk:
    condition_id: str
    yes_token: str
    no_token: str


def new_market(rng: random.Random) -> Mk:
    cid = "0x" + "%064x" % rng.getrandbits(256)
    return Mk(cid, cid + "y", cid + "n")


def old_rule_busiest(markets: list[Mk], shards: int) -> int:
    loads = [0] * shards
    for m in markets:
        loads[xxhash.xxh64_intdigest(m.condition_id.encode()) % shards] += 2
    return max(loads)


def run(markets_n: int, cap: int, min_shards: int, slack: float, universes: int, refreshes: int, churn_pct: float) -> dict:
    busiest, ratio, favourite, reconnects, opened, old_busiest = [], [], [], [], [], []
    for u in range(universes):
        rng = random.Random(u)
        rules = PlacementRules(cap_tokens=cap, min_shards=min_shards, slack=slack)
        listed = [new_market(rng) for _ in range(markets_n)]
        old_busiest.append(old_rule_busiest(listed, min_shards))
        change = place(None, listed, rules)
        p = change.placement
        b = balance(p.token_loads())
        busiest.append(b["busiest_tokens"])
        ratio.append(b["busiest_over_mean"])
        favourite.append(sum(1 for cid, s in p.shard_of.items() if preference(cid, p.shards)[0] == s) / markets_n)
        for _ in range(refreshes):
            k = max(1, int(markets_n * churn_pct / 100))
            for i in sorted(rng.sample(range(len(listed)), k), reverse=True):
                del listed[i]
            listed += [new_market(rng) for _ in range(k)]
            change = place(p, listed, rules)
            p = change.placement
            reconnects.append(len(change.changed_shards()))
            opened.append(len(change.opened))
        ratio.append(balance(p.token_loads())["busiest_over_mean"])
    return {
        "markets": markets_n, "cap": cap, "min_shards": min_shards, "slack": slack,
        "old_rule_busiest_median": statistics.median(old_busiest), "old_rule_busiest_max": max(old_busiest),
        "connections": p.shards, "busiest_tokens_max": max(busiest),
        "busiest_over_mean_max": max(ratio), "on_favourite_pct": round(100 * statistics.mean(favourite), 1),
        "reconnects_per_refresh": round(statistics.mean(reconnects), 2) if reconnects else 0,
        "shards_opened_midrun": sum(opened),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--universes", type=int, default=20)
    ap.add_argument("--refreshes", type=int, default=60)
    ap.add_argument("--churn-pct", type=float, default=2.0)
    args = ap.parse_args()
    rows = []
    for markets_n, cap, min_shards in ((24, 400, 8), (300, 400, 8), (1200, 400, 8), (2000, 400, 8), (2000, 500, 8)):
        for slack in (0.0, 0.1, 0.25, 0.5, 1.0):
            rows.append(run(markets_n, cap, min_shards, slack, args.universes, args.refreshes, args.churn_pct))
    cols = [(k, k) for k in rows[0]]
    print(table(rows, cols))
    path = save("placement", {"machine": machine(), "universes": args.universes, "refreshes": args.refreshes, "churn_pct": args.churn_pct, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
