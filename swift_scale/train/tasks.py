"""What is trained and measured: image classification or language modelling (one object per run).

A task turns a batch (x, y) into a training loss, per-example features for the store, and evaluation sums;
the training loop, the features pass and the search do not know which task they run.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from swift_scale.features.functions import (
    CLASSIFICATION_FEATURES,
    LM_FEATURES,
    classification_features,
    lm_features,
)

__all__ = ["ClassificationTask", "LMTask", "CLASSIFICATION"]


class ClassificationTask:
    """x: images, y: class ids. Metric: accuracy (higher is better); the search scores val accuracy."""

    name = "classification"
    feature_names = CLASSIFICATION_FEATURES
    default_sampler_features = ("loss", "renormed_entropy")
    metric = "accuracy"

    def loss(self, model, x, y):
        return F.cross_entropy(model(x), y)

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


class LMTask:
    """x = y: token sequences [B, T]; next-token prediction. Metric: perplexity (lower is better); the search
    scores −log(val perplexity), i.e. minus the mean token loss."""

    name = "lm"
    feature_names = LM_FEATURES
    default_sampler_features = ("loss", "rarity")
    metric = "perplexity"

    def __init__(self, rarity: np.ndarray):
        self.rarity = torch.as_tensor(np.asarray(rarity, dtype=np.float32))

    @staticmethod
    def _logits(model, x):
        out = model(input_ids=x)
        return (out.logits if hasattr(out, "logits") else out)[:, :-1]

    def loss(self, model, x, y):
        logits = self._logits(model, x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[:, 1:].reshape(-1))

    def features(self, model, x, y):
        return lm_features(self._logits(model, x), y[:, 1:], self.rarity)

    def eval_sums(self, model, x, y) -> list:
        logits = self._logits(model, x)
        t = y[:, 1:]
        flat = logits.reshape(-1, logits.shape[-1]).float()
        return [(logits.argmax(-1) == t).sum(), F.cross_entropy(flat, t.reshape(-1), reduction="sum"), t.numel()]

    @staticmethod
    def finish(sums) -> dict:
        loss = (sums[1] / sums[2]).item()
        return {"accuracy": (sums[0] / sums[2]).item(), "loss": loss, "perplexity": math.exp(min(loss, 50.0))}

    @staticmethod
    def score(metrics: dict) -> float:
        return -metrics["loss"]


CLASSIFICATION = ClassificationTask()
