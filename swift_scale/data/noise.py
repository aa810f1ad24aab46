"""Reproducible label noise, decided by global id and applied in one place for every mode.

A :class:`NoisePlan` says which ids flip and by how much, without looking at the labels: the same plan labels
an in-memory split (indexed mode) and every sample a streaming pass reads, on every rank and after any
restart. Two kinds:

- ``symmetric``: each flipped label moves to a uniformly chosen *different* class (shift 1..C−1);
- ``pair``: class-conditional pair flips c → c + 1 (mod C), the "pair" noise of co-teaching benchmarks.

Exactly round(rate·N) ids flip, chosen uniformly by a hash of (seed, id).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from swift_scale.rng import stream_id, uniform01

__all__ = ["NoisePlan", "NOISE_KINDS", "symmetric_label_noise", "noise_plan"]

NOISE_KINDS = ("symmetric", "pair")


@dataclass(frozen=True)
class NoisePlan:
    """Flipped ids (int64 [K], sorted) and each one's class shift (int64 [K] in 1..C−1); noisy = (clean + shift)
    mod C."""

    ids: np.ndarray
    shift: np.ndarray
    num_classes: int
    kind: str = "symmetric"
    rate: float = 0.0

    @classmethod
    def make(cls, num_examples: int, rate: float, num_classes: int, seed: int,
             kind: Literal["symmetric", "pair"] = "symmetric") -> NoisePlan:
        if not 0 <= rate < 1:
            raise ValueError(f"noise rate must be in [0, 1), got {rate}")
        if kind not in NOISE_KINDS:
            raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {kind!r}")
        k = int(round(rate * num_examples))
        if k == 0 or num_classes < 2:
            empty = np.zeros(0, dtype=np.int64)
            return cls(empty, empty.copy(), num_classes, kind, rate)
        ids = np.arange(num_examples)
        order = np.argsort(uniform01(seed, stream_id("noise-pick"), 0, ids), kind="stable")
        flipped = np.sort(order[:k])
        if kind == "pair":
            shift = np.ones(k, dtype=np.int64)
        else:
            shift = 1 + (uniform01(seed, stream_id("noise-class"), 0, flipped) * (num_classes - 1)).astype(np.int64)
        return cls(flipped, shift, num_classes, kind, rate)

    def apply(self, labels: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
        """Noisy copies of ``labels`` whose global ids are ``ids`` (default: row = id)."""
        noisy = np.asarray(labels, dtype=np.int64).copy()
        if not len(self.ids):
            return noisy
        ids = np.arange(len(noisy)) if ids is None else np.asarray(ids, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        hit = self.ids[pos] == ids
        noisy[hit] = (noisy[hit] + self.shift[pos[hit]]) % self.num_classes
        return noisy

    def record(self, clean: np.ndarray | None = None) -> dict:
        """What ``noise.json`` holds: kind, rate, the flipped ids, and their clean and noisy labels when known
        (the streaming mode knows only ids and shifts before reading the data)."""
        out = {"rate": self.rate, "kind": self.kind, "num_flipped": len(self.ids), "flipped_ids": self.ids.tolist()}
        if clean is None:
            return out | {"class_shift": self.shift.tolist()}
        c = np.asarray(clean, dtype=np.int64)[self.ids]
        return out | {"clean_labels": c.tolist(), "noisy_labels": ((c + self.shift) % self.num_classes).tolist()}


def noise_plan(num_examples: int, rate: float, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(flipped ids, class shift) of symmetric noise; see :class:`NoisePlan`."""
    plan = NoisePlan.make(num_examples, rate, num_classes, seed)
    return plan.ids, plan.shift


def symmetric_label_noise(labels: np.ndarray, rate: float, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flip exactly round(rate·N) labels, each to a uniformly chosen *different* class.

    Returns (noisy labels int64 [N], flipped ids int64 [K], sorted); pure in (seed, id).
    """
    plan = NoisePlan.make(len(labels), rate, num_classes, seed)
    return plan.apply(labels), plan.ids
