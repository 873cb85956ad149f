"""The process edge of a capture (LAYOUT.md layer 3): what the running plant shows and watches."""
