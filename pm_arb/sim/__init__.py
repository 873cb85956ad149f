"""The loopback simulated exchange: Gamma REST and the CLOB market WebSocket, speaking the public protocol (LAYOUT.md layer 3, ADR/0004)."""

__all__ = ["exchange", "market_data"]
