"""A log-linear histogram of latencies in microseconds, mergeable across intervals and shards.

Values below 256 us are exact; above, each bucket keeps the top 8 significant bits, so a
bucket's lower bound is within 1/128 (0.79%) of any value in it. Percentiles over a whole run
are read from the merged histogram (never averaged from per-interval percentiles), and the
report states that bound.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Iterable, Mapping, Sequence

SIG_BITS = 8
RELATIVE_ERROR_BOUND = 1 / 2 ** (SIG_BITS - 1)


def bucket_of(us: int) -> int:
    """Bucket key: the value itself below 256, else (shift << 8) | top-8-bits mantissa."""
    if us < (1 << SIG_BITS):
        return max(us, 0)
    shift = us.bit_length() - SIG_BITS
    return (shift << SIG_BITS) | (us >> shift)


def bucket_floor(key: int) -> int:
    """Smallest value that falls in bucket `key`."""
    shift = key >> SIG_BITS
    if shift == 0:
        return key
    return (key & ((1 << SIG_BITS) - 1)) << shift


def add_batch(hist: dict[int, int], applied_ns: int, rx_stamps_ns: Sequence[int]) -> int:
    """Add the latencies `applied_ns - rx` (in whole us) of one batch; return the largest.

    `rx_stamps_ns` are non-decreasing (one reader thread stamps them from a monotonic clock),
    so latencies fall along the batch and each bucket is one contiguous run: its end is found by
    bisection. A batch costs one step per bucket it touches, not one per frame; a loaded
    pipeline's batch of 1,024 frames usually touches one to three. Every frame is counted
    exactly once whatever the order; only the bucket choice relies on it.
    """
    n = len(rx_stamps_ns)
    if n == 0:
        return 0
    i = 0
    while i < n:
        key = bucket_of((applied_ns - rx_stamps_ns[i]) // 1000)
        # a frame is in this bucket or an earlier one iff its latency >= the bucket's floor
        j = bisect_right(rx_stamps_ns, applied_ns - bucket_floor(key) * 1000, i)
        if j <= i:
            j = i + 1
        hist[key] = hist.get(key, 0) + (j - i)
        i = j
    return max(0, (applied_ns - min(rx_stamps_ns)) // 1000)


def merge(into: dict[int, int], other: Mapping[int | str, int]) -> dict[int, int]:
    for k, n in other.items():
        k = int(k)
        into[k] = into.get(k, 0) + n
    return into


def percentiles(hist: Mapping[int, int], qs: Iterable[float]) -> dict[float, float | None]:
    """Each q in [0, 1] -> value in ms (bucket lower bound), None when the histogram is empty."""
    total = sum(hist.values())
    out: dict[float, float | None] = {}
    if total == 0:
        return {q: None for q in qs}
    keys = sorted(hist)
    for q in qs:
        rank = max(1, int(-(-q * total // 1)))  # ceil(q * total), at least 1
        seen = 0
        for k in keys:
            seen += hist[k]
            if seen >= rank:
                out[q] = bucket_floor(k) / 1000.0
                break
    return out
