"""Benchmark: how well each stored feature of a finished run ranks the flipped labels, globally and within the
examples of each given label (a probe for class-conditional noise, where some classes are simply harder).

    python tools/bench/feature_auroc.py RUN_FOLDER [RUN_FOLDER ...]

For every feature in the run's feature store, oriented so that high = suspect (``aum`` negated), one JSON line
per run with the AUROC against the recorded flipped ids of: the raw value (``global``), the value z-scored within
its given label (``z_in_class``), its rank within its given label (``rank_in_class``), and the value minus its
label's median (``centred_in_class``). Reads the run folder only; trains nothing.

    python tools/bench/feature_auroc.py RUN_FOLDER --embeddings pretrain/theta0.pt final/best.pt

adds, for each checkpoint of the run named (relative to the run folder), features of the *embedding* the
classifier head reads (captured by a forward hook on ``model.get_classifier()``, or ``model.head``): the share of
the k nearest neighbours (cosine, k = 10 and 50) whose given label differs (``knn10``, ``knn50``: Deep k-NN /
SimiFeat-style label disagreement), the cosine margin of the nearest class prototype over the given label's
(``proto``: prototype = mean normalised embedding of a given label), that checkpoint's own ``loss``, and the
mean rank of ``proto`` and the stored ``wrong_frac`` (``proto+wrong_frac``). A probe for class-conditional
noise, where a flipped label is a plausible neighbour class: does where an example sits among the others find
it better than how the model resisted its label?
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


def embeddings(pipe, weights: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embedding [N, dim], logits [N, C], given labels [N]) of every training example under ``weights``: the
    input of the classifier head, captured by a forward hook on ``model.get_classifier()`` (or ``model.head``)."""
    import torch

    model = pipe.new_model(weights).eval()
    head = model.get_classifier() if hasattr(model, "get_classifier") else model.head
    seen = []
    hook = head.register_forward_hook(lambda mod, inp, out: seen.append((inp[0].detach(), out.detach())))
    train, idx = pipe.data.train, pipe.data.index["train"]
    n = len(train)
    emb, logits, labels = None, None, np.empty(n, dtype=np.int64)
    with torch.no_grad():
        for s in range(len(idx.counts)):
            for x, y, ids in train.feature_batches(s, idx.offsets[s], idx.counts[s], 512):
                seen.clear()
                model(train.to_input(x, "cpu"))
                e, z = seen[0]
                if emb is None:
                    emb, logits = np.empty((n, e.shape[1]), np.float32), np.empty((n, z.shape[1]), np.float32)
                rows = ids.numpy()
                emb[rows], logits[rows], labels[rows] = e.float().numpy(), z.float().numpy(), y.numpy()
    hook.remove()
    return emb, logits, labels


def neighbour_features(emb: np.ndarray, logits: np.ndarray, labels: np.ndarray, k_values=(10, 50),
                       block: int = 1024) -> dict[str, np.ndarray]:
    """``knnK``, ``proto`` and ``loss`` of each example (see the module docstring), float64 [N] each, high =
    suspect. Exact kNN in blocks of ``block`` queries against all N embeddings (memory O(N · dim))."""
    import torch

    e = torch.nn.functional.normalize(torch.from_numpy(emb).float(), dim=1)
    y = torch.from_numpy(labels).long()
    n = len(y)
    k_max = min(max(k_values), n - 1)
    near = torch.empty((n, k_max), dtype=torch.int64)
    for i in range(0, n, block):
        sim = e[i:i + block] @ e.T
        sim[torch.arange(len(sim)), torch.arange(i, i + len(sim))] = -float("inf")  # not its own neighbour
        near[i:i + block] = sim.topk(k_max, dim=1).indices
    out = {f"knn{k}": (y[near[:, :min(k, k_max)]] != y[:, None]).double().mean(1).numpy() for k in k_values}
    classes = logits.shape[1]
    proto = torch.stack([e[y == c].mean(0) if (y == c).any() else torch.zeros(e.shape[1]) for c in range(classes)])
    cos = e @ torch.nn.functional.normalize(proto, dim=1).T
    out["proto"] = (cos.max(1).values - cos.gather(1, y[:, None]).squeeze(1)).double().numpy()
    out["loss"] = -torch.log_softmax(torch.from_numpy(logits).double(), 1).gather(1, y[:, None]).squeeze(1).numpy()
    return out


def mean_rank(*columns: np.ndarray) -> np.ndarray:
    """The mean of the columns' ranks (ties by position): a parameter-free combination of two rankings."""
    return np.mean([np.argsort(np.argsort(c, kind="stable"), kind="stable") for c in columns], axis=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="finished run folders (with noise.json and features/)")
    ap.add_argument("--embeddings", nargs="*", default=[], metavar="CKPT",
                    help="checkpoints of the run (relative to it, e.g. pretrain/theta0.pt final/best.pt) whose "
                         "embeddings to probe")
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
        stored = pipe.train_features(store)
        for ckpt in args.embeddings:
            if not (Path(run) / ckpt).is_file():
                print(f"{Path(run) / ckpt}: no such checkpoint; name one inside the run folder, e.g. "
                      "pretrain/theta0.pt", file=sys.stderr)
                raise SystemExit(2)
            cols = neighbour_features(*embeddings(pipe, pipe.folder.load_weights(ckpt)))
            if "wrong_frac" in stored:
                cols["proto+wrong_frac"] = mean_rank(cols["proto"], stored["wrong_frac"].astype(np.float64))
            result[ckpt] = {name: round(auroc(v, noisy), 3) for name, v in cols.items()}
        print(json.dumps({"bench": "feature_auroc", "run": run, "noise_kind": pipe.cfg.data.noise_kind,
                          "noise_rate": pipe.cfg.data.noise_rate, "auroc": result}), flush=True)


if __name__ == "__main__":
    main()
