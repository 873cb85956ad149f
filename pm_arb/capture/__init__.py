"""Reader threads that move bytes from a socket (or the bundled fixtures) to the writer, knowing `wire/` and `store/` but not `actors/` (LAYOUT.md layer 2)."""

__all__ = ["frame_parse", "keepalive", "offline_reader", "reader_sink", "ws_reader"]
