"""The one L2 order book of a Polymarket token: snapshots replace it, changes set one level.

Every consumer of rebuilt books (the loss audit `capture-books`, `capture-export`'s quotes) goes
through this class, so they can never disagree. Prices are exact: each level is keyed by the
`Decimal` of its price string, so "0.5" and "0.50" are the same level. Sizes are kept as the
strings the exchange sent and become `Decimal` only when read (`levels`, `best_bid`,
`best_ask`, `differing_levels`): the audit sets a level on every change but reads sizes rarely,
and parsing a size costs as much as the dict update itself (ADR/0010). Zero is recognised in
any spelling ("0", "0.00"); a size that is not a decimal raises BookError when set (sign, first
character) or at the latest when read.

Side names follow the wire: "BUY" is the bid side, "SELL" the ask side.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Iterable, Mapping

__all__ = ["BookError", "OrderBook", "price_of"]


class BookError(ValueError):
    """A level the exchange could not have sent (unparseable or non-finite price or size, unknown side)."""


# Price strings repeat endlessly (a token has at most ~1000 ticks), so their Decimal is cached.
_PRICES: dict[str, Decimal] = {}
_PRICE_CACHE_MAX = 1 << 16


def price_of(text: str) -> Decimal:
    """The exact price of a price string; BookError when it is not a finite decimal in [0, 1]."""
    d = _PRICES.get(text)
    if d is not None:
        return d
    try:
        d = Decimal(text)
    except (InvalidOperation, TypeError):
        raise BookError(f"price {text!r} is not a decimal string") from None
    if not d.is_finite() or d < 0 or d > 1:
        raise BookError(f"price {text!r} is outside [0, 1]")
    if len(_PRICES) >= _PRICE_CACHE_MAX:
        _PRICES.clear()
    _PRICES[text] = d
    return d


_SIZE_START = frozenset("0123456789.")


def _positive(size: object) -> bool:
    """True for a size above zero, False for a zero ("0", "0.00"); BookError for what cannot be a size.

    Cheap on purpose (this runs for every change): the sign, zero-ness and the first character
    are checked here; a size that is still not a decimal (say "1x") raises BookError when read.
    """
    if type(size) is not str:
        raise BookError(f"size {size!r} is not a decimal string")
    if size.strip("0."):
        if size[0] in _SIZE_START:
            return True
    elif "0" in size:
        return False
    raise BookError(f"size {size!r} is not a finite non-negative decimal string")


def _size(text: str) -> Decimal:
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise BookError(f"size {text!r} is not a decimal string") from None
    if not d.is_finite():
        raise BookError(f"size {text!r} is not finite")
    return d


_STALE = object()  # cached best price needs recomputing


class OrderBook:
    """Bids and asks of one token: price (Decimal) -> size (the exchange's decimal string)."""

    __slots__ = ("_bids", "_asks", "_best_bid", "_best_ask")

    def __init__(self) -> None:
        self._bids: dict[Decimal, str] = {}
        self._asks: dict[Decimal, str] = {}
        # Best prices are cached: a change away from the top leaves them valid, removing the
        # top level marks them stale, and the next read recomputes with one max()/min().
        self._best_bid: object = None
        self._best_ask: object = None

    # -- writes -------------------------------------------------------------------------
    def apply_snapshot(self, bids: Iterable[Mapping[str, str]], asks: Iterable[Mapping[str, str]]) -> None:
        """Replace the whole book with a `book` message's levels ({"price": str, "size": str})."""
        self._bids = _side_of(bids)
        self._asks = _side_of(asks)
        self._best_bid = _STALE
        self._best_ask = _STALE

    def apply_change(self, side: str, price: str, size: str) -> None:
        """Set one level to its new aggregate size; a zero size removes the level."""
        p = _PRICES.get(price) or price_of(price)
        if side == "BUY":
            levels = self._bids
        elif side == "SELL":
            levels = self._asks
        else:
            raise BookError(f"side {side!r} is neither BUY nor SELL")
        # _positive inlined for the common case (a plain non-zero size): this runs for every change.
        if not (type(size) is str and size.strip("0.") and size[0] in _SIZE_START) and not _positive(size):
            if levels.pop(p, None) is not None:
                if side == "BUY":
                    if p == self._best_bid:
                        self._best_bid = _STALE
                elif p == self._best_ask:
                    self._best_ask = _STALE
            return
        levels[p] = size
        if side == "BUY":
            best = self._best_bid
            if best is not _STALE and (best is None or p > best):
                self._best_bid = p
        else:
            best = self._best_ask
            if best is not _STALE and (best is None or p < best):
                self._best_ask = p

    def clear(self) -> None:
        self._bids = {}
        self._asks = {}
        self._best_bid = None
        self._best_ask = None

    # -- reads --------------------------------------------------------------------------
    def best_bid_price(self) -> Decimal | None:
        best = self._best_bid
        if best is _STALE:
            best = self._best_bid = max(self._bids) if self._bids else None
        return best  # type: ignore[return-value]

    def top(self) -> tuple[Decimal | None, Decimal | None]:
        """(best bid price, best ask price), None for an empty side: the audit's check after every change."""
        bid, ask = self._best_bid, self._best_ask
        if bid is _STALE:
            bid = self._best_bid = max(self._bids) if self._bids else None
        if ask is _STALE:
            ask = self._best_ask = min(self._asks) if self._asks else None
        return bid, ask  # type: ignore[return-value]

    def best_ask_price(self) -> Decimal | None:
        best = self._best_ask
        if best is _STALE:
            best = self._best_ask = min(self._asks) if self._asks else None
        return best  # type: ignore[return-value]

    def best_bid(self) -> tuple[Decimal, Decimal] | None:
        p = self.best_bid_price()
        return None if p is None else (p, _size(self._bids[p]))

    def best_ask(self) -> tuple[Decimal, Decimal] | None:
        p = self.best_ask_price()
        return None if p is None else (p, _size(self._asks[p]))

    def levels(self) -> tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]:
        """Copies of (bids, asks) as price -> size, both exact."""
        return ({p: _size(s) for p, s in self._bids.items()}, {p: _size(s) for p, s in self._asks.items()})

    def is_empty(self) -> bool:
        return not self._bids and not self._asks

    def differing_levels(self, bids: Iterable[Mapping[str, str]], asks: Iterable[Mapping[str, str]]) -> int:
        """How many price levels of a snapshot differ from this book (missing, extra, or another size)."""
        return _diff(self._bids, _side_of(bids)) + _diff(self._asks, _side_of(asks))


def _side_of(levels: Iterable[Mapping[str, str]]) -> dict[Decimal, str]:
    out: dict[Decimal, str] = {}
    try:
        for level in levels:
            size = level["size"]
            if _positive(size):  # a zero level in a snapshot is no level
                out[price_of(level["price"])] = size
    except (KeyError, TypeError):
        raise BookError("a snapshot level is not a {price, size} object") from None
    return out


def _diff(mine: dict[Decimal, str], theirs: dict[Decimal, str]) -> int:
    differ = 0
    for p, s in theirs.items():
        m = mine.get(p)
        if m is None or (m != s and _size(m) != _size(s)):
            differ += 1
    return differ + sum(1 for p in mine if p not in theirs)
