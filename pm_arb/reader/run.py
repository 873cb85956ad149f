"""`open_run(run_dir) -> Run`: a run bundle (or a slice of one) as Python objects and iterators."""

from __future__ import annotations

import heapq
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson

from pm_arb.store.layout import CAPTURE_DIR, RUNLOG, read_manifest, require_run_dir
from pm_arb.errors import UserError
from pm_arb.events.folds.written import written_floor
from pm_arb.events.runlog_file import read_runlog
from pm_arb.events.types import MarketAssigned, UniverseAssigned
from pm_arb.reader.records import Event, FrameRecord, Market
from pm_arb.reader.shard_view import OnDamage, ShardView
from pm_arb.store.frames_format import FLAG_CONTROL, FLAG_NOT_JSON, HeaderProblem
from pm_arb.store.shard_files import shard_numbers

TimeBound = int | datetime | None


class Run:
    """A run bundle opened for reading. Nothing is loaded until asked for; each iterator maps
    the files as they are when it starts, so a run still being captured can be read too."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.capture_dir = run_dir / CAPTURE_DIR
        self.manifest: dict[str, Any] = read_manifest(run_dir)
        self.universe: list[Market] = _markets(self.manifest)
        self.tokens: dict[str, tuple[Market, str]] = {}
        self._records: tuple[int, list] | None = None  # (runlog size, its records)
        for m in self.universe:
            self.tokens[m.yes_token] = (m, "Yes")
            self.tokens[m.no_token] = (m, "No")

    def _runlog_records(self) -> list:
        """The runlog's records, read again only when the file changed size (a days-long run's
        runlog is large; a live one grows); empty when there is no readable runlog."""
        try:
            size = (self.run_dir / RUNLOG).stat().st_size
        except OSError:
            size = -1
        if self._records is None or self._records[0] != size:
            try:
                records = read_runlog(self.run_dir, skip_bad_lines=True).records
            except UserError:
                records = []
            self._records = (size, records)
        return self._records[1]

    def refreshed_markets(self) -> list[Market]:
        """Markets a universe refresh added during the run (runlog `market_assigned` with reason
        "refresh"), in the order they were added; a market listed at start is not repeated.
        Runlogs written before these records carried the question have it as ""."""
        out: dict[str, Market] = {}
        records = self._runlog_records()
        for rec in records:
            e = rec.event
            if isinstance(e, MarketAssigned) and e.reason == "refresh" and e.yes_token not in self.tokens:
                out[e.condition_id] = Market(e.condition_id, e.question, e.yes_token, e.no_token, e.shard,
                                             e.gamma_id or None, e.slug or None)
        return list(out.values())

    def all_tokens(self) -> dict[str, tuple[Market, str]]:
        """`tokens` plus those of the markets refreshes added: token -> (market, "Yes" | "No")."""
        out = dict(self.tokens)
        for mk in self.refreshed_markets():
            out.setdefault(mk.yes_token, (mk, "Yes"))
            out.setdefault(mk.no_token, (mk, "No"))
        return out

    def token_assignments(self) -> dict[str, int]:
        """Every token the run was ever assigned, with its last shard: the start universe and
        each applied refresh (runlog `universe_assigned`). Empty when there is no readable runlog."""
        records = self._runlog_records()
        out: dict[str, int] = {}
        for rec in records:
            if isinstance(rec.event, UniverseAssigned):
                for shard, tokens in rec.event.shard_tokens.items():
                    for token in tokens:
                        out[token] = int(shard)
        return out

    @property
    def shards(self) -> list[int]:
        return shard_numbers(self.capture_dir) if self.capture_dir.is_dir() else []

    def missing_shard_warnings(self) -> list[str]:
        """One line per shard the runlog says frames were written to (the writer's count in
        run_stop, or a heartbeat's lower bound) whose frames file is gone: reads of the run
        do not hold those frames, and should say so. None for a slice (its runlog is a window)."""
        if "slice_of" in self.manifest:
            return []
        have = set(self.shards)
        floor = written_floor(self._runlog_records())["shards"]
        return [f"shard {s:02d}: the runlog says at least {f['frames_at_least']:,} frames were written to it "
                f"({f['source']}, seq {f['runlog_seq']}), but {CAPTURE_DIR}/shard_{s:02d}.frames is missing: none of them "
                "are read; `pm_arb capture-verify` lists what is lost"
                for s, f in sorted(floor.items()) if s not in have and f["frames_at_least"] > 0]

    def frames(
        self,
        shards: Iterable[int] | None = None,
        start: TimeBound = None,
        end: TimeBound = None,
        verify: bool = True,
        on_damage: OnDamage = None,
    ) -> Iterator[FrameRecord]:
        """Every stored frame with start <= rx_wall_ns_utc <= end, merged across shards in
        receive order (rx_mono_ns). With verify, each record's checksum is checked and the
        first damaged one raises DamagedRecordError naming its shard and seq; pass
        `on_damage` (called with a Damage) to skip damaged records instead."""
        lo, hi = _ns(start, "start"), _ns(end, "end")
        with self._views(shards) as views:
            streams = [v.records(lo, hi, verify, on_damage) for v in views]
            yield from streams[0] if len(streams) == 1 else heapq.merge(*streams, key=_mono)

    def frame_batches(
        self,
        shards: Iterable[int] | None = None,
        start: TimeBound = None,
        end: TimeBound = None,
        verify: bool = True,
        on_damage: OnDamage = None,
        max_frames: int = 65536,
    ):
        """The frames of `frames()` as pyarrow RecordBatches (columns shard, seq, rx_mono_ns,
        rx_wall_ns_utc, flags, opcode, payload), in receive order, for bulk work: no Python
        object per frame. Needs numpy and pyarrow (imported only when this is called)."""
        from pm_arb.reader.columns import frame_batches

        with self._views(shards) as views:
            yield from frame_batches(views, _ns(start, "start"), _ns(end, "end"), verify, on_damage, max_frames)

    def events(
        self,
        shards: Iterable[int] | None = None,
        start: TimeBound = None,
        end: TimeBound = None,
        verify: bool = True,
        include_control: bool = False,
        include_garbage: bool = False,
        on_damage: OnDamage = None,
    ) -> Iterator[Event]:
        """The frames decoded: one Event per message (an array frame gives one per element).
        Control text (PONG, ...) and garbage (not JSON, or JSON that is not an object or an
        array) are skipped unless asked for."""
        loads = orjson.loads
        for rec in self.frames(shards, start, end, verify, on_damage):
            if rec.flags & FLAG_CONTROL:
                if include_control:
                    yield Event(rec.shard, rec.seq, 0, rec.rx_mono_ns, rec.rx_wall_ns_utc, "control", None, rec.payload)
                continue
            doc = None
            if not rec.flags & FLAG_NOT_JSON:
                try:
                    doc = loads(rec.payload)
                except orjson.JSONDecodeError:
                    doc = None
            if isinstance(doc, dict):
                yield Event(rec.shard, rec.seq, 0, rec.rx_mono_ns, rec.rx_wall_ns_utc, "market", _event_type(doc), doc)
            elif isinstance(doc, list):
                for i, item in enumerate(doc):
                    yield Event(rec.shard, rec.seq, i, rec.rx_mono_ns, rec.rx_wall_ns_utc, "market", _event_type(item), item)
            elif include_garbage:
                yield Event(rec.shard, rec.seq, 0, rec.rx_mono_ns, rec.rx_wall_ns_utc, "garbage", None, rec.payload)

    @contextmanager
    def _views(self, shards: Iterable[int] | None) -> Iterator[list[ShardView]]:
        views = self._open_views(shards)
        try:
            yield views
        finally:
            for v in views:
                v.close()

    def _open_views(self, shards: Iterable[int] | None) -> list[ShardView]:
        available = self.shards
        if not available:
            raise UserError(f"no capture/*.frames in {self.run_dir}: confirm the run dir path and that capture/*.frames exists", 2)
        chosen = available if shards is None else sorted(set(shards))
        unknown = [s for s in chosen if s not in available]
        if unknown:
            raise UserError(f"shard(s) {unknown} not in {self.run_dir} (it has {available})", 2)
        views: list[ShardView] = []
        try:
            for s in chosen:
                views.append(ShardView(self.capture_dir, s))
        except (HeaderProblem, OSError) as exc:
            for v in views:
                v.close()
            raise UserError(f"cannot read {self.run_dir}: {exc}", 1) from None
        return views


def open_run(run_dir: str | Path) -> Run:
    """Open a run bundle (the dir `pm_arb capture` printed) or a slice of one for reading."""
    return Run(require_run_dir(Path(run_dir)))


def _mono(rec: FrameRecord) -> int:
    return rec.rx_mono_ns


def _event_type(item: Any) -> str | None:
    if isinstance(item, dict):
        t = item.get("event_type")
        return t if isinstance(t, str) else None
    return None


def _ns(t: TimeBound, name: str) -> int | None:
    if t is None or isinstance(t, int):
        return t
    if isinstance(t, datetime):
        if t.tzinfo is None:
            raise UserError(f"{name} is a naive datetime: give it a timezone (UTC) so the bound is unambiguous", 2)
        return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1_000
    raise UserError(f"{name} must be ns since the epoch (int) or an aware datetime, not {type(t).__name__}", 2)


def _markets(manifest: dict[str, Any]) -> list[Market]:
    universe = manifest.get("universe")
    rows = universe.get("markets") if isinstance(universe, dict) else None
    out = []
    for m in rows if isinstance(rows, list) else []:
        if not isinstance(m, dict) or not m.get("yes_token") or not m.get("no_token"):
            continue
        shard = m.get("shard")
        out.append(Market(str(m.get("condition_id", "")), str(m.get("question", "")), str(m["yes_token"]), str(m["no_token"]),
                          shard if isinstance(shard, int) else None, m.get("id"), m.get("slug")))
    return out
