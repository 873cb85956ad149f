"""Who holds a run dir: a capture writing it, or a repair rewriting its files.

An advisory flock(2) on the run directory itself, so the bundle gains no file. The kernel
releases it when its holder exits in any way (SIGKILL and OOM included), so a lock that is
held always means a live process: never a stale lock file to clean up by hand.
"""

from __future__ import annotations

import errno
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pm_arb.errors import UserError


class RunHeld(UserError):
    """The run dir is held by a live process (exit 2: try again once it is done)."""


def hold_for_capture(run_dir: Path) -> int:
    """Take the run dir for a capture; the returned fd holds it until closed or the process ends."""
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            os.close(fd)
            raise RunHeld(f"run dir {run_dir} is held by another process (a repair?); start the capture again", 2) from None
        # A filesystem without flock: capture anyway; repair cannot see it is live there.
    return fd


def release(fd: int) -> None:
    os.close(fd)


def capture_holds(run_dir: Path) -> bool:
    """True while another process (a capture, or a repair) holds the run dir."""
    try:
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        return False  # a filesystem without flock: no capture of ours could hold it either
    finally:
        os.close(fd)  # closing drops the shared lock taken above


@contextmanager
def held_for_repair(run_dir: Path) -> Iterator[None]:
    """Hold the run dir exclusively while repairing; raise RunHeld when a capture holds it."""
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RunHeld(
                f"{run_dir} is live: a capture is writing it (or another repair runs); --repair refused, nothing was "
                "changed: stop the capture first, then repair (capture-verify without --repair checks a live run)",
                2,
            ) from None
            raise
        yield
    finally:
        os.close(fd)
