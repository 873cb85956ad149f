"""Fold a run's frames, in receive order, into one OrderBook per token, checking each against
what Polymarket's own messages state. Pure: frames and (re)connects in, books and findings out.

Polymarket's feed has no sequence numbers, but it is self-checking: every `price_changes` item
states the best bid and ask after it, `best_bid_ask` states the top, and every `book` is a full
snapshot. Where the rebuilt book disagrees, a message was lost. The checks (ADR/0010):

- top_mismatch: after a change (or at a `best_bid_ask`), the rebuilt best bid/ask is not the
  stated one. A side stated as "0" (bid) or "1" (ask) is an empty side.
- snapshot_mismatch: a `book` arrives while the rebuilt book is live and differs from it.
- delta_before_snapshot: a change for a token before any snapshot since its shard (re)connected.
- silent_token: a token with no message for longer than `silent_after_s` while its shard kept
  receiving, or a subscribed token that never produced anything.
- crossed (a warning, not an incident): rebuilt best bid >= best ask.

A mismatch opens an incident; it closes at the next snapshot that agrees with the rebuilt book
(after a (re)connect, the first snapshot: there is nothing to disagree with). A silence is an
incident from the token's last message to its next one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson

from pm_arb.book.messages import BestBidAsk, Book, Change, LastTrade, PriceChange, TickSizeChange
from pm_arb.book.messages import decode as decode_typed
from pm_arb.book.order_book import _KEYS, BookError, OrderBook, key_of, price_text, sides_of
from pm_arb.wire.flags import FLAGS_NOT_MARKET_DATA

__all__ = ["BookFold", "Connect", "Frame", "Assign", "merge", "rebuild"]

NS = 1_000_000_000
SYNC_CAUSES = ("top_mismatch", "snapshot_mismatch", "delta_before_snapshot")
MALFORMED_KEPT = 20


@dataclass(frozen=True)
class Frame:
    shard: int
    seq: int
    rx_mono_ns: int
    rx_wall_ns_utc: int
    flags: int
    payload: bytes


@dataclass(frozen=True)
class Connect:
    """A shard's connection came up (runlog `shard_connected`): its tokens need a fresh snapshot."""

    shard: int
    mono_ns: int
    wall_ns_utc: int


@dataclass(frozen=True)
class Assign:
    """The tokens each shard subscribes from now on (runlog `universe_assigned`)."""

    shard_tokens: dict[int, list[str]]
    mono_ns: int
    wall_ns_utc: int


# Where a finding happened: (shard, seq, rx_mono_ns, rx_wall_ns_utc); seq is None for a connect
# or a subscription. A plain tuple: one is made per frame.
Where = tuple
SHARD, SEQ, MONO, WALL = 0, 1, 2, 3


def _where_dict(w: Where | None) -> dict[str, Any] | None:
    return None if w is None else {"shard": w[SHARD], "seq": w[SEQ], "mono_ns": w[MONO], "wall_ns_utc": w[WALL]}


@dataclass
class Incident:
    token: str
    cause: str
    start: Where
    detail: str
    end: Where | None = None
    findings: int = 1  # failed checks while it was open

    def duration_s(self, run_end_mono_ns: int) -> float:
        end = self.end[MONO] if self.end is not None else run_end_mono_ns
        return max(0, end - self.start[MONO]) / NS


class _Token:
    __slots__ = ("token", "book", "live", "shard", "last", "last_mono", "messages", "incident", "assigned", "resolved",
                 "tick_size", "tick_changes", "crossed", "crossed_first", "excused")

    def __init__(self, token: str, shard: int, since: Where | None) -> None:
        self.token = token
        self.book = OrderBook()
        self.live = False  # a snapshot arrived since the shard's last (re)connect
        self.shard = shard
        # The last message for this token, or its subscription (seq None) before the first one.
        self.last: Where | None = since
        self.last_mono = since[MONO] if since is not None else None
        self.messages = 0
        self.incident: Incident | None = None  # the open sync incident
        self.assigned = False
        self.resolved = False
        self.tick_size: str | None = None
        self.tick_changes = 0
        self.crossed = 0
        self.crossed_first: Where | None = None
        self.excused = False  # a damaged record of its shard was skipped: unchecked until the next snapshot


def _stated(text: Any, empty: str) -> Any:
    """The key of a stated best price; "" / None / the empty-side value ("0" for bids, "1" for
    asks) is no level (None)."""
    if text is None or text == "" or text == empty:
        return None
    k = _KEYS.get(text)
    return key_of(text) if k is None else k


_MISS = object()


class _DictItem:
    """A price_changes item decoded as a dict (or as anything else), read like messages.Change:
    each field is read as the dict path always read it (`["asset_id"]`, `.get("best_bid")`), so
    an item that lacks one fails with the same error at the same point."""

    __slots__ = ("d",)

    def __init__(self, d: Any) -> None:
        self.d = d

    asset_id = property(lambda self: self.d["asset_id"])
    side = property(lambda self: self.d["side"])
    price = property(lambda self: self.d["price"])
    size = property(lambda self: self.d["size"])
    best_bid = property(lambda self: self.d.get("best_bid"))
    best_ask = property(lambda self: self.d.get("best_ask"))

_MALFORMED = (KeyError, TypeError, AttributeError, BookError)  # what a message the fold cannot use raises
_EVENT_TYPE = {PriceChange: "price_change", Book: "book", BestBidAsk: "best_bid_ask", LastTrade: "last_trade_price",
               TickSizeChange: "tick_size_change"}


@dataclass
class BookFold:
    """The fold itself: feed Frame / Connect / Assign in receive order, then `result()`."""

    silent_after_s: float = 600.0
    only_tokens: frozenset[str] | None = None
    # A slice starts inside a stream: its books' state at the window's start is unknown, not
    # wrong, so each token is unchecked until its first snapshot (or its shard's next connect).
    starts_mid_stream: bool = False
    # A part of a parallel audit (`merge`): the shards this fold is fed; assignments to other
    # shards are theirs.
    only_shards: frozenset[int] | None = None
    tokens: dict[str, _Token] = field(default_factory=dict)
    incidents: list[Incident] = field(default_factory=list)
    shard_last_frame: dict[int, Where] = field(default_factory=dict)
    malformed_first: list[dict[str, Any]] = field(default_factory=list)
    end_mono_ns: int = 0
    frames: int = 0
    messages: int = 0
    snapshots: int = 0
    changes: int = 0
    top_checks: int = 0
    malformed: int = 0
    damaged_records: int = 0
    unchecked_changes: int = 0
    # Where each token was first met, as a key that orders the events of all shards the way a
    # serial fold meets them (see `merge`), and the same for the first malformed messages.
    token_order: dict[str, tuple] = field(default_factory=dict)
    malformed_order: list[tuple] = field(default_factory=list)
    assigns: int = 0
    # stated best price text -> its price key (None for an empty side), per side
    _bid_of: dict[Any, Any] = field(default_factory=dict)
    _ask_of: dict[Any, Any] = field(default_factory=dict)

    # -- feeding ------------------------------------------------------------------------
    def feed(self, items: Iterable[Frame | Connect | Assign]) -> "BookFold":
        frame, connect, assign = self.frame, self.connect, self.assign
        for it in items:
            if type(it) is Frame:
                frame(it.shard, it.seq, it.rx_mono_ns, it.rx_wall_ns_utc, it.flags, it.payload)
            elif type(it) is Connect:
                connect(it)
            else:
                assign(it)
        return self

    def _new_token(self, tok: str, shard: int, since: Where | None, order: tuple) -> _Token | None:
        if type(tok) is not str:  # JSON that is not the documented shape: a message, not a token
            raise TypeError(f"asset_id {tok!r} is not a string")
        only = self.only_tokens
        if only is not None and tok not in only:
            return None
        self.token_order[tok] = order + (len(self.tokens),)
        st = self.tokens[tok] = _Token(tok, shard, since)
        st.excused = self.starts_mid_stream
        return st

    def connect(self, c: Connect) -> None:
        at = (c.shard, None, c.mono_ns, c.wall_ns_utc)
        for st in self.tokens.values():
            if st.shard == c.shard:
                st.live = False
                st.excused = False  # a fresh connection owes a snapshot before any change
                if st.assigned and not st.resolved and st.messages == 0:
                    st.last, st.last_mono = at, c.mono_ns
        self.end_mono_ns = max(self.end_mono_ns, c.mono_ns)

    def damaged(self, shard: int) -> None:
        """A stored record of `shard` could not be read (capture-verify's crc gate owns that loss):
        its tokens' books are unknown, not wrong, until their next snapshot."""
        self.damaged_records += 1
        for st in self.tokens.values():
            if st.shard == shard:
                st.live = False
                st.excused = True

    def assign(self, a: Assign) -> None:
        now_assigned: dict[str, int] = {t: s for s, toks in a.shard_tokens.items() for t in toks}
        self.assigns += 1
        mine = self.only_shards
        for tok, st in self.tokens.items():
            if st.assigned and tok not in now_assigned:
                st.assigned = False  # unsubscribed: no longer expected to talk
                st.live = False
        for i, (tok, shard) in enumerate(now_assigned.items()):
            if mine is not None and shard not in mine:
                continue
            at = (shard, None, a.mono_ns, a.wall_ns_utc)
            st = self.tokens.get(tok)
            if st is None:
                st = self._new_token(tok, shard, at, (a.mono_ns, 0, self.assigns, i))
                if st is None:
                    continue
            if not st.assigned or st.shard != shard:
                st.assigned = True
                st.shard = shard
                if st.messages == 0:
                    st.last, st.last_mono = at, a.mono_ns

    def frame(self, shard: int, seq: int, mono: int, wall: int, flags: int, payload: bytes) -> None:
        self.end_mono_ns = mono
        if flags & FLAGS_NOT_MARKET_DATA:
            return
        self.frames += 1
        typed = True
        try:
            doc = decode_typed(payload)
        except Exception:  # not one of the documented shapes: orjson into dicts, whatever its shape
            typed = False
            try:
                doc = orjson.loads(payload)
            except orjson.JSONDecodeError:
                self._malformed((shard, seq, mono, wall), "not JSON")
                return
        where = (shard, seq, mono, wall)
        last_frames = self.shard_last_frame
        prev = last_frames.get(shard)
        last_frames[shard] = where
        prev_mono = prev[MONO] if prev is not None else None
        if not typed:
            if type(doc) is dict:
                self._message(doc, where, prev_mono)
            elif type(doc) is list:
                for item in doc:
                    if type(item) is dict:
                        self._message(item, where, prev_mono)
        elif type(doc) is PriceChange:  # the common frame
            self.messages += 1
            try:
                self._changes(doc.price_changes, where, prev_mono)
            except _MALFORMED as exc:
                self._malformed(where, f"price_change: {exc!r}")
        elif type(doc) is list:
            for item in doc:
                self._typed(item, where, prev_mono)
        else:
            self._typed(doc, where, prev_mono)

    # -- one message ------------------------------------------------------------------------
    def _typed(self, doc: Any, where: Where, prev_mono: int | None) -> None:
        """One message of a documented shape (pm_arb/book/messages.py): what `_message` does."""
        self.messages += 1
        t = type(doc)
        try:
            if t is PriceChange:
                self._changes(doc.price_changes, where, prev_mono)
            elif t is Book:
                self._snapshot_of(doc.asset_id, doc.bids or [], doc.asks or [], where, prev_mono)
            elif t is BestBidAsk:
                st = self._seen(doc.asset_id, where, prev_mono)
                if st is not None and st.live:
                    self._check_top(st, doc.best_bid, doc.best_ask, where, "best_bid_ask")
            elif t is TickSizeChange:
                st = self._seen(doc.asset_id, where, prev_mono)
                if st is not None:
                    st.tick_size = doc.new_tick_size
                    st.tick_changes += 1
            else:  # LastTrade
                self._seen(doc.asset_id, where, prev_mono)
        except _MALFORMED as exc:
            self._malformed(where, f"{_EVENT_TYPE[t]}: {exc!r}")

    def _message(self, doc: dict, where: Where, prev_mono: int | None) -> None:
        self.messages += 1
        et = doc.get("event_type")
        try:
            if et == "price_change":
                items = doc.get("price_changes")
                if items is None and "changes" in doc:  # the pre-2025-09-15 schema: no stated top
                    tok = doc.get("asset_id")
                    items = [dict(c, asset_id=tok) for c in doc["changes"]]
                self._changes((_DictItem(it) for it in items), where, prev_mono)
            elif et == "book" or (et is None and ("bids" in doc or "buys" in doc)):
                self._snapshot_of(doc["asset_id"], doc.get("bids", doc.get("buys")) or [], doc.get("asks", doc.get("sells")) or [],
                                  where, prev_mono)
            elif et == "best_bid_ask":
                st = self._seen(doc["asset_id"], where, prev_mono)
                if st is not None and st.live:
                    self._check_top(st, doc.get("best_bid"), doc.get("best_ask"), where, "best_bid_ask")
            elif et == "tick_size_change":
                st = self._seen(doc["asset_id"], where, prev_mono)
                if st is not None:
                    st.tick_size = doc.get("new_tick_size")
                    st.tick_changes += 1
            elif et == "last_trade_price":
                self._seen(doc["asset_id"], where, prev_mono)
            elif et == "market_resolved":
                for tok in doc.get("assets_ids") or ():
                    st = self.tokens.get(tok)
                    if st is not None:
                        st.resolved = True  # silent from here on by design
        except _MALFORMED as exc:
            self._malformed(where, f"{et or 'message'}: {exc!r}")

    def _seen(self, tok: str, where: Where, prev_mono: int | None) -> _Token | None:
        """Count a message for `tok` and record a silence if it broke one; None when filtered out."""
        st = self.tokens.get(tok)
        if st is None:
            st = self._new_token(tok, where[SHARD], None, (where[MONO], 1, where[SHARD], where[SEQ]))
            if st is None:
                return None
        st.messages += 1
        last = st.last_mono
        if last is not None and prev_mono is not None:
            limit = self.silent_after_s * NS
            if where[MONO] - last > limit and prev_mono - last > limit and not st.resolved:
                self._silence(st, where)
        st.last = where
        st.last_mono = where[MONO]
        st.shard = where[SHARD]
        return st

    def _silence(self, st: _Token, where: Where) -> None:
        # The shard kept receiving for longer than the threshold while this token said nothing.
        gap = (where[MONO] - st.last_mono) / NS  # type: ignore[operator]
        inc = Incident(st.token, "silent_token", st.last, f"no message for {gap:.1f} s while shard {where[SHARD]} kept receiving")  # type: ignore[arg-type]
        inc.end = where
        self.incidents.append(inc)

    def _changes(self, items: Iterable[Change | _DictItem], where: Where, prev_mono: int | None) -> None:
        """Every item of a price_change: set the level, then check the stated top. The hot path,
        so what `_seen` and `_check_top` do is inlined for the common case (no silence possible).
        Items are typed (messages.Change), or dicts seen through _DictItem (other frames)."""
        tokens, seen = self.tokens, self._seen
        bid_of, ask_of = self._bid_of, self._ask_of
        mono, shard = where[MONO], where[SHARD]
        quiet_limit = self.silent_after_s * NS
        n = checks = 0
        try:
            for it in items:
                st = tokens.get(it.asset_id)
                if st is None or st.shard != shard or st.last_mono is None or mono - st.last_mono > quiet_limit:
                    st = seen(it.asset_id, where, prev_mono)  # the full bookkeeping, when a silence is possible
                    if st is None:
                        continue
                else:
                    st.messages += 1
                    st.last = where
                    st.last_mono = mono
                n += 1
                bb, ba = st.book.change_top(it.side, it.price, it.size)
                if not st.live:
                    self._before_snapshot(st, where)
                    continue
                bb_text = it.best_bid
                ba_text = it.best_ask
                if bb_text is None and ba_text is None:
                    continue
                checks += 1
                sb = bid_of.get(bb_text, _MISS)
                if sb is _MISS:
                    sb = self._remember(bid_of, bb_text, "0")
                sa = ask_of.get(ba_text, _MISS)
                if sa is _MISS:
                    sa = self._remember(ask_of, ba_text, "1")
                if bb != sb or ba != sa:
                    self._top_mismatch(st, where, "price_change", sb, sa, bb, ba)
                if bb is not None and ba is not None and bb >= ba:
                    self._crossed(st, where)
        finally:
            self.top_checks += checks  # a malformed item stops the frame: its checks so far count, its changes do not
        self.changes += n

    def _before_snapshot(self, st: _Token, where: Where) -> None:
        if st.excused:
            self.unchecked_changes += 1
        else:
            self._finding(st, "delta_before_snapshot", where, "a change before any snapshot since the shard (re)connected")

    @staticmethod
    def _remember(cache: dict, text: Any, empty: str) -> Any:
        value = _stated(text, empty)
        if len(cache) >= 65536:  # a token has ~1000 ticks; only a hostile feed gets here
            cache.clear()
        cache[text] = value
        return value

    def _snapshot_of(self, tok: str, bids: Any, asks: Any, where: Where, prev_mono: int | None) -> None:
        st = self._seen(tok, where, prev_mono)
        if st is None:
            return
        self.snapshots += 1
        book = st.book
        sides = sides_of(bids, asks)  # parsed once: compared with the book, then installed
        if st.live:
            differ = book.differing_sides(*sides)
            if differ:
                self._finding(st, "snapshot_mismatch", where, f"{differ} level(s) differ from the rebuilt book")
            elif st.incident is not None:
                self._close(st, where)
        elif st.incident is not None:
            self._close(st, where)  # first snapshot since (re)connect: the book is whole from here
        book.replace(*sides)
        st.live = True
        st.excused = False

    def _check_top(self, st: _Token, stated_bid: Any, stated_ask: Any, where: Where, source: str) -> None:
        self.top_checks += 1
        bb, ba = st.book.top_keys()
        sb = self._bid_of.get(stated_bid, _MISS)
        if sb is _MISS:
            sb = self._remember(self._bid_of, stated_bid, "0")
        sa = self._ask_of.get(stated_ask, _MISS)
        if sa is _MISS:
            sa = self._remember(self._ask_of, stated_ask, "1")
        if bb != sb or ba != sa:
            self._top_mismatch(st, where, source, sb, sa, bb, ba)
        if bb is not None and ba is not None and bb >= ba:
            self._crossed(st, where)

    def _top_mismatch(self, st: _Token, where: Where, source: str, sb: Any, sa: Any, bb: Any, ba: Any) -> None:
        self._finding(st, "top_mismatch", where,
                      f"{source} states {price_text(sb)} / {price_text(sa)}, rebuilt book has {price_text(bb)} / {price_text(ba)}")

    @staticmethod
    def _crossed(st: _Token, where: Where) -> None:
        st.crossed += 1
        if st.crossed_first is None:
            st.crossed_first = where

    def _finding(self, st: _Token, cause: str, where: Where, detail: str) -> None:
        if st.incident is not None:
            st.incident.findings += 1
            return
        inc = Incident(st.token, cause, where, detail)
        st.incident = inc
        self.incidents.append(inc)

    def _close(self, st: _Token, where: Where) -> None:
        assert st.incident is not None
        st.incident.end = where
        st.incident = None

    def _malformed(self, where: Where, why: str) -> None:
        self.malformed += 1
        if len(self.malformed_first) < MALFORMED_KEPT:
            self.malformed_first.append({"shard": where[SHARD], "seq": where[SEQ], "wall_ns_utc": where[WALL], "reason": why})
            self.malformed_order.append((where[MONO], where[SHARD], where[SEQ], len(self.malformed_order)))

    # -- the end ------------------------------------------------------------------------
    def result(self) -> dict[str, Any]:
        end = self.end_mono_ns
        threshold_ns = self.silent_after_s * NS
        silent_end: list[Incident] = []
        for tok, st in self.tokens.items():
            if not st.assigned or st.resolved or st.last is None:
                continue
            shard_last = self.shard_last_frame.get(st.shard)
            if shard_last is None:
                continue
            quiet_ns = shard_last[MONO] - st.last[MONO]
            if quiet_ns > threshold_ns:
                what = "never produced a message" if st.messages == 0 else f"no message for the last {quiet_ns / NS:.1f} s"
                silent_end.append(Incident(tok, "silent_token", st.last, f"{what} while shard {st.shard} kept receiving"))
        incidents = sorted(self.incidents + silent_end, key=lambda i: (i.start[MONO], i.token))
        by_cause: dict[str, int] = {}
        out_of_sync = silent = 0.0
        for inc in incidents:
            by_cause[inc.cause] = by_cause.get(inc.cause, 0) + 1
            if inc.cause == "silent_token":
                silent += inc.duration_s(end)
            else:
                out_of_sync += inc.duration_s(end)
        checked = [t for t, st in self.tokens.items() if st.assigned or st.messages]
        bad_tokens = {i.token for i in incidents}
        crossed = [{"token": t, "count": st.crossed, "first": _where_dict(st.crossed_first)}
                   for t, st in self.tokens.items() if st.crossed]
        return {
            "totals": {
                "tokens_checked": len(checked),
                "tokens_clean": sum(1 for t in checked if t not in bad_tokens),
                "incidents": len(incidents),
                "incidents_by_cause": by_cause,
                "out_of_sync_s": round(out_of_sync, 3),
                "silent_s": round(silent, 3),
                "crossed_book_warnings": sum(c["count"] for c in crossed),
                "tick_size_changes": sum(st.tick_changes for st in self.tokens.values()),
                "frames": self.frames, "messages": self.messages, "snapshots": self.snapshots, "changes": self.changes,
                "top_checks": self.top_checks, "malformed": self.malformed, "damaged_records": self.damaged_records,
                "unchecked_changes": self.unchecked_changes,
            },
            "incidents": [{
                "token": i.token, "cause": i.cause, "detail": i.detail, "findings": i.findings,
                "start": _where_dict(i.start), "end": _where_dict(i.end), "duration_s": round(i.duration_s(end), 3),
            } for i in incidents],
            "crossed_books": crossed,
            "malformed": self.malformed_first,
            "silent_after_s": self.silent_after_s,
        }


def rebuild(items: Iterable[Frame | Connect | Assign]) -> dict[str, OrderBook]:
    """The books of every token at the end of a run's frames (what `capture-export` quotes from)."""
    fold = BookFold(silent_after_s=float("inf")).feed(items)
    return {tok: st.book for tok, st in fold.tokens.items()}


_SUMMED = ("frames", "messages", "snapshots", "changes", "top_checks", "malformed", "damaged_records", "unchecked_changes")


def merge(parts: list[BookFold]) -> BookFold | None:
    """One fold from folds of disjoint groups of shards, as if one fold had met every event in
    receive order; None when a token was met in more than one part (the caller folds serially).

    Each part was fed its shards' frames in receive order (merged by rx_mono_ns, ties by shard,
    as `Run.frames` merges them), every Connect, and every Assign (with `only_shards`). A token
    lives on one shard, whose frames, connects and damage alone touch it, so each token's state
    in its part is its state in a serial fold. What is global is ordered back: tokens by where
    they were first met, incidents by start (stable: a token's own stay in order), the first
    malformed messages by receive order, the end of the run by the latest event.
    """
    owner: dict[str, int] = {}
    for n, part in enumerate(parts):
        for tok in part.tokens:
            if owner.setdefault(tok, n) != n:
                return None
    first = parts[0]
    out = BookFold(silent_after_s=first.silent_after_s, only_tokens=first.only_tokens, starts_mid_stream=first.starts_mid_stream)
    order = sorted((key, tok, n) for n, part in enumerate(parts) for tok, key in part.token_order.items())
    for key, tok, n in order:
        out.tokens[tok] = parts[n].tokens[tok]
        out.token_order[tok] = key
    for part in parts:
        out.incidents.extend(part.incidents)
        out.shard_last_frame.update(part.shard_last_frame)
        for name in _SUMMED:
            setattr(out, name, getattr(out, name) + getattr(part, name))
    out.end_mono_ns = max(part.end_mono_ns for part in parts)
    malformed = sorted((key, m) for part in parts for key, m in zip(part.malformed_order, part.malformed_first))
    kept = malformed[:MALFORMED_KEPT]
    # The keys go with the messages: a merged fold can be merged again (each worker merges its
    # own stream first) and must still know where its malformed messages came in.
    out.malformed_order = [key for key, _ in kept]
    out.malformed_first = [m for _, m in kept]
    return out
