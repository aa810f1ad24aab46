"""Benchmark (issue 6): training with a learned sampler vs uniform at the same budget (goal ≤ 1.03×).

    python tools/bench/train_step.py [--n 10000] [--epochs 2] [--batch 128] [--width 16]

The same model, data (in-memory uint8 28×28) and optimizer, one ``train_model`` call with ``probs=None``
(uniform permutation) and one with a Swift sampler's probabilities (systematic draw ∝ p each epoch),
interleaved, best of 3. Prints one JSON object with seconds per epoch and the ratio.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--width", type=int, default=16)
    args = ap.parse_args()

    from accelerate import Accelerator

    from swift_scale.data.splits import Split
    from swift_scale.sampler.swift import SwiftSampler
    from swift_scale.train.loop import TrainSpec, train_model
    from swift_scale.train.models import create_model

    rng = np.random.default_rng(0)
    data = Split(torch.from_numpy(rng.integers(0, 256, (args.n, 1, 28, 28), dtype=np.uint8)),
                 torch.from_numpy(rng.integers(0, 10, args.n)))
    feats = {k: rng.gamma(2.0, 1.0, args.n) for k in ("loss", "renormed_entropy", "grad_proxy")}
    q = {k: np.quantile(v, np.linspace(0, 1, 1025)) for k, v in feats.items()}
    theta = np.array([0.3, 0.5, 0.5, 1.0, 0.8, 0.4, 0.1, 0.0, 0.1, 0.4])
    probs = SwiftSampler.from_theta(theta, ["loss", "renormed_entropy"], q).fit(feats).probs(feats)
    acc = Accelerator(cpu=not torch.cuda.is_available())

    def once(p):
        torch.manual_seed(0)
        model = create_model("swift_cnn", 10, 1, width=args.width, stem_stride=2)
        t0 = time.perf_counter()
        train_model(acc, model, data, probs=p, spec=TrainSpec(args.epochs, args.batch, 2e-3), progress=False)
        return (time.perf_counter() - t0) / args.epochs

    once(None)  # warm-up
    t = {"uniform": [], "swift": []}
    for _ in range(3):
        t["uniform"].append(once(None))
        t["swift"].append(once(probs))
    u, s = min(t["uniform"]), min(t["swift"])
    print(json.dumps({"bench": "train_step", "n": args.n, "batch_size": args.batch, "device": str(acc.device),
                      "threads": torch.get_num_threads(), "uniform_seconds_per_epoch": round(u, 3),
                      "swift_seconds_per_epoch": round(s, 3), "ratio": round(s / u, 4), "goal_ratio": 1.03}))


if __name__ == "__main__":
    main()
