"""Every lifecycle fact of a run as a frozen dataclass (`types.py`), its one NDJSON codec, and the pure folds over them (`folds/`) (LAYOUT.md layer 0)."""

__all__ = ["codec", "json_text", "runlog_file", "types", "folds"]
