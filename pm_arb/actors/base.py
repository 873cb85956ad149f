"""PlantActor: the one base class of pm_arb's actors, so that no message and no crash vanishes.

pykka alone does not end the run when an actor fails (jodal/pykka `_actor.py`): an exception in
a `tell` handler stops that actor (`on_failure` runs after it is unregistered) while the others
go on, and every later `tell` to it raises ActorDeadError in its peers; an exception in an `ask`
handler goes back to the caller and the actor goes on; an exception in `on_start` stops it
without `on_failure`. And every `on_receive` used to end in a silent `return None`.

Here `on_receive` and `on_start` run the actor's own `receive` / `setup` and catch what they
raise: a crash. The actor logs one line, reports `ActorCrashed` (actor, shard, message type,
traceback) to the supervisor, which ends the run as fatal `actor_crash`, and from then on handles
only its `ENDGAME` messages (those that bring the run to its end: stop, flush, fatal bundle,
close) and drops the rest. It stays alive on purpose: no peer meets a dead actor, a crashed shard
can still stop its reader, and a crashed writer can still write fatal.json and fsync.
Exceptions an actor raises on purpose as the answer to an `ask` (`ANSWERS`: the universe's
GammaError) still go to the caller, as in pykka.
Each actor's last branch calls `unknown(msg)`: a message it has no branch for is logged,
counted and reported, and the supervisor records it as an `unknown_message` event.
"""

from __future__ import annotations

import logging
import traceback as tb
from typing import Any

import pykka

from pm_arb.actors import messages as m

log = logging.getLogger("pm_arb.actors")


class InjectedCrash(RuntimeError):
    """Raised by the test-only `InjectCrash` hook."""


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class PlantActor(pykka.ThreadingActor):
    # Messages the actor still handles after it crashed; everything else is dropped.
    ENDGAME: tuple[type, ...] = ()
    # Where crashes and unknown messages are reported; actors that have one set it.
    supervisor: Any = None
    # Exceptions that are an answer, not a crash: raised on purpose to the caller of an `ask`.
    ANSWERS: tuple[type[Exception], ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.crash: m.ActorCrashed | None = None
        self.crashes = 0
        self.dropped_after_crash = 0
        self.unknown_messages: dict[str, int] = {}
        self._inject: list[Any] | None = None

    # -- identity -----------------------------------------------------------------------------
    @property
    def actor_name(self) -> str:
        """The plant's class name (WriterActor...), also for a subclass a test derives from it."""
        for cls in type(self).__mro__:
            if cls.__module__.startswith("pm_arb.actors.") and cls is not PlantActor:
                return cls.__name__
        return type(self).__name__

    @property
    def shard_no(self) -> int:
        shard = getattr(self, "shard", -1)
        return shard if isinstance(shard, int) else -1

    # -- pykka's hooks, guarded ---------------------------------------------------------------
    def on_start(self) -> None:
        try:
            self.setup()
        except Exception as exc:
            self._crashed("on_start", exc)

    def on_receive(self, msg: Any) -> Any:
        if isinstance(msg, m.InjectCrash):
            self._inject = [msg.message_type, msg.nth]
            return None
        if self.crash is not None and not isinstance(msg, self.ENDGAME):
            self.dropped_after_crash += 1
            return None
        try:
            if self._inject is not None and type(msg).__name__ == self._inject[0]:
                self._inject[1] -= 1
                if self._inject[1] <= 0:
                    self._inject = None
                    raise InjectedCrash(f"injected crash in {self.actor_name} on {type(msg).__name__} (test hook)")
            return self.receive(msg)
        except self.ANSWERS:
            raise
        except Exception as exc:
            self._crashed(type(msg).__name__, exc)
            return None

    def on_failure(self, exc_type, exc_value, exc_tb) -> None:
        # Reached only if the crash handling itself raised: pykka has stopped the actor by now.
        log.error("%s%s stopped: its crash handling failed: %r", self.actor_name, self._where(), exc_value)

    # -- what subclasses provide --------------------------------------------------------------
    def setup(self) -> None:
        """Work at start, on the actor's thread (pykka's on_start)."""

    def receive(self, msg: Any) -> Any:
        raise NotImplementedError

    def after_crash(self, report: m.ActorCrashed, first: bool) -> None:
        """React to this actor's own crash (on its thread). By default: tell the supervisor once."""
        if first:
            self.report(report)

    def report(self, msg: Any) -> None:
        if self.supervisor is not None:
            try:
                self.supervisor.tell(msg)
            except pykka.ActorDeadError:
                log.error("%s%s: the supervisor is gone; cannot report %s", self.actor_name, self._where(), type(msg).__name__)

    # -- unknown messages and crashes ---------------------------------------------------------
    def unknown(self, msg: Any) -> None:
        name = type(msg).__name__
        count = self.unknown_messages[name] = self.unknown_messages.get(name, 0) + 1
        # The 1st, 2nd, 4th, 8th... of a kind: a bug that sends one per frame cannot flood the runlog.
        if _is_power_of_two(count):
            log.error("%s%s got a message it does not handle: %s (%d so far)", self.actor_name, self._where(), name, count)
            self.report(m.UnknownMessage(self.actor_name, self.shard_no, name, count))

    def _where(self) -> str:
        return f" (shard {self.shard_no:02d})" if self.shard_no >= 0 else ""

    def _crashed(self, message_type: str, exc: Exception) -> None:
        first = self.crash is None
        self.crashes += 1
        report = m.ActorCrashed(
            actor=self.actor_name,
            shard=self.shard_no,
            message_type=message_type,
            error=f"{type(exc).__name__}: {exc}",
            traceback="".join(tb.format_exception(type(exc), exc, exc.__traceback__)),
        )
        if first:
            self.crash = report
            log.error("actor crash: %s%s handling %s: %s; the run ends as fatal actor_crash (traceback in fatal.json)",
                      self.actor_name, self._where(), message_type, report.error)
        elif _is_power_of_two(self.crashes - 1):  # the 2nd, 3rd, 5th, 9th...: a crash per message cannot flood stderr
            log.error("%s%s crashed again handling %s after its crash (%d times): %s",
                      self.actor_name, self._where(), message_type, self.crashes - 1, report.error)
        self.after_crash(report, first)
