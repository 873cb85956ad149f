"""UniverseActor: the token universe, its placement on shards, and periodic refresh from Gamma.

Placement (which shard carries each market) is `universe.placement.place`: a refresh keeps every
listed market where it is, places new ones, and opens shards when the cap needs them (ADR/0007).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from pm_arb.actors import messages as m
from pm_arb.actors.base import PlantActor
from pm_arb.clock import Clock
from pm_arb.config import Config
from pm_arb.events import types as ev
from pm_arb.universe.gamma import GammaError
from pm_arb.universe.refresh_policy import decide
from pm_arb.universe.placement import Placement, PlacementRules, place
from pm_arb.universe.select import Market, select_markets

# fetch_rows(deadline_seconds | None) -> (rows, pages_fetched); raises GammaError
RowsFetcher = Callable[[float | None], tuple[list, int]]


class UniverseActor(PlantActor):
    ANSWERS = (GammaError,)  # LoadUniverse's answer when Gamma cannot be read: the CLI says so

    def __init__(self, config: Config, clock: Clock, supervisor, fetch_rows: RowsFetcher, refresh_enabled: bool) -> None:
        super().__init__()
        self.config = config
        self.clock = clock
        self.supervisor = supervisor
        self.fetch_rows = fetch_rows
        self.refresh_enabled = refresh_enabled
        self.markets: list[Market] = []
        self.rules = PlacementRules.of(config)
        self.placement = Placement()
        self.interval_s = config.capture_universe_refresh_interval_seconds
        self.next_refresh_ns: int | None = None
        self.consecutive_guards = 0
        self.last_stats: dict[str, Any] = {}

    def receive(self, msg: Any) -> Any:
        if isinstance(msg, m.LoadUniverse):
            return self._load()
        if isinstance(msg, m.Tick):
            due = self.next_refresh_ns
            if self.refresh_enabled and due is not None and self.clock.mono_ns() >= due:
                self._refresh(due)
        else:
            self.unknown(msg)
        return None

    def _load(self) -> dict[str, Any]:
        rows, pages = self.fetch_rows(None)
        self.markets, rejected = select_markets(rows, self.config.capture_max_markets)
        change = place(None, self.markets, self.rules)
        self.placement = change.placement
        self.next_refresh_ns = self.clock.mono_ns() + int(self.interval_s * 1e9)
        self.last_stats = {"gamma_pages_fetched": pages, "markets_seen": len(rows), "rejected": rejected}
        return {"markets": self.markets, "shard_tokens": change.placement.shard_tokens(), "placement": change, **self.last_stats}

    def _emit(self, event: ev.Event) -> None:
        self.supervisor.tell(m.Emit(self.clock.mono_ns(), self.clock.wall_ns(), event))

    def _next_due(self, due: int) -> int:
        """The next refresh, an interval after this one was due (not after it ran, which would
        add the fetch time and up to a tick to every interval); after a fetch slower than the
        interval (a Gamma hanging up to the refresh timeout), half an interval from now, so a
        hanging Gamma is not asked again back to back."""
        interval_ns = int(self.interval_s * 1e9)
        return max(due + interval_ns, self.clock.mono_ns() + interval_ns // 2)

    def _refresh(self, due: int) -> None:
        cfg = self.config
        started = time.monotonic()
        interval_used = self.interval_s
        try:
            rows, pages = self.fetch_rows(cfg.capture_universe_refresh_timeout_seconds)
        except GammaError as exc:
            self._emit(ev.UniverseRefreshError(duration_ms=round((time.monotonic() - started) * 1e3, 3), error=exc.kind, message=exc.message))
            self.next_refresh_ns = self._next_due(due)
            return
        markets, _ = select_markets(rows, cfg.capture_max_markets)
        current = {t for pair in self.placement.tokens_of.values() for t in pair}
        fresh = {t for mk in markets for t in (mk.yes_token, mk.no_token)}
        d = decide(current, fresh, cfg, self.consecutive_guards, interval_used)
        self.consecutive_guards = d.consecutive_churn_guards
        self.interval_s = d.next_interval_seconds
        self.next_refresh_ns = self._next_due(due)
        self._emit(
            ev.UniverseRefresh(
                duration_ms=round((time.monotonic() - started) * 1e3, 3),
                reason=d.reason,
                added_count=len(d.added),
                removed_count=len(d.removed),
                churn_pct=d.churn_pct,
                interval_seconds_used=interval_used,
                gamma_pages_fetched=pages,
                markets_seen=len(rows),
                tokens_selected=len(fresh),
                applied=d.applied,
                consecutive_churn_guards=d.consecutive_churn_guards,
                next_interval_seconds=d.next_interval_seconds,
                added_tokens=sorted(d.added),
                removed_tokens=sorted(d.removed),
            )
        )
        if d.fatal:
            self.supervisor.tell(
                m.FatalCondition(
                    "churn_guard",
                    f"universe churn exceeded {cfg.capture_universe_refresh_max_churn_pct:g}% on "
                    f"{d.consecutive_churn_guards} consecutive refreshes (last {d.churn_pct:g}%)",
                )
            )
            return
        if not d.applied:
            return
        change = place(self.placement, markets, self.rules)
        self.markets, self.placement = markets, change.placement
        assigned = {cid for cid, *_ in change.assigned}
        self.supervisor.tell(
            m.ApplyRefresh(
                shard_tokens=change.placement.shard_tokens(),
                changed=change.changed_shards(),
                added_tokens=sorted(d.added),
                markets=len(markets),
                placement=change,
                listing={mk.condition_id: mk for mk in markets if mk.condition_id in assigned},
            )
        )
