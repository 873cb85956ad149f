"""Whether a universe refresh is applied, and the next interval (MASTER.md section 8). Pure."""

from __future__ import annotations

from dataclasses import dataclass

from pm_arb.config import Config


@dataclass(frozen=True)
class RefreshDecision:
    reason: str  # "applied" | "no_change" | "below_min_delta" | "churn_guard"
    applied: bool
    added: frozenset[str]
    removed: frozenset[str]
    churn_pct: float
    consecutive_churn_guards: int
    next_interval_seconds: float
    fatal: bool


def decide(current: set[str], fresh: set[str], cfg: Config, consecutive_guards: int, interval_used: float) -> RefreshDecision:
    added = frozenset(fresh - current)
    removed = frozenset(current - fresh)
    delta = len(added) + len(removed)
    churn = round(100.0 * delta / max(1, len(current)), 3)
    base = cfg.capture_universe_refresh_interval_seconds

    def out(reason: str, applied: bool, guards: int, interval: float, fatal: bool = False) -> RefreshDecision:
        return RefreshDecision(reason, applied, added, removed, churn, guards, interval, fatal)

    if delta == 0:
        return out("no_change", False, 0, base)
    if delta < cfg.capture_universe_refresh_min_delta_tokens:
        return out("below_min_delta", False, 0, base)
    if churn > cfg.capture_universe_refresh_max_churn_pct:
        guards = consecutive_guards + 1
        backoff = min(cfg.capture_universe_refresh_max_interval_seconds, max(interval_used, base) * 2)
        return out("churn_guard", False, guards, backoff, guards >= cfg.capture_universe_refresh_churn_guard_consecutive_fatal)
    return out("applied", True, 0, base)
