"""Evaluation metrics of a learned sampler."""

from __future__ import annotations

import numpy as np

__all__ = ["noise_auroc", "noise_auroc_by_group", "auroc"]


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positives`` (ties get half credit)."""
    scores = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def noise_auroc(probs: np.ndarray, flipped_ids: np.ndarray) -> float:
    """How well 1 − p separates the flipped (noisy) examples from the clean ones (1.0 = perfectly)."""
    noisy = np.zeros(len(probs), dtype=bool)
    noisy[np.asarray(flipped_ids, dtype=np.int64)] = True
    return auroc(-np.asarray(probs), noisy)


def noise_auroc_by_group(probs: np.ndarray, flipped_ids: np.ndarray, groups: np.ndarray) -> float:
    """:func:`noise_auroc` per group (e.g. the documents of an LM corpus): a group's probability is the mean
    over its examples, and a group is noisy when its examples are (any flipped example marks it)."""
    _, inv = np.unique(np.asarray(groups), return_inverse=True)
    sizes = np.bincount(inv)
    mean_p = np.bincount(inv, weights=np.asarray(probs, dtype=np.float64)) / sizes
    noisy_groups = np.unique(inv[np.asarray(flipped_ids, dtype=np.int64)])
    return noise_auroc(mean_p, noisy_groups)
