"""pm_arb: a capture plant for Polymarket's CLOB market WebSocket."""

__version__ = "0.1.0"

from pm_arb.reader import Damage, DamagedRecordError, Event, FrameRecord, Market, Run, open_run  # noqa: E402

__all__ = ["Damage", "DamagedRecordError", "Event", "FrameRecord", "Market", "Run", "open_run", "__version__"]
