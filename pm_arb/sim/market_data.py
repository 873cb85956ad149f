"""Deterministic Polymarket-shaped data: Gamma market rows and CLOB market-channel messages.

Shapes follow ../shared/spec/POLYMARKET_PROTOCOL.md: Gamma's JSON-encoded string fields
(`outcomes`, `outcomePrices`, `clobTokenIds`), decimal-string prices, epoch-ms string
timestamps, `price_change` with `price_changes[]`, initial dumps as arrays of `book`.
"""

from __future__ import annotations

import random
from collections import deque

import orjson

QUESTIONS = (
    "Will {x} close above {n} by June 30?",
    "Will {x} win the {n} final?",
    "Will {x} announce a merger before {n}?",
    "Will {x} exceed {n}k daily users this month?",
    "Will the {x} index be up more than {n}% this quarter?",
)
SUBJECTS = ("ACME", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Tyrell", "Soylent", "Cyberdyne", "Wonka", "Oscorp")


def _token_id(rng: random.Random) -> str:
    return str(rng.randrange(10**75, 10**77))


def _condition_id(rng: random.Random) -> str:
    return "0x" + "".join(rng.choice("0123456789abcdef") for _ in range(64))


def make_gamma_rows(active: int, seed: int = 7, first_id: int = 500_000, extras: bool = True) -> list[dict]:
    """`active` active binary YES/NO markets plus (with extras) rows the selection rule must reject."""
    rng = random.Random(seed)
    rows = []
    next_id = first_id

    def row(**over) -> dict:
        nonlocal next_id
        yes, no = _token_id(rng), _token_id(rng)
        q = rng.choice(QUESTIONS).format(x=rng.choice(SUBJECTS), n=rng.randrange(2, 99))
        p = round(rng.uniform(0.05, 0.95), 3)
        base = {
            "id": str(next_id),
            "conditionId": _condition_id(rng),
            "questionID": _condition_id(rng),
            "question": q,
            "slug": q.lower().replace(" ", "-").replace("?", "").replace("%", "pct")[:60] + f"-{next_id}",
            "active": True,
            "closed": False,
            "archived": False,
            "restricted": True,
            "enableOrderBook": True,
            "acceptingOrders": True,
            "negRisk": rng.random() < 0.2,
            "outcomes": '["Yes", "No"]',
            "outcomePrices": orjson.dumps([f"{p:g}", f"{1 - p:.3f}".rstrip("0")]).decode(),
            "clobTokenIds": orjson.dumps([yes, no]).decode(),
            "endDate": "2026-12-31T23:59:00Z",
            "endDateIso": "2026-12-31",
            "orderPriceMinTickSize": 0.01,
            "orderMinSize": 5,
            "bestBid": round(p - 0.01, 3),
            "bestAsk": round(p + 0.01, 3),
            "spread": 0.02,
            "lastTradePrice": p,
            "volume": f"{rng.uniform(1e3, 1e6):.1f}",
            "volumeNum": round(rng.uniform(1e3, 1e6), 1),
            "liquidity": f"{rng.uniform(1e3, 1e5):.1f}",
            "liquidityNum": round(rng.uniform(1e3, 1e5), 1),
            "volume24hr": round(rng.uniform(0, 1e5), 1),
            "umaResolutionStatuses": "[]",
        }
        base.update(over)
        next_id += 1
        return base

    for i in range(active):
        rows.append(row())
        if extras and i % 5 == 4:
            kind = (i // 5) % 5
            if kind == 0:
                rows.append(row(closed=True, active=True, acceptingOrders=False))
            elif kind == 1:
                rows.append(row(enableOrderBook=False))
            elif kind == 2:
                rows.append(row(outcomes='["Up", "Down"]'))
            elif kind == 3:
                rows.append(row(clobTokenIds=""))
            else:
                rows.append(row(outcomes='["Trump", "Harris", "Other"]', clobTokenIds=orjson.dumps([_token_id(rng)] * 3).decode()))
    return rows


# -- the one exchange: one book per market, every subscriber sees the same messages ------------
#
# Prices are integers in thousandths (1..999) and sizes integers in hundredths, so the books
# the simulator keeps are exact and the strings it sends are canonical decimals. Each binary
# market has one book, the YES token's; the NO token's book is its mirror (a YES bid at p is a
# NO ask at 1 - p), as on Polymarket, so every level change carries one item per token.

COARSE_TICK, FINE_TICK = 10, 1  # 0.01 and 0.001 in thousandths
FINE_BELOW, FINE_ABOVE = 40, 960  # Polymarket's tick bounds, 0.04 and 0.96
TARGET_DEPTH = 16  # the placement/cancel balance settles around half this many levels per side
TRADE_P, SNAPSHOT_P = 0.12, 0.04  # share of events that are trades / stand-alone `book` messages
BOOK_AFTER_TRADE_P = 0.3


def _px(m: int) -> str:
    if m <= 0:
        return "0"
    if m >= 1000:
        return "1"
    return f"0.{m:03d}".rstrip("0")


def _sz(c: int) -> str:
    return f"{c // 100}.{c % 100:02d}".rstrip("0").rstrip(".") if c % 100 else str(c // 100)


class Message:
    """One frame's worth of exchange output about one or two tokens.

    A `price_change` carries an item per token; a subscriber of only one of them gets only its
    item (`payload_for`). `custom` messages go only to `custom_feature_enabled` subscriptions.
    """

    __slots__ = ("tokens", "payload", "custom", "kind", "_doc", "top_changed")

    def __init__(self, kind: str, tokens: tuple[str, ...], doc: dict, custom: bool = False, top_changed: bool = False) -> None:
        self.kind = kind
        self.tokens = tokens
        self._doc = doc
        self.payload = orjson.dumps(doc)
        self.custom = custom
        self.top_changed = top_changed

    def payload_for(self, tokens: tuple[str, ...]) -> bytes:
        if len(tokens) == len(self.tokens):
            return self.payload
        doc = dict(self._doc)
        doc["price_changes"] = [it for it in self._doc["price_changes"] if it["asset_id"] in tokens]
        return orjson.dumps(doc)


class SimMarket:
    __slots__ = ("cond", "yes", "no", "bids", "asks", "fv", "vol", "tick", "resolved", "books_sent")

    def __init__(self, cond: str, yes: str, no: str, fv: float, vol: float) -> None:
        self.cond, self.yes, self.no = cond, yes, no
        self.bids: dict[int, int] = {}  # YES book: price (thousandths) -> size (hundredths)
        self.asks: dict[int, int] = {}
        self.fv = fv  # fair value the quotes gather around, a bounded random walk
        self.vol = vol
        self.tick = FINE_TICK if fv < FINE_BELOW or fv > FINE_ABOVE else COARSE_TICK
        self.resolved = False
        self.books_sent: dict[str, deque[dict]] = {}  # token -> its last few `book` docs (stale-snapshot fault)

    def top(self) -> tuple[int, int]:
        """YES best bid and ask in thousandths; 0 / 1000 for an empty side (sent as "0" / "1")."""
        return (max(self.bids) if self.bids else 0, min(self.asks) if self.asks else 1000)


class Exchange:
    """Every market's book and the messages that change it, for all connections at once."""

    def __init__(self, markets: dict[str, tuple[str, str]], seed: int = 11) -> None:
        self.rng = random.Random(seed)
        self.markets: dict[str, SimMarket] = {}
        self.token_market: dict[str, SimMarket] = {}
        self.add_markets(markets)

    # -- markets --------------------------------------------------------------------------
    def add_markets(self, markets: dict[str, tuple[str, str]]) -> None:
        for cond, (yes, no) in markets.items():
            if cond not in self.markets:
                self.add_market(cond, yes, no)

    def add_market(self, cond: str, yes: str, no: str) -> SimMarket:
        rng = self.rng
        # One market in eight lives near a tick bound, so short runs see tick_size_change.
        fv = rng.uniform(30.0, 50.0) if rng.random() < 0.125 else rng.uniform(100.0, 900.0)
        if rng.random() < 0.5 and fv < 60:
            fv = 1000.0 - fv
        m = SimMarket(cond, yes, no, fv, vol=rng.uniform(0.3, 1.5))
        for _ in range(TARGET_DEPTH * 3):
            self._place(m, "BUY" if rng.random() < 0.5 else "SELL", [])
        self.markets[cond] = m
        self.token_market[yes] = m
        self.token_market[no] = m
        return m

    def is_known(self, token: str) -> bool:
        return token in self.token_market

    # -- snapshots ------------------------------------------------------------------------
    def book_doc(self, token: str, ts_ms: int, record: bool = True) -> dict:
        m = self.token_market[token]
        if token == m.yes:
            bids = [{"price": _px(p), "size": _sz(s)} for p, s in sorted(m.bids.items())]
            asks = [{"price": _px(p), "size": _sz(s)} for p, s in sorted(m.asks.items(), reverse=True)]
        else:
            bids = [{"price": _px(1000 - p), "size": _sz(s)} for p, s in sorted(m.asks.items(), reverse=True)]
            asks = [{"price": _px(1000 - p), "size": _sz(s)} for p, s in sorted(m.bids.items())]
        doc = {"event_type": "book", "asset_id": token, "market": m.cond, "bids": bids, "asks": asks,
               "timestamp": str(ts_ms), "hash": "%040x" % self.rng.getrandbits(160)}
        if record:
            m.books_sent.setdefault(token, deque(maxlen=4)).append(doc)
        return doc

    def initial_dump(self, tokens: list[str], ts_ms: int) -> bytes:
        """What the server sends on subscribe: one array of the current book of each token."""
        return orjson.dumps([self.book_doc(t, ts_ms) for t in tokens if t in self.token_market])

    # -- the stream -----------------------------------------------------------------------
    def step(self, m: SimMarket, ts_ms: int) -> list[Message]:
        """One exchange event on market `m`: the messages it produces, in send order."""
        rng = self.rng
        out: list[Message] = []
        before = m.top()
        m.fv = min(997.0, max(3.0, m.fv + rng.gauss(0.0, m.vol)))
        self._retick(m, ts_ms, out)
        r = rng.random()
        if r < TRADE_P:
            self._trade(m, "BUY" if rng.random() < 0.5 else "SELL", ts_ms, out)
        elif r < TRADE_P + SNAPSHOT_P:
            tok = m.yes if rng.random() < 0.5 else m.no
            out.append(Message("book", (tok,), self.book_doc(tok, ts_ms)))
        else:
            side = "BUY" if rng.random() < 0.5 else "SELL"
            levels = m.bids if side == "BUY" else m.asks
            if levels and rng.random() < min(0.95, len(levels) / (2 * TARGET_DEPTH)):
                self._cancel(m, side, ts_ms, out)
            else:
                changes: list[tuple[str, int, int]] = []
                if self._place(m, side, changes):
                    self._trade(m, "BUY" if side == "BUY" else "SELL", ts_ms, out)
                else:
                    out.append(self._price_change(m, changes, ts_ms))
        after = m.top()
        if after != before:
            for msg in out:
                msg.top_changed = True
            self._best_bid_ask(m, ts_ms, out)
        return out

    def _place(self, m: SimMarket, side: str, changes: list) -> bool:
        """Add size at a level near fair value; True when the order would cross (it trades instead)."""
        rng, t = self.rng, m.tick
        d = 1
        while rng.random() < 0.55 and d < 40:
            d += 1
        fv = int(m.fv)
        if side == "BUY":
            p = max(t, ((fv - (d - 1) * t) // t) * t)
            if m.asks and p >= min(m.asks):
                return True
            levels = m.bids
        else:
            p = min(1000 - t, -((-(fv + (d - 1) * t)) // t) * t)
            if p <= fv:
                p += t
            if m.bids and p <= max(m.bids):
                return True
            levels = m.asks
        if p <= 0 or p >= 1000:
            return False
        size = levels.get(p, 0) + max(100, int(rng.lognormvariate(9.2, 1.0)))  # median ~100 shares
        levels[p] = size
        changes.append((side, p, size))
        return False

    def _cancel(self, m: SimMarket, side: str, ts_ms: int, out: list[Message]) -> None:
        rng = self.rng
        levels = m.bids if side == "BUY" else m.asks
        # Quotes left on the wrong side of a moved fair value go first; otherwise any level,
        # the far ones as likely as the near (so depth does not pile up at the edges).
        top = max(levels) if side == "BUY" else min(levels)
        stale = top > m.fv + m.tick if side == "BUY" else top < m.fv - m.tick
        p = top if stale else rng.choice(list(levels))
        size = 0 if (stale or rng.random() < 0.6) else max(1, int(levels[p] * rng.uniform(0.2, 0.9)))
        if size:
            levels[p] = size
        else:
            del levels[p]
        out.append(self._price_change(m, [(side, p, size)], ts_ms))

    def _trade(self, m: SimMarket, taker: str, ts_ms: int, out: list[Message]) -> None:
        """A taker order hits the best level on the other side: resting size goes, the level may empty."""
        rng = self.rng
        levels = m.asks if taker == "BUY" else m.bids
        if not levels:
            return
        p = min(levels) if taker == "BUY" else max(levels)
        qty = min(levels[p], max(100, int(rng.lognormvariate(8.5, 1.2))))
        rest = levels[p] - qty
        if rest:
            levels[p] = rest
        else:
            del levels[p]
        out.append(self._price_change(m, [("SELL" if taker == "BUY" else "BUY", p, rest)], ts_ms))
        # The same match seen from the NO token: a YES buy at p is a NO sell at 1 - p.
        on_yes = rng.random() < 0.5
        tok, price, side = (m.yes, p, taker) if on_yes else (m.no, 1000 - p, "SELL" if taker == "BUY" else "BUY")
        out.append(Message("last_trade_price", (tok,), {
            "event_type": "last_trade_price", "asset_id": tok, "market": m.cond, "price": _px(price),
            "size": _sz(qty), "side": side, "fee_rate_bps": "0", "timestamp": str(ts_ms)}))
        if rng.random() < BOOK_AFTER_TRADE_P:
            out.append(Message("book", (tok,), self.book_doc(tok, ts_ms)))

    def _price_change(self, m: SimMarket, changes: list[tuple], ts_ms: int) -> Message:
        """Changes already applied to the book; each may carry the top right after it (side, p, size, (bb, ba))."""
        items = []
        for change in changes:
            side, p, size = change[:3]
            bb, ba = change[3] if len(change) > 3 else m.top()
            items.append({"asset_id": m.yes, "price": _px(p), "size": _sz(size), "side": side,
                          "hash": "%040x" % self.rng.getrandbits(160), "best_bid": _px(bb), "best_ask": _px(ba)})
            items.append({"asset_id": m.no, "price": _px(1000 - p), "size": _sz(size), "side": "SELL" if side == "BUY" else "BUY",
                          "hash": "%040x" % self.rng.getrandbits(160), "best_bid": _px(1000 - ba), "best_ask": _px(1000 - bb)})
        return Message("price_change", (m.yes, m.no), {"event_type": "price_change", "market": m.cond,
                                                       "timestamp": str(ts_ms), "price_changes": items})

    def _best_bid_ask(self, m: SimMarket, ts_ms: int, out: list[Message]) -> None:
        bb, ba = m.top()
        for tok, b, a in ((m.yes, bb, ba), (m.no, 1000 - ba, 1000 - bb)):
            out.append(Message("best_bid_ask", (tok,), {
                "event_type": "best_bid_ask", "asset_id": tok, "market": m.cond, "best_bid": _px(b), "best_ask": _px(a),
                "spread": _px(a - b), "timestamp": str(ts_ms)}, custom=True))

    def _retick(self, m: SimMarket, ts_ms: int, out: list[Message]) -> None:
        """Tick 0.001 beyond the 0.04 / 0.96 bounds, 0.01 inside (with a little hysteresis)."""
        if m.tick == COARSE_TICK and (m.fv < FINE_BELOW - 2 or m.fv > FINE_ABOVE + 2):
            new = FINE_TICK
        elif m.tick == FINE_TICK and FINE_BELOW + 2 <= m.fv <= FINE_ABOVE - 2:
            new = COARSE_TICK
            # Orders off the coarse grid are cancelled first, each a level change like any other.
            off = []
            for side, levels in (("BUY", m.bids), ("SELL", m.asks)):
                for p in [p for p in levels if p % COARSE_TICK]:
                    del levels[p]
                    off.append((side, p, 0, m.top()))  # each item states the top right after it
            if off:
                out.append(self._price_change(m, off, ts_ms))
        else:
            return
        old, m.tick = m.tick, new
        for tok in (m.yes, m.no):
            out.append(Message("tick_size_change", (tok,), {
                "event_type": "tick_size_change", "asset_id": tok, "market": m.cond, "old_tick_size": _px(old),
                "new_tick_size": _px(new), "timestamp": str(ts_ms)}))
        for tok in (m.yes, m.no):  # clients drop deltas until the next book after a tick change
            out.append(Message("book", (tok,), self.book_doc(tok, ts_ms)))

    # -- lifecycle (custom_feature_enabled) -----------------------------------------------
    def new_market_message(self, row: dict, ts_ms: int) -> Message:
        toks = orjson.loads(row["clobTokenIds"])
        return Message("new_market", tuple(toks), {
            "event_type": "new_market", "id": row["id"], "question": row["question"], "market": row["conditionId"],
            "slug": row["slug"], "assets_ids": toks, "outcomes": orjson.loads(row["outcomes"]), "timestamp": str(ts_ms),
            "tags": [], "active": True, "order_price_min_tick_size": _px(self.token_market[toks[0]].tick)}, custom=True)

    def resolve(self, row: dict, ts_ms: int, winner: int = 0) -> Message:
        m = self.markets[row["conditionId"]]
        m.resolved = True
        toks = [m.yes, m.no]
        outcomes = orjson.loads(row["outcomes"])
        return Message("market_resolved", tuple(toks), {
            "event_type": "market_resolved", "id": row["id"], "market": m.cond, "assets_ids": toks,
            "winning_asset_id": toks[winner], "winning_outcome": outcomes[winner], "timestamp": str(ts_ms)}, custom=True)

    def next_payloads(self, ts_ms: int, tokens: list[str] | None = None) -> list[bytes]:
        """Messages of one event on a random market among `tokens` (or all), as a subscriber of both tokens sees them."""
        m = self.token_market[self.rng.choice(tokens)] if tokens else self.rng.choice(list(self.markets.values()))
        return [msg.payload for msg in self.step(m, ts_ms)]

def markets_of_rows(rows: list[dict]) -> dict[str, tuple[str, str]]:
    """condition id -> (yes, no) for the rows that carry two token ids."""
    out = {}
    for row in rows:
        try:
            toks = orjson.loads(row.get("clobTokenIds") or "[]")
        except orjson.JSONDecodeError:
            continue
        if isinstance(toks, list) and len(toks) == 2 and all(toks):
            out[row["conditionId"]] = (toks[0], toks[1])
    return out
