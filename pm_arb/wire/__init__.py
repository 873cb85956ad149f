"""What Polymarket sends, as pure functions: `normalize` maps messages to Tardis-format rows."""

from pm_arb.wire.normalize import BookRow, MarketEventRow, QuoteRow, TradeRow, normalize

__all__ = ["BookRow", "MarketEventRow", "QuoteRow", "TradeRow", "normalize"]
