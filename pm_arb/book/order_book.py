"""The one L2 order book of a Polymarket token: snapshots replace it, changes set one level.

Every consumer of rebuilt books (the loss audit `capture-books`, `capture-export`'s quotes) goes
through this class, so they can never disagree. Prices are exact: each level is keyed by the
exact value of its price string, so "0.5" and "0.50" are the same level. Sizes are kept as the
strings the exchange sent and become `Decimal` only when read (`levels`, `best_bid`,
`best_ask`, `differing_levels`): the audit sets a level on every change but reads sizes rarely,
and parsing a size costs as much as the dict update itself (ADR/0010). Zero is recognised in
any spelling ("0", "0.00"); a size that is not a decimal raises BookError when set (sign, first
character) or at the latest when read.

Price keys (`key_of`) are the price times 10**6: a plain int for the first spelling of a
price with at most six decimals (every price Polymarket sends), an exact `Decimal` otherwise
(more decimals, or a second spelling such as "0.50" after "0.5"). An int and a Decimal of
the same value are equal and hash alike, so they are one level; ints make the hot path's
dict lookups and comparisons cheap, and the key object still says how its price was spelled
(`price_text`), as the Decimal keys of before did. Reads return `Decimal` prices.

Side names follow the wire: "BUY" is the bid side, "SELL" the ask side.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Mapping

from pm_arb.book.messages import Level

__all__ = ["BookError", "OrderBook", "decimal_of_key", "key_of", "price_of", "price_text", "sides_of", "size_of"]


class BookError(ValueError):
    """A level the exchange could not have sent (unparseable or non-finite price or size, unknown side)."""


SCALE = 6  # decimals an int key holds exactly
_CACHE_MAX = 1 << 16
# price string (or whatever the feed put there) -> its key. Price strings repeat endlessly (a
# token has at most ~1000 ticks), so each is parsed once.
_KEYS: dict[Any, Any] = {}
# int key -> (the Decimal of the one spelling that int stands for, its text). Never cleared, so
# an int key keeps its spelling for as long as a book holds it; bounded by the int keys of
# [0, 1] at six decimals, and past _CACHE_MAX entries new prices get Decimal keys instead.
_SPELLING: dict[int, tuple[Decimal, str]] = {}


def price_of(text: Any) -> Decimal:
    """The exact price of a price string; BookError when it is not a finite decimal in [0, 1]."""
    try:
        d = Decimal(text)
    except (InvalidOperation, TypeError, ValueError):
        raise BookError(f"price {text!r} is not a decimal string") from None
    if not d.is_finite() or d < 0 or d > 1:
        raise BookError(f"price {text!r} is outside [0, 1]")
    return d


def key_of(text: Any) -> int | Decimal:
    """The level key of a price string (see the module docstring); BookError as `price_of`."""
    k = _KEYS.get(text)
    if k is not None:
        return k
    d = price_of(text)
    sign, digits, exp = d.as_tuple()
    try:
        scaled = Decimal((sign, digits, exp + SCALE))  # exact: only the exponent moves
    except ArithmeticError:  # an exponent at Decimal's limits ("0E+999999999999999999")
        raise BookError(f"price {text!r} has an exponent out of range") from None
    k = scaled
    as_int = int(scaled)
    if as_int == scaled:
        spelled = str(d)
        known = _SPELLING.get(as_int)
        if known is None and len(_SPELLING) < _CACHE_MAX:
            known = _SPELLING[as_int] = (d, spelled)
        if known is not None and known[1] == spelled:
            k = as_int
    if len(_KEYS) >= _CACHE_MAX:
        _KEYS.clear()
    _KEYS[text] = k
    return k


def decimal_of_key(k: int | Decimal) -> Decimal:
    """The price a key stands for, spelled as the text that made it."""
    if type(k) is int:
        return _SPELLING[k][0]
    sign, digits, exp = k.as_tuple()  # type: ignore[union-attr]
    return Decimal((sign, digits, exp - SCALE))


def price_text(k: int | Decimal | None) -> str:
    """A key as str(Decimal) of its price ("none" for None): what reports print."""
    if k is None:
        return "none"
    return _SPELLING[k][1] if type(k) is int else str(decimal_of_key(k))


_SIZE_START = frozenset("0123456789.")
_NONZERO_START = frozenset("123456789")


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


def size_of(text: str) -> Decimal:
    """The exact size of a size string; BookError when it is not a finite decimal."""
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise BookError(f"size {text!r} is not a decimal string") from None
    if not d.is_finite():
        raise BookError(f"size {text!r} is not finite")
    return d


_STALE = object()  # cached best key needs recomputing


class OrderBook:
    """Bids and asks of one token: price key (`key_of`) -> size (the exchange's decimal string)."""

    __slots__ = ("_bids", "_asks", "_best_bid", "_best_ask")

    def __init__(self) -> None:
        self._bids: dict[Any, str] = {}
        self._asks: dict[Any, str] = {}
        # Best keys are cached: a change away from the top leaves them valid, removing the
        # top level marks them stale, and the next read recomputes with one max()/min().
        self._best_bid: object = None
        self._best_ask: object = None

    # -- writes -------------------------------------------------------------------------
    def apply_snapshot(self, bids: Iterable[Mapping[str, str]], asks: Iterable[Mapping[str, str]]) -> None:
        """Replace the whole book with a `book` message's levels ({"price": str, "size": str}, or
        messages.Level)."""
        self.replace(_side_of(bids), _side_of(asks))

    def replace(self, bids: dict[Any, str], asks: dict[Any, str]) -> None:
        """Install sides made by `sides_of` (the audit compares them first, then installs them)."""
        self._bids = bids
        self._asks = asks
        self._best_bid = _STALE
        self._best_ask = _STALE

    def apply_change(self, side: str, price: str, size: str) -> None:
        """Set one level to its new aggregate size; a zero size removes the level."""
        self.change_top(side, price, size)

    def change_top(self, side: str, price: str, size: str) -> tuple[Any, Any]:
        """`apply_change`, then the top as keys (best bid key, best ask key; None for an empty
        side): the audit's check after every change, in one call."""
        p = _KEYS.get(price)
        if p is None:
            p = key_of(price)
        if side == "BUY":
            levels = self._bids
        elif side == "SELL":
            levels = self._asks
        else:
            raise BookError(f"side {side!r} is neither BUY nor SELL")
        bid, ask = self._best_bid, self._best_ask
        # _positive inlined for the common case (a size starting 1-9 is above zero, and passes
        # its cheap check): this runs for every change.
        if type(size) is str and size[:1] in _NONZERO_START or _positive(size):
            levels[p] = size
            if side == "BUY":
                if bid is not _STALE and (bid is None or p > bid):
                    bid = self._best_bid = p
            elif ask is not _STALE and (ask is None or p < ask):
                ask = self._best_ask = p
        elif levels.pop(p, None) is not None:
            if side == "BUY":
                if p == bid:
                    bid = self._best_bid = _STALE
            elif p == ask:
                ask = self._best_ask = _STALE
        if bid is _STALE:
            bid = self._best_bid = max(self._bids) if self._bids else None
        if ask is _STALE:
            ask = self._best_ask = min(self._asks) if self._asks else None
        return bid, ask

    def clear(self) -> None:
        self._bids = {}
        self._asks = {}
        self._best_bid = None
        self._best_ask = None

    # -- reads --------------------------------------------------------------------------
    def top_keys(self) -> tuple[Any, Any]:
        """(best bid key, best ask key), None for an empty side."""
        bid, ask = self._best_bid, self._best_ask
        if bid is _STALE:
            bid = self._best_bid = max(self._bids) if self._bids else None
        if ask is _STALE:
            ask = self._best_ask = min(self._asks) if self._asks else None
        return bid, ask

    def top(self) -> tuple[Decimal | None, Decimal | None]:
        """(best bid price, best ask price), None for an empty side."""
        bid, ask = self.top_keys()
        return (None if bid is None else decimal_of_key(bid), None if ask is None else decimal_of_key(ask))

    def best_bid_price(self) -> Decimal | None:
        return self.top()[0]

    def best_ask_price(self) -> Decimal | None:
        return self.top()[1]

    def best_bid(self) -> tuple[Decimal, Decimal] | None:
        k = self.top_keys()[0]
        return None if k is None else (decimal_of_key(k), size_of(self._bids[k]))

    def best_ask(self) -> tuple[Decimal, Decimal] | None:
        k = self.top_keys()[1]
        return None if k is None else (decimal_of_key(k), size_of(self._asks[k]))

    def size_at(self, side: str, k: Any) -> str | None:
        """The size text at price key `k` on "BUY" / "SELL", None when there is no such level."""
        return (self._bids if side == "BUY" else self._asks).get(k)

    def levels(self) -> tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]:
        """Copies of (bids, asks) as price -> size, both exact."""
        return ({decimal_of_key(p): size_of(s) for p, s in self._bids.items()},
                {decimal_of_key(p): size_of(s) for p, s in self._asks.items()})

    def is_empty(self) -> bool:
        return not self._bids and not self._asks

    def differing_levels(self, bids: Iterable[Mapping[str, str]], asks: Iterable[Mapping[str, str]]) -> int:
        """How many price levels of a snapshot differ from this book (missing, extra, or another size)."""
        return self.differing_sides(*sides_of(bids, asks))

    def differing_sides(self, bids: dict[Any, str], asks: dict[Any, str]) -> int:
        """`differing_levels` for sides already made by `sides_of`."""
        return _diff(self._bids, bids) + _diff(self._asks, asks)


def sides_of(bids: Iterable[Mapping[str, str] | Level], asks: Iterable[Mapping[str, str] | Level]) -> tuple[dict[Any, str], dict[Any, str]]:
    """A snapshot's (bids, asks) as the book holds them: price key -> size; BookError for a bad level."""
    return _side_of(bids), _side_of(asks)


def _side_of(levels: Iterable[Mapping[str, str] | Level]) -> dict[Any, str]:
    out: dict[Any, str] = {}
    keys = _KEYS
    try:
        for level in levels:
            typed = type(level) is Level  # the audit's decoded messages; dicts from everyone else
            size = level.size if typed else level["size"]
            # a zero level in a snapshot is no level (_positive's common case inlined, as in change_top)
            if type(size) is str and size[:1] in _NONZERO_START or _positive(size):
                price = level.price if typed else level["price"]
                k = keys.get(price)
                out[key_of(price) if k is None else k] = size
    except (KeyError, TypeError):
        raise BookError("a snapshot level is not a {price, size} object") from None
    return out


def _diff(mine: dict[Any, str], theirs: dict[Any, str]) -> int:
    if mine == theirs:  # the common answer, at C speed
        return 0
    differ = 0
    for p, s in theirs.items():
        m = mine.get(p)
        if m is None or (m != s and size_of(m) != size_of(s)):
            differ += 1
    return differ + sum(1 for p in mine if p not in theirs)
