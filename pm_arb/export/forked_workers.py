"""What every forked worker process (capture-books, capture-export) does first.

A worker forked by a ProcessPoolExecutor outlives a parent that is killed (SIGTERM, SIGKILL,
OOM): it blocks writing progress or results to a pipe nobody reads, keeps the caller's
stdout/stderr open (a caller reading them never sees EOF) and holds CPU and memory. On Linux
the kernel can signal a process when its parent dies (prctl PR_SET_PDEATHSIG); elsewhere the
worker stays an orphan until its task ends, as before.
"""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies; if the parent is already
    gone (it died between the fork and this call), exit now."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: no such call
        return
    if os.getppid() != parent_pid:
        os._exit(1)
