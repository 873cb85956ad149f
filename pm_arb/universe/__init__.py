"""The universe: which markets are captured and which connection carries each (layer 0, no I/O), and `gamma.py`, the Gamma client that lists them (layer 2)."""

__all__ = ["gamma", "placement", "refresh_policy", "select"]
