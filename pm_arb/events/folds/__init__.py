"""Pure `fold(events) -> state` functions: audit, gates, latency, placement, supervisor state, timeline, what was written. No I/O."""

__all__ = ["audit", "gates", "latency", "placement", "supervisor_state", "timeline", "written"]
