"""Shared by the benchmarks: mean ± std over seeds, as the tables report them."""

from __future__ import annotations

import statistics


def mean_std(values, digits: int = 3) -> dict | None:
    """{"mean", "std"} of the values that are not None (std 0 for one value); None when there are none."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"mean": round(statistics.fmean(vals), digits),
            "std": round(statistics.stdev(vals), digits) if len(vals) > 1 else 0.0}
