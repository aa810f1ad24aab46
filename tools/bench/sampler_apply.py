"""Benchmark: SwiftSampler.probs on N examples vs one np.interp over the same N.

Prints one JSON object per line. Goal (issue 2): >= 20M examples/s/core and ratio <= 8.
Usage: python tools/bench/sampler_apply.py [--n 10000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from swift_scale.sampler import SwiftSampler


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n = args.n
    feats = {
        "loss": rng.exponential(size=n).astype(np.float32),
        "renormed_entropy": rng.random(n, dtype=np.float32),
        "grad_proxy": rng.random(n, dtype=np.float32),
    }
    grid = np.linspace(0, 1, 1025)
    quantiles = {k: np.quantile(feats[k][:1_000_000].astype(np.float64), grid) for k in ("loss", "renormed_entropy")}
    sampler = SwiftSampler.from_theta(rng.random(10), ("loss", "renormed_entropy"), quantiles, "cgf").fit(feats)
    t_probs = best_time(lambda: sampler.probs(feats), args.repeats)
    t_fit = best_time(lambda: sampler.fit(feats), args.repeats)
    t_interp = best_time(lambda: np.interp(feats["loss"], quantiles["loss"], grid), args.repeats)
    print(json.dumps({
        "bench": "sampler_apply", "n": n, "threads": os.cpu_count(),
        "probs_seconds": round(t_probs, 4), "probs_examples_per_s": round(n / t_probs),
        "fit_cgf_seconds": round(t_fit, 4),
        "np_interp_seconds": round(t_interp, 4), "ratio_to_np_interp": round(t_probs / t_interp, 2),
        "goal_examples_per_s": 20_000_000, "goal_ratio": 8,
    }))


if __name__ == "__main__":
    main()
