"""Durations as fixed histogram buckets, so percentiles survive being summed across processes.

Every worker process counts its jobs' durations into the same buckets, and
Redis adds the counts up (``HINCRBY``): the sum of histograms is the
histogram of the union, which is not true of averages or of percentiles.

The buckets grow geometrically by 2^(1/4) (about 19%) from 1 ms to about
12 days, so a percentile read back is within 9% of the true value (the
geometric middle of its bucket is reported, interpolated by rank) whatever
the scale, with at most 120 buckets.  Only non-empty buckets are stored.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping

__all__ = ["MAX_BUCKET", "bucket_bounds", "bucket_of", "merge", "percentile"]

#: Buckets per doubling of the duration.
_PER_DOUBLING = 4
#: The last bucket holds everything longer than 2^(MAX_BUCKET / 4) ms (about 12 days).
MAX_BUCKET = 120


#: The upper bound of each bucket but the last: ``bisect`` finds a duration's bucket in C.
_UPPER = tuple(2 ** (i / _PER_DOUBLING) for i in range(MAX_BUCKET))


def bucket_of(ms: float) -> int:
    """The bucket of a duration in ms: 0 holds up to 1 ms, bucket ``i`` up to 2^(i/4) ms."""
    return bisect.bisect_left(_UPPER, ms)


def bucket_bounds(index: int) -> tuple[float, float]:
    """The durations in ms that bucket ``index`` holds: ``(lower, upper]``."""
    if index <= 0:
        return 0.0, 1.0
    return 2 ** ((index - 1) / _PER_DOUBLING), 2 ** (index / _PER_DOUBLING)


def percentile(counts: Mapping[int, int], pct: float) -> int | None:
    """The ``pct`` percentile (0-100) of a histogram ``{bucket: count}``, in whole ms; ``None`` if empty.

    The rank is found by nearest rank, then placed inside its bucket by
    geometric interpolation (durations spread evenly on a log scale).
    """
    items = sorted((index, count) for index, count in counts.items() if count > 0)
    total = sum(count for _, count in items)
    if total == 0:
        return None
    rank = max(1, math.ceil(pct / 100 * total))
    seen = 0
    for index, count in items:
        if seen + count >= rank:
            lower, upper = bucket_bounds(index)
            if index == 0:
                return round(upper * (rank - seen) / count)
            fraction = (rank - seen - 0.5) / count
            value: float = lower * (upper / lower) ** fraction
            return round(value)
        seen += count
    return None  # pragma: no cover - the loop always reaches the rank


def merge(histograms: Iterable[Mapping[int, int]]) -> dict[int, int]:
    """The sum of several histograms."""
    merged: dict[int, int] = {}
    for histogram in histograms:
        for index, count in histogram.items():
            merged[index] = merged.get(index, 0) + count
    return merged
