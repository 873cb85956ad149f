"""Deterministic Polymarket-shaped data: Gamma market rows and CLOB market-channel messages.

Shapes follow ../shared/spec/POLYMARKET_PROTOCOL.md: Gamma's JSON-encoded string fields
(`outcomes`, `outcomePrices`, `clobTokenIds`), decimal-string prices, epoch-ms string
timestamps, `price_change` with `price_changes[]`, initial dumps as arrays of `book`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

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


@dataclass
class _Book:
    bids: dict[int, float] = field(default_factory=dict)  # price in ticks (0.01) -> size
    asks: dict[int, float] = field(default_factory=dict)
    tick: str = "0.01"


def _px(ticks: int) -> str:
    return f"{ticks / 100:.2f}".rstrip("0").rstrip(".") if ticks % 100 else str(ticks // 100)


def _sz(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


class MarketStream:
    """Generates market-channel messages for a set of binary markets (condition id -> (yes, no))."""

    def __init__(self, markets: dict[str, tuple[str, str]], seed: int = 11) -> None:
        self.rng = random.Random(seed)
        self.markets = dict(markets)
        self.token_market = {t: c for c, pair in self.markets.items() for t in pair}
        self.books: dict[str, _Book] = {}
        for cond, (yes, no) in self.markets.items():
            mid = self.rng.randrange(10, 90)
            self.books[yes] = self._fresh_book(mid)
            self.books[no] = self._fresh_book(100 - mid)

    def _fresh_book(self, mid: int) -> _Book:
        b = _Book()
        for k in range(1, 6):
            if mid - k > 0:
                b.bids[mid - k] = round(self.rng.uniform(10, 500), 2)
            if mid + k < 100:
                b.asks[mid + k] = round(self.rng.uniform(10, 500), 2)
        return b

    def _book_obj(self, token: str, ts_ms: int) -> dict:
        b = self.books[token]
        return {
            "event_type": "book",
            "asset_id": token,
            "market": self.token_market[token],
            "bids": [{"price": _px(p), "size": _sz(s)} for p, s in sorted(b.bids.items())],
            "asks": [{"price": _px(p), "size": _sz(s)} for p, s in sorted(b.asks.items(), reverse=True)],
            "timestamp": str(ts_ms),
            "hash": "%040x" % self.rng.getrandbits(160),
        }

    def initial_dump(self, tokens: list[str], ts_ms: int) -> bytes:
        """What the server sends on subscribe: one array of book snapshots."""
        return orjson.dumps([self._book_obj(t, ts_ms) for t in tokens if t in self.books])

    def _best(self, token: str) -> tuple[str, str]:
        b = self.books[token]
        bid = _px(max(b.bids)) if b.bids else "0"
        ask = _px(min(b.asks)) if b.asks else "1"
        return bid, ask

    def next_message(self, ts_ms: int, tokens: list[str] | None = None) -> bytes:
        """One message about a random market among `tokens` (or all)."""
        rng = self.rng
        token = rng.choice(tokens) if tokens else rng.choice(list(self.token_market))
        cond = self.token_market[token]
        yes, no = self.markets[cond]
        r = rng.random()
        if r < 0.70:
            changes = []
            for t in (yes, no) if rng.random() < 0.5 else (token,):
                b = self.books[t]
                side = rng.choice(("BUY", "SELL"))
                levels = b.bids if side == "BUY" else b.asks
                bid_top = max(b.bids) if b.bids else 1
                ask_top = min(b.asks) if b.asks else 99
                price = rng.randrange(max(1, bid_top - 4), bid_top + 1) if side == "BUY" else rng.randrange(ask_top, min(99, ask_top + 4) + 1)
                size = 0.0 if (price in levels and rng.random() < 0.25) else round(rng.uniform(5, 800), 2)
                if size == 0.0:
                    levels.pop(price, None)
                else:
                    levels[price] = size
                bb, ba = self._best(t)
                changes.append({"asset_id": t, "price": _px(price), "size": _sz(size) if size else "0", "side": side,
                                "hash": "%040x" % rng.getrandbits(160), "best_bid": bb, "best_ask": ba})
            return orjson.dumps({"event_type": "price_change", "market": cond, "timestamp": str(ts_ms), "price_changes": changes})
        if r < 0.80:
            bb, ba = self._best(token)
            return orjson.dumps({"event_type": "last_trade_price", "asset_id": token, "market": cond, "price": ba,
                                 "size": _sz(rng.uniform(1, 300)), "side": rng.choice(("BUY", "SELL")), "fee_rate_bps": "0",
                                 "timestamp": str(ts_ms)})
        if r < 0.93:
            bb, ba = self._best(token)
            spread = f"{max(0.0, float(ba) - float(bb)):.2f}"
            return orjson.dumps({"event_type": "best_bid_ask", "asset_id": token, "market": cond, "best_bid": bb, "best_ask": ba,
                                 "spread": spread, "timestamp": str(ts_ms)})
        if r < 0.99:
            return orjson.dumps(self._book_obj(token, ts_ms))
        b = self.books[token]
        old, new = b.tick, ("0.001" if b.tick == "0.01" else "0.01")
        b.tick = new
        return orjson.dumps({"event_type": "tick_size_change", "asset_id": token, "market": cond, "old_tick_size": old,
                             "new_tick_size": new, "timestamp": str(ts_ms)})


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
