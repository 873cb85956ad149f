"""The process edge of a capture (LAYOUT.md layer 3): signals, start-up, and what the running plant shows and watches."""

__all__ = ["disk_watch", "malloc_tuning", "run_capture", "stop_signals"]
