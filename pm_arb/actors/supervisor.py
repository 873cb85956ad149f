"""SupervisorActor: the run's lifecycle, the one runlog appender, and the decider of fatal.

Its state is `SupervisorState`, changed only by `apply` on the records it appends (it is the
single appender, so every fact passes through here). Decisions — confirm, fatal, stop — read
that state and are themselves recorded as events, so a replay of the runlog rebuilds them.
"""

from __future__ import annotations

from typing import Any, Callable

from pm_arb import __version__
from pm_arb.actors import messages as m
from pm_arb.actors.base import PlantActor
from pm_arb.clock import Clock
from pm_arb.config import Config
from pm_arb.events import types as ev
from pm_arb.events.codec import LogRecord, encode
from pm_arb.events.folds.placement import placement_events
from pm_arb.events.folds.supervisor_state import SupervisorState, apply
from pm_arb.universe.placement import PlacementRules, balance, plan_summary

STOP_GRACE_SECONDS = 15.0
EXIT_OK = 0
EXIT_FATAL = 1


class SupervisorActor(PlantActor):
    # After its own crash it still records, decides the fatal, stops the shards and finishes.
    ENDGAME = (m.ActorCrashed, m.UnknownMessage, m.Emit, m.ShardStatus, m.Tick, m.FatalCondition,
               m.RequestStop, m.ShardStopped, m.GetStatus, m.AttachPeers, m.FinishRun)

    def __init__(self, run_id: str, mode: str, config: Config, clock: Clock, on_done: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self.run_id = run_id
        self.mode = mode
        self.config = config
        self.clock = clock
        self.on_done = on_done
        self.state = SupervisorState()
        self._next_seq = 0
        self.writer = None
        self.shards: dict[int, Any] = {}
        self.open_shard: Callable[[int], Any] | None = None
        self.started_shards: set[int] = set()
        self.stopped_shards: set[int] = set()
        self.latest_status: dict[int, m.ShardStatus] = {}
        self._stop_deadline_ns: int | None = None
        self._finished = False
        self._finishing = False  # run_stop is on its way (FinishRun)
        self.exit_code: int | None = None
        # What happened before AttachPeers gave us a writer (an actor that crashed in its
        # setup, say): kept, and written as soon as there is one, never dropped.
        self._unsent: list[bytes] = []
        self._unsent_bundle: tuple[dict[str, Any], list] | None = None

    # -- the one appender ------------------------------------------------------------------
    def _record(self, event: ev.Event, mono_ns: int | None = None, wall_ns: int | None = None) -> LogRecord:
        rec = LogRecord(
            self._next_seq,
            self.clock.mono_ns() if mono_ns is None else mono_ns,
            self.clock.wall_ns() if wall_ns is None else wall_ns,
            event,
        )
        self._next_seq += 1
        apply(self.state, rec)
        if self.writer is not None:
            self.writer.tell(m.AppendRunlog(encode(rec)))
        else:
            self._unsent.append(encode(rec))
        self._decide_after(rec)
        return rec

    def _decide_after(self, rec: LogRecord) -> None:
        e = rec.event
        st = self.state
        if isinstance(e, ev.ShardConfirmed) and st.phase == "confirming":
            active = st.active_shards()
            if active and all(st.shards[s].confirmed for s in active):
                secs = (rec.mono_ns - (st.started_mono_ns or rec.mono_ns)) / 1e9
                self._record(ev.RunConfirmed(seconds_after_start=round(secs, 3)))
        elif isinstance(e, ev.ShardSourceExhausted) and st.phase in ("confirming", "running"):
            active = st.active_shards()
            if all(st.shards[s].source_exhausted for s in active):
                self._begin_stop("source_exhausted")

    # -- messages --------------------------------------------------------------------------
    def receive(self, msg: Any) -> Any:
        if isinstance(msg, m.Emit):
            if not self._finished:
                self._record(msg.event, msg.mono_ns, msg.wall_ns)
        elif isinstance(msg, m.ShardStatus):
            self.latest_status[msg.shard] = msg
        elif isinstance(msg, m.Tick):
            self._on_tick(msg)
        elif isinstance(msg, m.FatalCondition):
            self._fatal(msg.reason, msg.message, msg.shard)
        elif isinstance(msg, m.RequestStop):
            self._begin_stop(msg.reason)
        elif isinstance(msg, m.ShardStopped):
            self.stopped_shards.add(msg.shard)
            self._maybe_finish()
        elif isinstance(msg, m.ApplyRefresh):
            self._apply_refresh(msg)
        elif isinstance(msg, m.StartRun):
            self._start(msg)
        elif isinstance(msg, m.AttachPeers):
            self._attach(msg)
        elif isinstance(msg, m.GetStatus):
            return self.status()
        elif isinstance(msg, m.ActorCrashed):
            self._actor_crashed(msg)
        elif isinstance(msg, m.FinishRun):
            self._finish_run(msg.frames_written)
        elif isinstance(msg, m.UnknownMessage):
            if not self._finished:
                self._record(ev.UnknownMessage(actor=msg.actor, shard=msg.shard, message_type=msg.message_type, count=msg.count))
        else:
            self.unknown(msg)
        return None

    def _attach(self, msg: m.AttachPeers) -> None:
        self.writer = msg.writer
        self.shards = dict(msg.shards)
        self.open_shard = msg.open_shard
        for line in self._unsent:
            self.writer.tell(m.AppendRunlog(line))
        self._unsent.clear()
        if self._unsent_bundle is not None:
            self._write_fatal_bundle(*self._unsent_bundle)
            self._unsent_bundle = None
        if self._stop_deadline_ns is not None:  # a stop or fatal came first: now it can finish
            self._stop_shards()

    # -- crashes (actors/base.py) ----------------------------------------------------------
    def report(self, msg: Any) -> None:
        self.actor_ref.tell(msg)  # the supervisor reports to itself, as the next message

    def after_crash(self, report: m.ActorCrashed, first: bool) -> None:
        if first:
            self.report(report)
        elif not self._finished and self.on_done is not None:
            # Crashed again while ending the run: give up, so the process ends; the CLI then
            # stops the actors and the writer closes (fsync) in its on_stop.
            self._finished = True
            self.on_done(EXIT_FATAL)

    def _actor_crashed(self, msg: m.ActorCrashed) -> None:
        if self._finished:
            return  # after run_stop: nothing left to record; base.py has logged it
        self._record(ev.ActorCrashed(actor=msg.actor, shard=msg.shard, message_type=msg.message_type, error=msg.error, traceback=msg.traceback))
        where = f" (shard {msg.shard:02d})" if msg.shard >= 0 else ""
        details = {"actor": msg.actor, "message_type": msg.message_type, "error": msg.error, "traceback": msg.traceback}
        self._fatal("actor_crash", f"{msg.actor}{where} crashed handling {msg.message_type}: {msg.error}", msg.shard, details)

    def _start(self, msg: m.StartRun) -> None:
        if self._finished or self._stop_deadline_ns is not None:
            return  # a fatal (an actor crashed in its setup) or a stop came before the start
        cfg = self.config
        self._record(
            ev.RunStart(
                run_id=self.run_id,
                mode=self.mode,
                pm_arb_version=__version__,
                shards=max(cfg.ws_shards, len(msg.shard_tokens)),
                confirm_timeout_seconds=cfg.capture_confirm_timeout_seconds,
                confirm_min_events=cfg.capture_confirm_min_events,
                heartbeat_interval_seconds=cfg.heartbeat_interval_seconds,
            )
        )
        tokens_total = sum(len(t) for t in msg.shard_tokens.values())
        if msg.placement is not None:
            self._record_plan(msg.placement, msg.markets, tokens_total)
        self._record(
            ev.UniverseAssigned(
                reason="start",
                shard_tokens={str(s): list(t) for s, t in sorted(msg.shard_tokens.items())},
                markets=msg.markets,
                tokens=tokens_total,
            )
        )
        if tokens_total == 0:
            self._fatal("universe_empty", "the universe has no active binary markets: nothing to capture (check the Gamma URL and filters)")
            return
        now = self.clock.mono_ns()
        active = self.state.active_shards()
        # Connections open one every ws_connect_stagger_seconds; the last one gets the full
        # confirm timeout too.
        gap_ns = int(cfg.ws_connect_stagger_seconds * 1e9)
        deadline = now + int(cfg.capture_confirm_timeout_seconds * 1e9) + gap_ns * max(0, len(active) - 1)
        self._record(ev.ConfirmBegin(deadline_mono_ns=deadline, shards=active))
        self._heartbeat()
        for k, s in enumerate(active):
            self.started_shards.add(s)
            self.shards[s].tell(m.StartShard(tuple(self.state.shards[s].tokens), now + k * gap_ns))

    def _record_plan(self, change, markets: int, tokens: int) -> None:
        """shards_planned, then one market_assigned per market: the placement at start."""
        plan = plan_summary(markets, change.placement, PlacementRules.of(self.config))
        self._record(
            ev.ShardsPlanned(
                shards=plan["shards"], shards_min=plan["shards_min"], markets=markets, tokens=tokens, cap_tokens=plan["cap_tokens"],
                reason=plan["reason"], busiest_tokens=plan["busiest_tokens"], mean_tokens=plan["mean_tokens"],
            )
        )
        for e in placement_events(change, "start"):
            self._record(e)

    def _on_tick(self, tick: m.Tick) -> None:
        now = self.clock.mono_ns()
        st = self.state
        if st.phase == "confirming" and st.confirm_deadline_mono_ns is not None and now >= st.confirm_deadline_mono_ns:
            waiting = [s for s in st.active_shards() if not st.shards[s].confirmed]
            if waiting:
                self._fatal(
                    "confirm_timeout",
                    f"shard(s) {', '.join(f'{s:02d}' for s in waiting)} saw fewer than "
                    f"{self.config.capture_confirm_min_events} market event(s) within "
                    f"{self.config.capture_confirm_timeout_seconds:g} s of the last connection opening"
                    + (f" (connections open {self.config.ws_connect_stagger_seconds:g} s apart)" if len(st.active_shards()) > 1 and self.config.ws_connect_stagger_seconds else ""),
                )
        if st.phase in ("starting", "confirming", "running", "stopping", "fatal") and not self._finished:
            self._heartbeat()
        if self._stop_deadline_ns is not None and now >= self._stop_deadline_ns and not self._finished:
            self._finish()

    def _heartbeat(self) -> None:
        shards = {}
        frames_total = 0
        dropped_total = 0
        for s in sorted(self.state.shards):
            st = self.latest_status.get(s)
            if st is None:
                continue
            shards[str(s)] = {
                "connected": st.connected,
                "frames": st.frames,
                "bytes": st.bytes,
                "market_events": st.market_events,
                "control_frames": st.control_frames,
                "not_json_frames": st.not_json_frames,
                "dropped": st.dropped,
                "write_q_depth": st.write_q_depth,
            }
            frames_total += st.frames
            dropped_total += st.dropped
        self._record(
            ev.Heartbeat(
                phase=self.state.phase,
                shards=shards,
                frames_total=frames_total,
                dropped_total=dropped_total,
                coverage_pct=self.state.coverage_pct(),
            )
        )

    def _fatal(self, reason: str, message: str, shard: int = -1, details: dict[str, Any] | None = None) -> None:
        if self.state.phase in ("fatal", "stopped") or self._finished:
            return
        rec = self._record(ev.Fatal(reason=reason, message=message, shard=shard))
        doc = {
            "run_id": self.run_id,
            "reason": reason,
            "message": message,
            "shard": shard,
            "seq": rec.seq,
            "mono_ns": rec.mono_ns,
            "wall_ns_utc": rec.wall_ns_utc,
            "state": self.state.to_dict(),
            "config": self.config.snapshot(),
            **(details or {}),
        }
        owner = {t: s for s, v in self.state.shards.items() for t in v.tokens}
        missing = [{"token": t, "shard": owner.get(t, -1)} for t in self.state.missing_tokens()]
        if self.writer is not None:
            self._write_fatal_bundle(doc, missing)
        else:
            self._unsent_bundle = (doc, missing)
        self.exit_code = EXIT_FATAL
        self._stop_shards()

    def _write_fatal_bundle(self, doc: dict[str, Any], missing: list) -> None:
        try:
            self.writer.ask(m.WriteFatalBundle(doc, missing), timeout=30)
        except Exception:  # the writer may be what failed; fatal.json is best effort then
            pass

    def _begin_stop(self, reason: str) -> None:
        if self.state.phase in ("stopping", "stopped", "fatal") or self._finished:
            return
        self._record(ev.StopRequested(reason=reason))
        self.exit_code = EXIT_OK
        self._stop_shards()

    def _stop_shards(self) -> None:
        self._stop_deadline_ns = self.clock.mono_ns() + int(STOP_GRACE_SECONDS * 1e9)
        for s in sorted(self.started_shards - self.stopped_shards):
            self.shards[s].tell(m.StopShard())
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        # Not before AttachPeers: without the writer nothing could be flushed or closed.
        if self.writer is not None and self._stop_deadline_ns is not None and self.started_shards <= self.stopped_shards:
            self._finish()

    def _finish(self) -> None:
        if self._finished or self._finishing:
            return
        self._finishing = True
        self._heartbeat()
        frames_written: dict[str, int] = {}
        if self.writer is not None:
            try:
                reply = self.writer.ask(m.FlushMetrics(), timeout=15)
            except Exception:
                reply = None
            if isinstance(reply, dict):
                frames_written = dict(reply.get("frames_written", {}))
        # run_stop comes as the next message, not now: an actor that crashed while the writer
        # flushed (on a batch still queued there) has told us so by now, and that crash must
        # still make this run fatal.
        self.actor_ref.tell(m.FinishRun(frames_written))

    def _finish_run(self, frames_written: dict[str, int]) -> None:
        if self._finished:
            return
        st = self.state
        duration = (self.clock.mono_ns() - (st.started_mono_ns or self.clock.mono_ns())) / 1e9
        frames = sum(s.frames for s in self.latest_status.values())
        nbytes = sum(s.bytes for s in self.latest_status.values())
        dropped = sum(s.dropped for s in self.latest_status.values())
        self._record(
            ev.RunStop(
                reason=st.fatal_reason and f"fatal: {st.fatal_reason}" or st.stop_reason or "stop",
                frames_total=frames,
                bytes_total=nbytes,
                dropped_total=dropped,
                duration_seconds=round(duration, 3),
                frames_written=frames_written,
            )
        )
        self._finished = True
        closed: Any = {}
        if self.writer is not None:
            try:
                closed = self.writer.ask(m.CloseWriter(), timeout=60)
            except Exception:
                closed = None
        code = self.exit_code if self.exit_code is not None else EXIT_OK
        if st.phase == "fatal" or not isinstance(closed, dict):  # not a dict: the writer crashed closing
            code = EXIT_FATAL
        if self.on_done is not None:
            self.on_done(code)

    def _apply_refresh(self, msg: m.ApplyRefresh) -> None:
        if self.state.phase not in ("confirming", "running"):
            return
        cfg = self.config
        now = self.clock.mono_ns()
        change = msg.placement
        if change is not None:
            for e in placement_events(change, "refresh", msg.listing):
                self._record(e)
            self._open_shards(change, msg.markets)
        self._record(
            ev.UniverseAssigned(
                reason="refresh",
                shard_tokens={str(s): list(t) for s, t in sorted(msg.shard_tokens.items())},
                markets=msg.markets,
                tokens=sum(len(t) for t in msg.shard_tokens.values()),
                grace_tokens=sorted(msg.added_tokens),
                grace_until_mono_ns=now + int(cfg.capture_universe_refresh_grace_seconds * 1e9),
            )
        )
        for k, s in enumerate(sorted(msg.changed)):
            added, removed = msg.changed[s]
            tokens = tuple(self.state.shards[s].tokens)
            not_before = now + int(k * cfg.capture_universe_refresh_stagger_seconds * 1e9)
            self.started_shards.add(s)
            self.shards[s].tell(m.SetTokens(tokens, not_before, added, removed))

    def _open_shards(self, change, markets: int) -> None:
        """A refresh grew the universe past what the open shards hold under the cap."""
        rules = PlacementRules.of(self.config)
        for s in change.opened:
            self._record(
                ev.ShardOpened(
                    shard=s, shards=s + 1, markets=markets, tokens=2 * markets, cap_tokens=rules.cap_tokens,
                    reason=f"{2 * markets:,} tokens need {change.shards_needed} connections of at most {rules.cap_tokens} tokens each",
                )
            )
            if self.open_shard is not None and s not in self.shards:
                self.shards[s] = self.open_shard(s)

    def status(self) -> dict[str, Any]:
        st = self.state
        return {
            "phase": st.phase,
            "started_mono_ns": st.started_mono_ns,
            "shards_active": len(st.active_shards()),
            "shards_connected": sum(1 for s in self.latest_status.values() if s.connected),
            "frames": sum(s.frames for s in self.latest_status.values()),
            "bytes": sum(s.bytes for s in self.latest_status.values()),
            "dropped": sum(s.dropped for s in self.latest_status.values()),
            "reconnects": sum(v.reconnects_unplanned for v in st.shards.values()),
            "coverage_pct": st.coverage_pct(),
            "fatal_reason": st.fatal_reason,
            "write_q_depth": sum(s.write_q_depth for s in self.latest_status.values()),
            "shards_open": len(st.shards),
            "balance": balance([len(v.tokens) for _s, v in sorted(st.shards.items())]),
        }
