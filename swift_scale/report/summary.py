"""``summary.json``: the run's headline numbers, built from the finished phases' records.

Contract (docs/design.md §4): at least ``task``, ``dataset``, ``model``, ``noise_rate``, ``baseline.metric``,
``baseline.value``, ``swift.value``, ``search.trials``, ``search.best_score``, ``seconds`` per phase,
``world_size``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from swift_scale.config import Config
from swift_scale.report.metrics import noise_auroc, noise_auroc_by_group

__all__ = ["RunFacts", "build_summary"]


@dataclass
class RunFacts:
    """What the summary needs besides the phase records."""

    task: str
    metric: str
    num_train: int
    world_size: int
    device: str
    mixed_precision: str
    num_errors: int
    seconds: dict = field(default_factory=dict)
    noisy_ids: np.ndarray | None = None
    probs: np.ndarray | None = None  # the learned sampler's probabilities over the training set
    chosen_trial: int | None = None  # the trial whose sampler was kept (search.select)
    final_val_score: float | None = None  # the search's score (task.score) of the final model on val
    doc_of: np.ndarray | None = None  # LM: the document of each training sequence
    kept: float | None = None  # the share of training examples the kept sampler draws at >= 0.1x uniform


def build_summary(cfg: Config, facts: RunFacts, pretrain: dict, final: dict, history: list[dict]) -> dict:
    """The summary dict of a run whose pretrain and final phases are done (``history`` may be empty: a
    transferred sampler)."""
    metric = facts.metric
    ok = [r for r in history if r.get("status") == "ok"]
    best = max(ok, key=lambda r: r["score"]) if ok else None
    if best is not None:
        search = {"trials": len(history), "failed": len(history) - len(ok), "best_score": best["score"],
                  "best_trial": best["trial"], "strategy": cfg.search.strategy,
                  "uniform_score": history[0]["score"], "select": cfg.search.select}
        chosen = next((r for r in ok if r["trial"] == facts.chosen_trial), best)
        # the winner's curse: the chosen trial's search score against its final model's val score
        search.update(chosen_trial=chosen["trial"], chosen_score=chosen["score"],
                      final_val_score=facts.final_val_score,
                      optimism=None if facts.final_val_score is None else chosen["score"] - facts.final_val_score)
    else:
        search = {"trials": 0, "best_score": None, "sampler": "transferred"}
    if facts.kept is not None:
        search["chosen_kept"] = round(facts.kept, 4)
    use = "best" if cfg.train.final_checkpoint == "best_val" and "best" in final else None
    summary = {
        "task": facts.task,
        "dataset": cfg.data.train,
        "model": cfg.model.name,
        "noise_rate": cfg.data.noise_rate,
        "num_train": facts.num_train,
        "baseline": {"metric": f"test_{metric}", "value": pretrain["test"][metric],
                     f"val_{metric}": pretrain["val"][metric], "best_val": _best(pretrain, metric)},
        "swift": {"metric": f"test_{metric}", "value": (final[use] if use else final)["test"][metric],
                  f"val_{metric}": (final[use] if use else final)["val"][metric],
                  "checkpoint": "best_val" if use else "last", "final_mode": cfg.train.final_mode,
                  "last": {f"test_{metric}": final["test"][metric], f"val_{metric}": final["val"][metric]},
                  "best_val": _best(final, metric)},
        "search": search,
        "seconds": facts.seconds,
        "world_size": facts.world_size,
        "data_errors": facts.num_errors,
        "device": facts.device,
        "mixed_precision": facts.mixed_precision,
        "seed": cfg.seed,
    }
    if facts.noisy_ids is not None and len(facts.noisy_ids) and facts.probs is not None:
        summary["noise_detection_auroc"] = noise_auroc(facts.probs, facts.noisy_ids)
        if cfg.data.task == "lm" and cfg.data.noise_unit == "document" and facts.doc_of is not None:
            summary["noise_detection_auroc_by_document"] = noise_auroc_by_group(facts.probs, facts.noisy_ids,
                                                                                facts.doc_of)
    return summary


def _best(metrics: dict, metric: str) -> dict | None:
    """The best-val checkpoint of a training: its epoch and its val and test ``metric`` (early stopping)."""
    best = metrics.get("best")
    if best is None:
        return None
    return {"epoch": best["epoch"], f"val_{metric}": best["val"][metric], f"test_{metric}": best["test"][metric]}
