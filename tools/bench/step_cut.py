"""Benchmark: where the learned samplers cut, against the cut that finds the flipped labels best.

    python tools/bench/step_cut.py RUN_FOLDER [RUN_FOLDER ...]

A step φ gives every example on each side of its cut the same p, so its noise-detection AUROC (1 − p against the
flipped ids, ties counted half) is its balanced accuracy ½(1 + TPR − FPR) (docs/design.md §1.5). For every round
of a finished run with label noise (the run folder itself, then ``round<r>/``), one JSON line with:

- ``chosen``: the round's sampler: the share of examples it keeps (drawn at ≥ 0.1× the uniform rate), the share
  of the flipped and of the clean examples it starves, its AUROC;
- ``best_cut``: the cut of the sampler's aggregated score s (oriented as φ) with the best balanced accuracy, and
  the share of the examples it keeps;
- ``trials``: each search trial's kept share, val score and AUROC, sorted by kept share (their samplers rebuilt
  from the θ in ``search/history.jsonl`` on the round's features).

So it shows whether a chosen step's AUROC is held back by how well s ranks the flips or by where val put the cut.
Reads the run folders only; trains nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def step_stats(p: np.ndarray, flagged: np.ndarray) -> dict:
    """What sampling ∝ ``p`` keeps and starves of the ``flagged`` (flipped) and the other examples."""
    from swift_scale.report.metrics import noise_auroc
    from swift_scale.sampler.swift import kept_mask

    p = np.asarray(p, np.float64)
    kept = kept_mask(p / p.sum())
    return {"kept": round(float(kept.mean()), 3), "flipped_starved": round(float((~kept[flagged]).mean()), 3),
            "clean_starved": round(float((~kept[~flagged]).mean()), 3),
            "auroc": round(noise_auroc(p, np.flatnonzero(flagged)), 4)}


def oriented(score: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The aggregated score s oriented as φ is: low s ↔ low p (float64 [N])."""
    sign = -1.0 if np.corrcoef(score, p)[0, 1] < 0 else 1.0
    return sign * np.asarray(score, np.float64)


def best_cut(s: np.ndarray, flagged: np.ndarray, shares: np.ndarray | None = None) -> dict:
    """Over the cuts at the quantiles ``shares`` of ``s`` (oriented: low s ↔ low p), the one whose examples at
    or below it, called flipped, find ``flagged`` with the best balanced accuracy ½(1 + TPR − FPR); with the share
    of the examples it keeps (those above it). Unrounded."""
    s = np.asarray(s, np.float64)
    shares = np.linspace(0.05, 0.95, 181) if shares is None else np.asarray(shares, np.float64)
    best = (-1.0, 0.0)
    for t in np.quantile(s, shares):
        dropped = s <= t
        best = max(best, (0.5 * (1 + dropped[flagged].mean() - dropped[~flagged].mean()), float(1 - dropped.mean())))
    return {"balanced_accuracy": float(best[0]), "kept": best[1]}


def round_dirs(run: Path) -> list[tuple[int, Path]]:
    """(round, folder) of every round of ``run`` that has a sampler."""
    out, r = [], 1
    while (d := run if r == 1 else run / f"round{r}").joinpath("sampler.json").exists():
        out.append((r, d))
        r += 1
    return out


def round_line(run: Path, r: int, d: Path, flipped: list[int]) -> dict:
    from swift_scale.features.store import FeatureStore
    from swift_scale.sampler.swift import SwiftSampler

    store = FeatureStore(d / "features")
    feats = {n: np.ascontiguousarray(store.column(n)) for n in store.feature_names}
    chosen = SwiftSampler.load(d / "sampler.json")
    p = chosen.probs(feats)
    flagged = np.zeros(len(p), bool)
    flagged[flipped] = True
    cut = best_cut(oriented(chosen.score(feats), p), flagged)
    trials = []
    for line in (d / "search" / "history.jsonl").read_text().splitlines():
        t = json.loads(line)
        if t.get("status") != "ok":
            continue
        sampler = SwiftSampler.from_theta(t["params"], chosen.feature_names, chosen.quantiles, chosen.transform,
                                          chosen.grad_feature).fit(feats)
        st = step_stats(sampler.probs(feats), flagged)
        trials.append({"trial": t["trial"], "kept": st["kept"], "val": t["score"], "auroc": st["auroc"]})
    trials.sort(key=lambda t: (t["kept"], t["trial"]))
    return {"bench": "step_cut", "run": str(run), "round": r, "chosen": step_stats(p, flagged),
            "chosen_trial": chosen.info.get("trial"), "trials": trials,
            "best_cut": {"balanced_accuracy": round(cut["balanced_accuracy"], 4), "kept": round(cut["kept"], 3)}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    for run in args.runs:
        noise_file = run / "noise.json"
        if not noise_file.exists():
            sys.exit(f"{run}: no noise.json; give the folder of a finished run with label noise")
        flipped = json.loads(noise_file.read_text())["flipped_ids"]
        rounds = round_dirs(run)
        if not rounds:
            sys.exit(f"{run}: no sampler.json; give the folder of a finished run")
        for r, d in rounds:
            print(json.dumps(round_line(run, r, d, flipped)), flush=True)


if __name__ == "__main__":
    main()
