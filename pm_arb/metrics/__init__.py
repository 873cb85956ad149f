"""Measures of a run (LAYOUT.md layer 0, no I/O): the latency histogram and how quantities are shown."""

__all__ = ["latency_hist", "units"]
