"""What is trained and measured: image classification or language modelling (one :class:`Task` per run).

A task turns a batch (x, y) into a training loss with per-example statistics (loss and margin, recorded as
training dynamics), per-example features for the store, and evaluation sums; the training loop, the features
pass and the search do not know which task they run.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from swift_scale.features.functions import (
    CLASSIFICATION_FEATURES,
    LM_FEATURES,
    cache_chunks,
    classification_features,
    lm_features,
)

__all__ = ["Task", "ClassificationTask", "LMTask", "CLASSIFICATION", "task_for", "sampler_features"]


class Task(Protocol):
    """The seam between the generic loop and a kind of model."""

    name: str
    feature_names: tuple[str, ...]
    default_sampler_features: tuple[str, ...]
    metric: str
    higher_is_better: bool

    def loss(self, model, x: torch.Tensor, y: torch.Tensor,
             stats: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean training loss, with ``stats`` the per-example [b, 2] float32 (loss, margin), detached)."""
        ...

    def features(self, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example features [b, len(feature_names)] float32 in the order of :attr:`feature_names`."""
        ...

    def eval_sums(self, model, x: torch.Tensor, y: torch.Tensor) -> list:
        """[correct, summed loss, count] of a batch (summed over ranks by the caller)."""
        ...

    def finish(self, sums: torch.Tensor) -> dict:
        """Metrics from the summed :meth:`eval_sums`."""
        ...

    def score(self, metrics: dict) -> float:
        """The search's score of a model's metrics (higher is better)."""
        ...


@torch.no_grad()
def _stats(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per row of logits [n, C]: (loss −log p_y, margin = target logit − largest other logit, the
    area-under-the-margin statistic), float32 [n, 2]. Computed apart from the training loss, which stays
    exactly the mean cross-entropy it always was."""
    z = logits.detach().float()
    idx = y.view(-1, 1)
    loss = -torch.log_softmax(z, 1).gather(1, idx).squeeze(1)
    other = z.scatter(1, idx, float("-inf")).amax(1)
    return torch.stack([loss, z.gather(1, idx).squeeze(1) - other], 1)


class ClassificationTask:
    """x: images, y: class ids. Metric: accuracy (higher is better); the search scores val accuracy."""

    name = "classification"
    feature_names = CLASSIFICATION_FEATURES
    # dyn_loss (the mean training loss over pretraining, recorded as batches go by) finds flipped labels more
    # reliably than θ0's loss, which depends on the epoch θ0 comes from (docs/design.md §6)
    default_sampler_features: tuple[str, ...] = ("dyn_loss", "renormed_entropy")
    metric = "accuracy"
    higher_is_better = True

    def loss(self, model, x, y, stats=False):
        logits = model(x)
        return F.cross_entropy(logits, y), _stats(logits, y) if stats else None

    def features(self, model, x, y):
        return classification_features(model(x), y)

    def eval_sums(self, model, x, y) -> list:
        logits = model(x)
        return [(logits.argmax(1) == y).sum(), F.cross_entropy(logits.float(), y, reduction="sum"), len(y)]

    @staticmethod
    def finish(sums) -> dict:
        return {"accuracy": (sums[0] / sums[2]).item(), "loss": (sums[1] / sums[2]).item()}

    @staticmethod
    def score(metrics: dict) -> float:
        return metrics["accuracy"]


LOGIT_BUDGET = 1 << 24  # logits (B·T·vocab elements) per forward in LM evaluation and features: 64 MB in fp32


class LMTask:
    """x = y: token sequences [B, T]; next-token prediction. Metric: perplexity (lower is better); the search
    scores −log(val perplexity), i.e. minus the mean token loss. Per-example statistics are per sequence: the
    mean token loss and the mean token margin."""

    name = "lm"
    feature_names = LM_FEATURES
    default_sampler_features: tuple[str, ...] = ("loss", "rarity")
    metric = "perplexity"
    higher_is_better = False

    def __init__(self, rarity: np.ndarray):
        self.rarity = torch.as_tensor(np.asarray(rarity, dtype=np.float32))

    @staticmethod
    def _logits(model, x):
        out = model(input_ids=x)
        return (out.logits if hasattr(out, "logits") else out)[:, :-1]

    def loss(self, model, x, y, stats=False):
        logits = self._logits(model, x)
        flat, t = logits.reshape(-1, logits.shape[-1]), y[:, 1:].reshape(-1)
        return F.cross_entropy(flat, t), _stats(flat, t).view(len(y), -1, 2).mean(1) if stats else None

    def _sub_batch(self, x) -> int:
        """Sequences per forward so the logits stay under LOGIT_BUDGET elements: evaluation and the features pass
        run many sequences at a time, and B × T × vocab floats (×4 for the passes over them) would be gigabytes
        for a GPT-2 vocabulary."""
        return max(1, LOGIT_BUDGET // (x.shape[1] * len(self.rarity)))

    def features(self, model, x, y):
        n = self._sub_batch(x)
        return torch.cat([lm_features(self._logits(model, x[i:i + n]), y[i:i + n, 1:], self.rarity)
                          for i in range(0, len(x), n)])

    def eval_sums(self, model, x, y) -> list:
        sums: list = [0, 0.0, 0]
        n = self._sub_batch(x)
        for i in range(0, len(x), n):
            logits = self._logits(model, x[i:i + n])
            t = y[i:i + n, 1:]
            for rows in cache_chunks(logits):  # cache-sized on a CPU (2.4x faster there), whole on a GPU
                z, target = logits[rows], t[rows]
                sums[0] += (z.argmax(-1) == target).sum()
                sums[1] += F.cross_entropy(z.reshape(-1, z.shape[-1]).float(), target.reshape(-1), reduction="sum")
            sums[2] += t.numel()
        return sums

    @staticmethod
    def finish(sums) -> dict:
        loss = (sums[1] / sums[2]).item()
        return {"accuracy": (sums[0] / sums[2]).item(), "loss": loss, "perplexity": math.exp(min(loss, 50.0))}

    @staticmethod
    def score(metrics: dict) -> float:
        return -metrics["loss"]


CLASSIFICATION = ClassificationTask()


def task_for(kind: str, rarity: np.ndarray | None = None) -> Task:
    """The task of ``data.task`` (``rarity``: the LM's token rarity table)."""
    if kind == "lm":
        if rarity is None:
            raise ValueError("the language-modelling task needs the training split's token rarity table")
        return LMTask(rarity)
    return CLASSIFICATION


def sampler_features(cfg) -> list[str]:
    """``sampler.features``; the classification default pair becomes the LM default pair for LM runs, and θ0's
    ``loss`` stands in for ``dyn_loss`` where there are no training dynamics: ``features.dynamics=false``, or
    ``data.online`` (θ0 scores each candidate as it is read)."""
    names = list(cfg.sampler.features)
    if tuple(names) == ClassificationTask.default_sampler_features:
        if cfg.data.task == "lm":
            return list(LMTask.default_sampler_features)
        if not cfg.features.dynamics or cfg.data.online:
            return ["loss" if n == "dyn_loss" else n for n in names]
    return names
