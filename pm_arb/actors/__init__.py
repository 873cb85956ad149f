"""The pykka actors of a capture (LAYOUT.md layer 2), one per file; they talk only by the messages in `messages.py` (ADR/0002)."""

__all__ = ["base", "gauge", "messages", "metrics", "shard", "supervisor", "ticker", "universe", "writer"]
