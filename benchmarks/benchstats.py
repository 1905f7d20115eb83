"""Small statistics shared by the benchmark scripts."""

import statistics


def percentile(values, fraction):
    """The value below which ``fraction`` of ``values`` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def spread(values):
    """(max - min) / median: how far apart repeated runs landed."""
    median = statistics.median(values)
    return (max(values) - min(values)) / median if median else 0.0
