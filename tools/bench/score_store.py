"""Benchmark (issue 4c): scoring a synthetic 10^8-example feature store — time and peak RSS.

    python tools/bench/score_store.py [--n 100000000] [--dir /tmp/swift_scale_store_1e8] [--rows 1048576]

Writes the synthetic store once (features.npy [N, 3] float32 written with plain file writes, uniform
features, exact quantile tables known in closed form), then scores it with ``SwiftSampler.score_store``
(cgf fit + weights + normalisation, chunked) in a fresh child process and prints one JSON object with the
child's peak RSS (goal ≤ 1 GB) and throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
import numpy as np
from swift_scale.features.store import FeatureStore
from swift_scale.sampler.swift import SwiftSampler
store = FeatureStore(sys.argv[1])
theta = np.array([0.3, 0.5, 0.5, 1.0, 0.8, 0.4, 0.1, 0.0, 0.1, 0.4])  # down-weights high loss
sampler = SwiftSampler.from_theta(theta, ["loss", "renormed_entropy"],
                                  {n: store.quantiles(n) for n in store.feature_names}, "cgf")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
sampler.score_store(store, sys.argv[2], rows=int(sys.argv[3]))
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before the check below maps the output
p = np.load(sys.argv[2], mmap_mode="r")
total = float(sum(float(p[i:i + (1 << 24)].sum(dtype=np.float64)) for i in range(0, len(p), 1 << 24)))
print(json.dumps({"seconds": dt, "peak_rss_bytes": peak,
                  "prob_sum": total, "rss_after_import_bytes": base}))
"""


def write_store(root: Path, n: int, rows: int) -> None:
    from swift_scale.features.store import FORMAT_VERSION

    if (root / "meta.json").exists() and json.loads((root / "meta.json").read_text())["num_examples"] == n:
        return
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(root / "features.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, 3)})
        for start in range(0, n, rows):
            f.write(rng.random((min(rows, n - start), 3), dtype=np.float32).tobytes())
    with open(root / "mask.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (n,)})
        for start in range(0, n, rows):
            f.write(np.ones(min(rows, n - start), dtype=np.uint8).tobytes())
    names = ["loss", "renormed_entropy", "grad_proxy"]
    meta = {"version": FORMAT_VERSION, "num_examples": n, "feature_names": names, "complete": True,
            "quantiles": {k: np.linspace(0, 1, 1025).tolist() for k in names}, "info": {"synthetic": True}}
    (root / "meta.json").write_text(json.dumps(meta))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000_000)
    ap.add_argument("--dir", default="/tmp/swift_scale_store_1e8")
    ap.add_argument("--rows", type=int, default=1 << 20)
    ap.add_argument("--keep", action="store_true", help="keep the synthetic store (1.2 GB at 1e8) afterwards")
    args = ap.parse_args()
    root = Path(args.dir)
    t0 = time.perf_counter()
    write_store(root, args.n, args.rows)
    t_write = time.perf_counter() - t0
    out = subprocess.run([sys.executable, "-c", CHILD, str(root), str(root / "probs.npy"), str(args.rows)],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        sys.exit(out.stderr.strip().splitlines()[-1])
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps({"bench": "score_store", "n": args.n, "chunk_rows": args.rows, "write_store_seconds": round(t_write, 1),
                      "score_seconds": round(res["seconds"], 2),
                      "examples_per_second": round(args.n / res["seconds"]),
                      "peak_rss_mb": round(res["peak_rss_bytes"] / 2**20, 1), "goal_peak_rss_mb": 1024,
                      "rss_after_imports_mb": round(res["rss_after_import_bytes"] / 2**20, 1),
                      "prob_sum": round(res["prob_sum"], 6)}))
    if not args.keep:
        for name in ("features.npy", "mask.npy", "probs.npy", "meta.json"):
            (root / name).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
