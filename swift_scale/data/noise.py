"""Reproducible symmetric label noise, recorded by global id."""

from __future__ import annotations

import numpy as np

from swift_scale.rng import stream_id, uniform01

__all__ = ["symmetric_label_noise", "noise_plan"]


def noise_plan(num_examples: int, rate: float, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Which ids flip and by how much, without the labels: (flipped ids int64 [K] sorted, class shift [K] in
    1..C−1). A flipped id's noisy label is (clean + shift) mod C. Used by the streaming mode per sample."""
    if not 0 <= rate < 1:
        raise ValueError(f"noise rate must be in [0, 1), got {rate}")
    k = int(round(rate * num_examples))
    if k == 0 or num_classes < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    ids = np.arange(num_examples)
    order = np.argsort(uniform01(seed, stream_id("noise-pick"), 0, ids), kind="stable")
    flipped = np.sort(order[:k])
    shift = 1 + (uniform01(seed, stream_id("noise-class"), 0, flipped) * (num_classes - 1)).astype(np.int64)
    return flipped, shift


def symmetric_label_noise(labels: np.ndarray, rate: float, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flip exactly round(rate·N) labels, each to a uniformly chosen *different* class.

    Which ids flip and their new class are pure functions of (seed, id): the same on every rank and rerun.
    Returns (noisy labels int64 [N], flipped ids int64 [K], sorted).
    """
    noisy = np.asarray(labels, dtype=np.int64).copy()
    flipped, shift = noise_plan(len(labels), rate, num_classes, seed)
    noisy[flipped] = (noisy[flipped] + shift) % num_classes
    return noisy, flipped
