"""The process edge of a capture: signals and start-up (LAYOUT.md layer 3)."""
