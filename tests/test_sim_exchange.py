"""The simulator as one exchange: message shapes a real client decodes, one book per token for
every connection, trades that consume resting size, tick changes only at the bounds, stationary
books, and custom_feature_enabled honoured (with Gamma agreeing on new and resolved markets)."""

from __future__ import annotations

import statistics
import time
from decimal import Decimal

import msgspec
import orjson
import requests
import websocket

from pm_arb.book.order_book import OrderBook
from pm_arb.book.rebuild import BookFold
from pm_arb.sim.exchange import SimExchange
from pm_arb.sim.market_data import Exchange, make_gamma_rows, markets_of_rows


# Shaped as NautilusTrader's Polymarket adapter declares them
# (nautilus_trader/adapters/polymarket/schemas/book.py: PolymarketBookSnapshot, PolymarketQuotes,
# PolymarketTrade, PolymarketTickSizeChange); the three custom-feature messages as
# ../shared/spec/POLYMARKET_PROTOCOL.md lists their required fields.
class Level(msgspec.Struct, frozen=True):
    price: str
    size: str


class Book(msgspec.Struct, tag="book", tag_field="event_type", frozen=True):
    market: str
    asset_id: str
    bids: list[Level]
    asks: list[Level]
    timestamp: str


class Quote(msgspec.Struct, frozen=True):
    asset_id: str
    price: str
    side: str
    size: str
    hash: str
    best_bid: str | None = None
    best_ask: str | None = None


class Quotes(msgspec.Struct, tag="price_change", tag_field="event_type", frozen=True):
    market: str
    price_changes: list[Quote]
    timestamp: str


class Trade(msgspec.Struct, tag="last_trade_price", tag_field="event_type", frozen=True):
    market: str
    asset_id: str
    fee_rate_bps: str
    price: str
    side: str
    size: str
    timestamp: str


class TickSizeChange(msgspec.Struct, tag="tick_size_change", tag_field="event_type", frozen=True):
    market: str
    asset_id: str
    new_tick_size: str
    old_tick_size: str
    timestamp: str


class BestBidAsk(msgspec.Struct, tag="best_bid_ask", tag_field="event_type", frozen=True):
    market: str
    asset_id: str
    best_bid: str
    best_ask: str
    spread: str
    timestamp: str


class NewMarket(msgspec.Struct, tag="new_market", tag_field="event_type", frozen=True):
    id: str
    question: str
    market: str
    slug: str
    assets_ids: list[str]
    outcomes: list[str]
    timestamp: str


class MarketResolved(msgspec.Struct, tag="market_resolved", tag_field="event_type", frozen=True):
    id: str
    market: str
    assets_ids: list[str]
    winning_asset_id: str
    winning_outcome: str
    timestamp: str


MESSAGE = Book | Quotes | Trade | TickSizeChange | BestBidAsk | NewMarket | MarketResolved
DECODER = msgspec.json.Decoder(MESSAGE | list[Book])


def exchange(n: int = 20, seed: int = 1) -> Exchange:
    return Exchange(markets_of_rows(make_gamma_rows(n, seed=seed, extras=False)), seed=seed)


def test_every_message_decodes_with_a_real_clients_schemas():
    ex = exchange()
    kinds: dict[type, int] = {}
    payloads = [ex.initial_dump(list(ex.token_market)[:6], 1)]
    markets = list(ex.markets.values())
    for m in markets[:4]:
        m.fv = 41.0  # near the 0.04 bound: tick size changes happen
    for i in range(20000):
        payloads.extend(msg.payload for msg in ex.step(markets[i % len(markets)], 1_767_000_000_000 + i))
    row = make_gamma_rows(1, seed=99, first_id=900_001, extras=False)[0]
    yes, no = orjson.loads(row["clobTokenIds"])
    ex.add_market(row["conditionId"], yes, no)
    payloads.append(ex.new_market_message(row, 1).payload)
    payloads.append(ex.resolve(row, 2).payload)
    for p in payloads:
        doc = DECODER.decode(p)
        for d in doc if isinstance(doc, list) else [doc]:
            kinds[type(d)] = kinds.get(type(d), 0) + 1
            if isinstance(d, (Quotes, Trade)):
                sides = [q.side for q in d.price_changes] if isinstance(d, Quotes) else [d.side]
                assert set(sides) <= {"BUY", "SELL"}
    assert set(kinds) == {Book, Quotes, Trade, TickSizeChange, BestBidAsk, NewMarket, MarketResolved}


def test_trades_consume_resting_size_on_the_side_they_hit():
    ex = exchange(seed=2)
    books: dict[str, OrderBook] = {}
    for tok in ex.token_market:
        doc = ex.book_doc(tok, 0)
        books[tok] = OrderBook()
        books[tok].apply_snapshot(doc["bids"], doc["asks"])
    markets = list(ex.markets.values())
    trades = 0
    before: dict[str, tuple] = {}  # each token's best levels just before the last price_change applied
    for i in range(20000):
        msgs = ex.step(markets[i % len(markets)], i)
        for k, msg in enumerate(msgs):
            doc = orjson.loads(msg.payload)
            if doc["event_type"] == "last_trade_price":
                trades += 1
                tok, price, size = doc["asset_id"], Decimal(doc["price"]), Decimal(doc["size"])
                bid, ask = before[tok]
                hit = ask if doc["side"] == "BUY" else bid  # a buyer takes the best ask, a seller the best bid
                assert hit is not None and hit[0] == price
                change = next(it for it in orjson.loads(msgs[k - 1].payload)["price_changes"] if it["asset_id"] == tok)
                assert change["side"] == ("SELL" if doc["side"] == "BUY" else "BUY") and Decimal(change["price"]) == price
                assert Decimal(change["size"]) == hit[1] - size  # exactly the resting size minus the trade
            elif doc["event_type"] == "book":
                books[doc["asset_id"]].apply_snapshot(doc["bids"], doc["asks"])
            elif doc["event_type"] == "price_change":
                for it in doc["price_changes"]:
                    before[it["asset_id"]] = (books[it["asset_id"]].best_bid(), books[it["asset_id"]].best_ask())
                    books[it["asset_id"]].apply_change(it["side"], it["price"], it["size"])
    assert trades > 1000


def test_tick_size_changes_only_across_the_bounds():
    ex = exchange(seed=3)
    markets = list(ex.markets.values())
    for m in markets:
        m.fv, m.vol = 500.0, 0.5
        ex.step(m, 0)  # markets that started near a bound go back to 0.01 once
    for i in range(20000):
        assert all(msg.kind != "tick_size_change" for msg in ex.step(markets[i % len(markets)], i))
    for m in markets:
        m.fv, m.vol = 40.0, 3.0
    changes = []
    for i in range(20000):
        m = markets[i % len(markets)]
        for msg in ex.step(m, i):
            if msg.kind == "tick_size_change" and msg.tokens[0] == m.yes:
                changes.append((orjson.loads(msg.payload)["new_tick_size"], m.fv))
    assert changes
    for new, fv in changes:
        assert (fv < 40 or fv > 960) if new == "0.001" else (40 <= fv <= 960)


def test_spreads_and_depth_stay_stationary():
    ex = exchange(n=30, seed=4)
    markets = list(ex.markets.values())
    blocks = []
    for _ in range(4):
        for i in range(15000):
            ex.step(markets[i % len(markets)], i)
        spreads = [(m.top()[1] - m.top()[0]) / 1000 for m in markets]
        depth = [len(m.bids) + len(m.asks) for m in markets]
        one_sided = sum(1 for m in markets if not m.bids or not m.asks)
        blocks.append((statistics.median(spreads), statistics.mean(depth), one_sided))
    for med_spread, mean_depth, one_sided in blocks:
        assert med_spread <= 0.03 and 8 <= mean_depth <= 40 and one_sided <= 2, blocks
    assert blocks[-1][1] < 2 * blocks[0][1] and blocks[-1][0] <= 2 * blocks[0][0] + 0.01, blocks


def _client(url: str, tokens: list[str], custom: bool) -> websocket.WebSocket:
    ws = websocket.create_connection(url, timeout=5)
    ws.send(orjson.dumps({"assets_ids": tokens, "type": "market", "initial_dump": True, "custom_feature_enabled": custom}))
    return ws


def test_two_connections_see_one_book_and_the_same_deltas():
    with SimExchange(markets=6, rate=400, seed=5, record_sent=True, extras=False) as sim:
        tokens = sorted(sim.exchange.token_market)
        a = _client(sim.ws_url, tokens, custom=True)
        time.sleep(0.5)
        b = _client(sim.ws_url, tokens, custom=True)
        time.sleep(0.8)
        sim.send_data = False
        time.sleep(0.3)
        ca, cb = sorted(sim.connections.values(), key=lambda c: c.conn_id)
        a.close()
        b.close()
    assert cb.sent[0].startswith(b"[") and len(cb.sent) > 50
    j = ca.sent.index(cb.sent[1])  # B's first delta is one A got too; from there both streams are one
    assert ca.sent[j : j + len(cb.sent) - 1] == cb.sent[1:]
    fold = BookFold()
    for k, p in enumerate(ca.sent[:j]):
        fold.frame(0, k, k, k, 0, p)
    for doc in orjson.loads(cb.sent[0]):
        b_book = OrderBook()
        b_book.apply_snapshot(doc["bids"], doc["asks"])
        assert b_book.levels() == fold.tokens[doc["asset_id"]].book.levels()  # B's dump is A's book at that moment


def test_custom_feature_messages_only_when_asked_and_gamma_agrees():
    with SimExchange(markets=4, rate=300, seed=6, extras=False) as sim:
        tokens = sorted(sim.exchange.token_market)
        plain, custom = _client(sim.ws_url, tokens, custom=False), _client(sim.ws_url, tokens, custom=True)
        time.sleep(0.5)
        row = sim.list_new_market()
        cond = sorted(markets_of_rows(sim.rows()))[0]
        sim.resolve_market(cond)
        time.sleep(0.3)
        listed = {r["conditionId"] for r in requests.get(f"{sim.gamma_url}/markets", params={"limit": 100}, timeout=5).json()}

        def kinds(ws):
            out = []
            ws.settimeout(0.5)
            try:
                while True:
                    doc = orjson.loads(ws.recv())
                    out.extend(d["event_type"] for d in (doc if isinstance(doc, list) else [doc]))
            except websocket.WebSocketTimeoutException:
                return out

        sim.send_data = False
        got_plain, got_custom = kinds(plain), kinds(custom)
        plain.close()
        custom.close()
    assert row["conditionId"] in listed and cond not in listed  # Gamma lists the new market, not the resolved one
    assert not {"best_bid_ask", "new_market", "market_resolved"} & set(got_plain) and "price_change" in got_plain
    assert {"best_bid_ask", "new_market", "market_resolved"} <= set(got_custom)
