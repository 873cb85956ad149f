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
from decimal import Decimal
from typing import Any, Iterable

import orjson

from pm_arb.book.order_book import BookError, OrderBook, price_of

__all__ = ["BookFold", "Connect", "Frame", "Assign", "rebuild"]

FLAG_SKIP = 0x03  # store.frames_format FLAG_CONTROL | FLAG_NOT_JSON: no market data in the frame
NS = 1_000_000_000
SYNC_CAUSES = ("top_mismatch", "snapshot_mismatch", "delta_before_snapshot")


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


@dataclass
class Where:
    shard: int
    seq: int | None
    mono_ns: int
    wall_ns_utc: int

    def as_dict(self) -> dict[str, Any]:
        return {"shard": self.shard, "seq": self.seq, "mono_ns": self.mono_ns, "wall_ns_utc": self.wall_ns_utc}


@dataclass
class Incident:
    token: str
    cause: str
    start: Where
    detail: str
    end: Where | None = None
    findings: int = 1  # failed checks while it was open

    def duration_s(self, run_end_mono_ns: int) -> float:
        end = self.end.mono_ns if self.end is not None else run_end_mono_ns
        return max(0, end - self.start.mono_ns) / NS


class _Token:
    __slots__ = ("token", "book", "live", "shard", "last", "messages", "incident", "subscribed_at", "assigned", "resolved",
                 "tick_size", "tick_changes", "crossed", "crossed_first", "excused")

    def __init__(self, token: str, shard: int) -> None:
        self.token = token
        self.book = OrderBook()
        self.live = False  # a snapshot arrived since the shard's last (re)connect
        self.shard = shard
        self.last: Where | None = None  # last message for this token
        self.messages = 0
        self.incident: Incident | None = None  # the open sync incident
        self.subscribed_at: Where | None = None
        self.assigned = False
        self.resolved = False
        self.tick_size: str | None = None
        self.tick_changes = 0
        self.crossed = 0
        self.crossed_first: Where | None = None
        self.excused = False  # a damaged record of its shard was skipped: unchecked until the next snapshot


def _bid_of(stated: Any) -> Decimal | None:
    if stated is None or stated == "" or stated == "0":
        return None
    return price_of(stated)


def _ask_of(stated: Any) -> Decimal | None:
    if stated is None or stated == "" or stated == "1":
        return None
    return price_of(stated)


def _px(d: Decimal | None) -> str:
    return "none" if d is None else str(d)


@dataclass
class BookFold:
    """The fold itself: feed Frame / Connect / Assign in receive order, then `result()`."""

    silent_after_s: float = 600.0
    only_tokens: frozenset[str] | None = None
    tokens: dict[str, _Token] = field(default_factory=dict)
    incidents: list[Incident] = field(default_factory=list)
    shard_last_frame: dict[int, Where] = field(default_factory=dict)
    shard_first_frame: dict[int, Where] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("frames", "messages", "snapshots", "changes", "top_checks", "malformed", "damaged_records", "unchecked_changes"), 0))
    malformed_first: list[dict[str, Any]] = field(default_factory=list)
    end_mono_ns: int = 0

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

    def _token(self, tok: str, shard: int) -> _Token:
        st = self.tokens.get(tok)
        if st is None:
            st = self.tokens[tok] = _Token(tok, shard)
        return st

    def connect(self, c: Connect) -> None:
        at = Where(c.shard, None, c.mono_ns, c.wall_ns_utc)
        for st in self.tokens.values():
            if st.shard == c.shard:
                st.live = False
                if st.assigned and not st.resolved:
                    st.subscribed_at = at
        self.end_mono_ns = max(self.end_mono_ns, c.mono_ns)

    def damaged(self, shard: int) -> None:
        """A stored record of `shard` could not be read (capture-verify's crc gate owns that loss):
        its tokens' books are unknown, not wrong, until their next snapshot."""
        self.counts["damaged_records"] += 1
        for st in self.tokens.values():
            if st.shard == shard:
                st.live = False
                st.excused = True

    def assign(self, a: Assign) -> None:
        now_assigned: dict[str, int] = {t: s for s, toks in a.shard_tokens.items() for t in toks}
        only = self.only_tokens
        for tok, st in self.tokens.items():
            if st.assigned and tok not in now_assigned:
                st.assigned = False  # unsubscribed: no longer expected to talk
                st.live = False
        for tok, shard in now_assigned.items():
            if only is not None and tok not in only:
                continue
            st = self._token(tok, shard)
            if not st.assigned or st.shard != shard:
                st.assigned = True
                st.shard = shard
                st.subscribed_at = Where(shard, None, a.mono_ns, a.wall_ns_utc)

    def frame(self, shard: int, seq: int, mono: int, wall: int, flags: int, payload: bytes) -> None:
        self.end_mono_ns = mono
        if flags & FLAG_SKIP:
            return
        counts = self.counts
        counts["frames"] += 1
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self._malformed(shard, seq, mono, wall, "not JSON")
            return
        where = Where(shard, seq, mono, wall)
        prev = self.shard_last_frame.get(shard)
        self.shard_last_frame[shard] = where
        if prev is None:
            self.shard_first_frame[shard] = where
        if type(doc) is dict:
            self._message(doc, where, prev)
        elif type(doc) is list:
            for item in doc:
                if type(item) is dict:
                    self._message(item, where, prev)

    # -- one message ------------------------------------------------------------------------
    def _message(self, doc: dict, where: Where, prev_frame: Where | None) -> None:
        counts = self.counts
        counts["messages"] += 1
        et = doc.get("event_type")
        try:
            if et == "price_change":
                items = doc.get("price_changes")
                if items is None and "changes" in doc:  # the pre-2025-09-15 schema: no stated top
                    tok = doc.get("asset_id")
                    items = [dict(c, asset_id=tok) for c in doc["changes"]]
                for it in items:
                    self._change(it, where, prev_frame)
            elif et == "book" or (et is None and ("bids" in doc or "buys" in doc)):
                self._snapshot(doc, where, prev_frame)
            elif et == "best_bid_ask":
                st = self._seen(doc["asset_id"], where, prev_frame)
                if st is not None and st.live:
                    self._check_top(st, doc.get("best_bid"), doc.get("best_ask"), where, "best_bid_ask")
            elif et == "tick_size_change":
                st = self._seen(doc["asset_id"], where, prev_frame)
                if st is not None:
                    st.tick_size = doc.get("new_tick_size")
                    st.tick_changes += 1
            elif et == "last_trade_price":
                self._seen(doc["asset_id"], where, prev_frame)
            elif et == "market_resolved":
                for tok in doc.get("assets_ids") or ():
                    st = self.tokens.get(tok)
                    if st is not None:
                        st.resolved = True  # silent from here on by design
        except (KeyError, TypeError, AttributeError, BookError) as exc:
            self._malformed(where.shard, where.seq, where.mono_ns, where.wall_ns_utc, f"{et or 'message'}: {exc!r}")

    def _seen(self, tok: str, where: Where, prev_frame: Where | None) -> _Token | None:
        """Count a message for `tok` and close a silence if it broke one; None when filtered out."""
        only = self.only_tokens
        if only is not None and tok not in only:
            return None
        st = self.tokens.get(tok)
        if st is None:
            st = self.tokens[tok] = _Token(tok, where.shard)
        st.messages += 1
        last = st.last if st.last is not None else st.subscribed_at
        if (last is not None and prev_frame is not None and where.mono_ns - last.mono_ns > self.silent_after_s * NS
                and prev_frame.mono_ns - last.mono_ns > self.silent_after_s * NS and not st.resolved):
            # The shard kept receiving for longer than the threshold while this token said nothing.
            gap = (where.mono_ns - last.mono_ns) / NS
            inc = Incident(tok, "silent_token", last, f"no message for {gap:.1f} s while shard {where.shard} kept receiving")
            inc.end = where
            self.incidents.append(inc)
        st.last = where
        st.shard = where.shard
        return st

    def _snapshot(self, doc: dict, where: Where, prev_frame: Where | None) -> None:
        st = self._seen(doc["asset_id"], where, prev_frame)
        if st is None:
            return
        self.counts["snapshots"] += 1
        bids = doc.get("bids", doc.get("buys")) or []
        asks = doc.get("asks", doc.get("sells")) or []
        book = st.book
        if st.live:
            differ = book.differing_levels(bids, asks)
            if differ:
                self._finding(st, "snapshot_mismatch", where, f"{differ} level(s) differ from the rebuilt book")
            elif st.incident is not None:
                self._close(st, where)
        elif st.incident is not None:
            self._close(st, where)  # first snapshot since (re)connect: the book is whole from here
        book.apply_snapshot(bids, asks)
        st.live = True
        st.excused = False

    def _change(self, it: dict, where: Where, prev_frame: Where | None) -> None:
        st = self._seen(it["asset_id"], where, prev_frame)
        if st is None:
            return
        self.counts["changes"] += 1
        st.book.apply_change(it["side"], it["price"], it["size"])
        if not st.live:
            if st.excused:
                self.counts["unchecked_changes"] += 1
                return
            self._finding(st, "delta_before_snapshot", where, "a change before any snapshot since the shard (re)connected")
            return
        if "best_bid" in it or "best_ask" in it:
            self._check_top(st, it.get("best_bid"), it.get("best_ask"), where, "price_change")

    def _check_top(self, st: _Token, stated_bid: Any, stated_ask: Any, where: Where, source: str) -> None:
        self.counts["top_checks"] += 1
        book = st.book
        bb, ba = book.best_bid_price(), book.best_ask_price()
        sb, sa = _bid_of(stated_bid), _ask_of(stated_ask)
        if bb != sb or ba != sa:
            self._finding(st, "top_mismatch", where,
                          f"{source} states {_px(sb)} / {_px(sa)}, rebuilt book has {_px(bb)} / {_px(ba)}")
        if bb is not None and ba is not None and bb >= ba:
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

    def _malformed(self, shard: int, seq: int, mono: int, wall: int, why: str) -> None:
        self.counts["malformed"] += 1
        if len(self.malformed_first) < 20:
            self.malformed_first.append({"shard": shard, "seq": seq, "wall_ns_utc": wall, "reason": why})

    # -- the end ------------------------------------------------------------------------
    def result(self) -> dict[str, Any]:
        end = self.end_mono_ns
        threshold_ns = self.silent_after_s * NS
        silent_end: list[Incident] = []
        for tok, st in self.tokens.items():
            if not st.assigned or st.resolved:
                continue
            shard_last = self.shard_last_frame.get(st.shard)
            since = st.last if st.last is not None else st.subscribed_at
            if shard_last is None or since is None:
                continue
            if shard_last.mono_ns - since.mono_ns > threshold_ns:
                what = "never produced a message" if st.last is None else \
                    f"no message for the last {(shard_last.mono_ns - since.mono_ns) / NS:.1f} s"
                silent_end.append(Incident(tok, "silent_token", since, f"{what} while shard {st.shard} kept receiving"))
        incidents = sorted(self.incidents + silent_end, key=lambda i: (i.start.mono_ns, i.token))
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
        crossed = [{"token": t, "count": st.crossed, "first": st.crossed_first.as_dict()}
                   for t, st in self.tokens.items() if st.crossed and st.crossed_first is not None]
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
                **self.counts,
            },
            "incidents": [{
                "token": i.token, "cause": i.cause, "detail": i.detail, "findings": i.findings,
                "start": i.start.as_dict(), "end": i.end.as_dict() if i.end is not None else None,
                "duration_s": round(i.duration_s(end), 3),
            } for i in incidents],
            "crossed_books": crossed,
            "malformed": self.malformed_first,
            "silent_after_s": self.silent_after_s,
        }


def rebuild(items: Iterable[Frame | Connect | Assign]) -> dict[str, OrderBook]:
    """The books of every token at the end of a run's frames (what `capture-export` quotes from)."""
    fold = BookFold(silent_after_s=float("inf")).feed(items)
    return {tok: st.book for tok, st in fold.tokens.items()}
