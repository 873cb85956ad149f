"""The one order book (`order_book.py`) and the fold of a run's frames into per-token books (`rebuild.py`)."""

from pm_arb.book.order_book import BookError, OrderBook, price_of

__all__ = ["BookError", "OrderBook", "price_of"]
