"""Click parameter types and bounds for the options that are not Config settings.

click.FloatRange lets "nan" and "inf" through (NaN compares false with every bound), so a gap
threshold of nan made a gate that could never fail: every float option is a FiniteFloat.
"""

from __future__ import annotations

import math

import click

MAX_SIM_MARKETS = 20_000
MAX_RATE = 1_000_000.0  # frames (messages) per second a simulator is asked to send
MAX_DURATION_SECONDS = 366 * 86_400.0
MAX_GAP_THRESHOLD_SECONDS = 7 * 86_400.0
MAX_REPEAT = 10_000
MAX_BENCH_FRAMES = 100_000_000
MAX_ROUNDS = 1_000
MAX_POOL = 1_000_000
MAX_LIST = 1_000_000


class FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses nan and +-inf, with click's usual one-line usage error."""

    name = "finite float"

    def convert(self, value, param, ctx):  # type: ignore[override]
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv
