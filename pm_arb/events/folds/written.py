"""How many frames each shard's file must hold, as a pure fold over the runlog.

A checksum scan cannot see a shard file that was deleted, or one cut at a record boundary: what
is left verifies. The runlog can: every heartbeat carries, per shard, the frames handed off
(`frames`), those dropped instead (`dropped`) and those handed off but not yet written
(`write_q_depth`), read in that order on the shard's thread, and a reader counts a batch as
handed off only after it is queued or dropped; so frames - dropped - write_q_depth is a lower
bound on what the writer had appended at that heartbeat. `run_stop.frames_written` is the
writer's own exact count after its last flush. capture-verify compares the files with the
highest of these.

After a disk_full or write_error fatal, or a crash of the writer (`actor_crashed` by
WriterActor), the writer stops writing while shards still hand off frames, so heartbeats then
overstate the files; only run_stop's exact count is used there.
"""

from __future__ import annotations

from typing import Any, Iterable

from pm_arb.events import types as ev
from pm_arb.events.codec import LogRecord

WRITE_FAILURES = ("disk_full", "write_error")


def _raise(floor: dict[int, dict[str, Any]], shard: int, frames: int, seq: int, source: str, on_tie: bool = False) -> None:
    held = floor.get(shard, {}).get("frames_at_least", 0)
    if frames > 0 and (frames > held or (on_tie and frames == held)):
        floor[shard] = {"frames_at_least": frames, "runlog_seq": seq, "source": source}


def written_floor(records: Iterable[LogRecord]) -> dict[str, Any]:
    """{"checked": bool, "reason": str | None, "shards": {shard: {frames_at_least, runlog_seq, source}}}"""
    from_heartbeats: dict[int, dict[str, Any]] = {}
    from_stop: dict[int, dict[str, Any]] = {}
    write_failure = None
    for rec in records:
        e = rec.event
        if isinstance(e, ev.Heartbeat):
            for key, c in e.shards.items():
                handed_and_written = c.get("frames", 0) - c.get("dropped", 0) - c.get("write_q_depth", 0)
                _raise(from_heartbeats, int(key), handed_and_written, rec.seq, "heartbeat")
        elif isinstance(e, ev.RunStop):
            for key, n in e.frames_written.items():
                _raise(from_stop, int(key), n, rec.seq, "run_stop")
        elif isinstance(e, ev.Fatal) and e.reason in WRITE_FAILURES:
            write_failure = e.reason
        elif isinstance(e, ev.ActorCrashed) and e.actor == "WriterActor":
            write_failure = write_failure or "writer actor_crash"
    if write_failure:
        if not from_stop:
            return {"checked": False, "shards": {},
                    "reason": f"the run ended on a {write_failure} fatal without a run_stop count: see fatal.json"}
        return {"checked": True, "reason": None, "shards": from_stop}
    shards = dict(from_heartbeats)
    for shard, entry in from_stop.items():
        # On a tie the writer's exact count is the better citation.
        _raise(shards, shard, entry["frames_at_least"], entry["runlog_seq"], "run_stop", on_tie=True)
    return {"checked": True, "reason": None, "shards": shards}
