"""How to print a next-step command so that it runs as printed, in the shell the user typed in."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Mapping


def cli_prefix(env: Mapping[str, str] | None = None) -> str:
    """`uv run pm_arb` under `uv run` (its venv is not on the user's PATH afterwards), `pm_arb`
    when an installed script is on PATH, else this interpreter's `-m pm_arb`."""
    env = os.environ if env is None else env
    if env.get("UV"):
        return "uv run pm_arb"
    if shutil.which("pm_arb", path=env.get("PATH")):
        return "pm_arb"
    return f"{shlex.quote(sys.executable)} -m pm_arb"


def next_command(*args: str, env: Mapping[str, str] | None = None) -> str:
    return " ".join([cli_prefix(env), *(shlex.quote(a) for a in args)])
