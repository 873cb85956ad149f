"""pm_arb: a capture plant for Polymarket's CLOB market WebSocket."""

__version__ = "0.1.0"
