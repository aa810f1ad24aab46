"""Benchmark (issue 4b): the features pass vs a bare ``torch.no_grad`` forward loop over the same data/model.

    python tools/bench/feature_pass.py [--n 20000] [--shards 8] [--width 32] [--batch 512]

Both loops see the same in-memory uint8 split and the same batches; the features pass also computes the three
features, writes them into the memory-mapped store by global id, marks shards done and computes the quantile
tables. Prints one JSON object: throughput of each and the ratio (goal ≥ 0.85).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--size", type=int, default=28)
    args = ap.parse_args()

    from accelerate import Accelerator

    from swift_scale.data.splits import Split
    from swift_scale.features.extract import extract_features
    from swift_scale.train.models import create_model
    from swift_scale.train.tasks import CLASSIFICATION

    acc = Accelerator(cpu=not torch.cuda.is_available())
    rng = np.random.default_rng(0)
    data = Split(torch.from_numpy(rng.integers(0, 256, (args.n, 1, args.size, args.size), dtype=np.uint8)),
                 torch.from_numpy(rng.integers(0, 10, args.n)))
    model = acc.prepare(create_model("swift_cnn", 10, 1, width=args.width).eval())
    counts = [args.n // args.shards] * args.shards
    counts[-1] += args.n - sum(counts)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()

    @torch.no_grad()
    def bare():
        for s, c in zip(offsets, counts):
            ids = np.arange(s, s + c)
            for b in range(0, c, args.batch):
                x, _ = data.batch(ids[b:b + args.batch], acc.device)
                with acc.autocast():
                    model(x)
        if acc.device.type == "cuda":
            torch.cuda.synchronize()

    def features():
        with tempfile.TemporaryDirectory() as d:
            extract_features(acc, model, data, Path(d) / "store", offsets, counts, CLASSIFICATION,
                             batch_size=args.batch, progress=False)

    bare()  # warm-up
    times = {"bare": [], "features": []}
    for _ in range(3):  # interleaved, best of 3
        for name, fn in (("bare", bare), ("features", features)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    tb, tf = min(times["bare"]), min(times["features"])
    print(json.dumps({"bench": "feature_pass", "n": args.n, "device": str(acc.device), "threads": torch.get_num_threads(),
                      "bare_examples_per_s": round(args.n / tb), "features_examples_per_s": round(args.n / tf),
                      "ratio": round(tb / tf, 3), "goal_ratio": 0.85}))


if __name__ == "__main__":
    main()
