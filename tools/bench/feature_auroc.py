"""Benchmark: how well each stored feature of a finished run ranks the flipped labels, globally and within the
examples of each given label (a probe for class-conditional noise, where some classes are simply harder).

    python tools/bench/feature_auroc.py RUN_FOLDER [RUN_FOLDER ...]

For every feature in the run's feature store, oriented so that high = suspect (``aum`` negated), one JSON line
per run with the AUROC against the recorded flipped ids of: the raw value (``global``), the value z-scored within
its given label (``z_in_class``), its rank within its given label (``rank_in_class``), and the value minus its
label's median (``centred_in_class``). Reads the run folder only; trains nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np


def within_class(values: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """The three within-label normalisations of ``values`` (float64 [N] each)."""
    z, rank, centred = (np.empty(len(values)) for _ in range(3))
    for c in np.unique(labels):
        m = labels == c
        v = values[m]
        z[m] = (v - v.mean()) / (v.std() + 1e-12)
        r = np.empty(len(v))
        r[np.argsort(v, kind="stable")] = np.arange(len(v))
        rank[m] = r / max(len(v) - 1, 1)
        centred[m] = v - np.median(v)
    return {"z_in_class": z, "rank_in_class": rank, "centred_in_class": centred}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="finished run folders (with noise.json and features/)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    from swift_scale.config import load_config
    from swift_scale.features.dynamics import suspect_sign
    from swift_scale.features.store import FeatureStore
    from swift_scale.pipeline import Pipeline
    from swift_scale.report.metrics import auroc

    for run in args.runs:
        store_dir = Path(run) / "features"
        store = FeatureStore(store_dir) if (store_dir / "meta.json").exists() else None
        if store is None or not store.complete:
            print(f"{store_dir}: no complete feature store; finish the run's features phase first", file=sys.stderr)
            raise SystemExit(2)
        # the folder named here, wherever the saved config says it was made
        pipe = Pipeline(load_config(Path(run) / "config.yaml", [f"run.out_dir={run}"]))
        labels = pipe.data.train.labels.numpy()
        noisy = np.zeros(len(labels), dtype=bool)
        noisy[pipe.data.noisy_ids] = True
        result = {}
        for name, col in pipe.train_features(store).items():
            v = suspect_sign(name) * col.astype(np.float64)
            result[name] = {"global": round(auroc(v, noisy), 3)} | {
                k: round(auroc(w, noisy), 3) for k, w in within_class(v, labels).items()}
        print(json.dumps({"bench": "feature_auroc", "run": run, "noise_kind": pipe.cfg.data.noise_kind,
                          "noise_rate": pipe.cfg.data.noise_rate, "auroc": result}), flush=True)


if __name__ == "__main__":
    main()
