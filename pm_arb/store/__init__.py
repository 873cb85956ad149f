"""Bytes on disk (LAYOUT.md layer 1): the frames/idx format and files, the run bundle"s names and manifest, the bundled fixtures, the JSON documents" vocabulary."""

__all__ = ["fixtures", "frames_format", "layout", "run_lock", "scan", "shard_files", "vocabulary"]
