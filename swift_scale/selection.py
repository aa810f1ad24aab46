"""Selecting examples by probability: pure functions of (probabilities, seed, epoch, global ids, rank, world size).

Core layer (beside :mod:`swift_scale.rng`): the data layer (streaming passes), the training loop and the sampler
stages all build on these; nothing here imports any other part of swift_scale but :mod:`swift_scale.rng`.

Determinism guarantee: for a given seed and epoch every function here returns the same selection on every
rank, in every DataLoader worker, and after a restart. Nothing draws from a global RNG.

- :func:`epoch_indices` — indexed mode (map-style data): an epoch of ids ∝ p by systematic sampling
  (low variance; exactly a random permutation when p is uniform; no 2^24 limit unlike ``torch.multinomial``).
- :func:`race_keys` / :func:`keep_threshold` / :func:`keep_mask` — streaming rejection: each example gets an
  exponential race key −log(u)/p with u a hash of (seed, epoch, id); keeping the k smallest keys is weighted
  sampling without replacement (Efraimidis–Spirakis). Because a key depends on the id alone, a kept set is
  identical however the ids are split over ranks, workers or chunks.
- :func:`keep_top_k` — keep exactly k of a window of m candidates (the online mode: 2B → B).
- :func:`fold_of` — the cross-fitting fold of each id (later rounds' features, docs/design.md §1.6).
"""

from __future__ import annotations

import numpy as np

from swift_scale.rng import generator, stream_id, uniform01

__all__ = [
    "epoch_indices",
    "rank_share",
    "race_keys",
    "keep_threshold",
    "keep_mask",
    "keep_set",
    "keep_top_k",
    "fold_of",
]

_EPOCH = stream_id("epoch")
_KEEP = stream_id("keep")
_FOLD = stream_id("fold")


def epoch_indices(p: np.ndarray | None, num_examples: int, seed: int, epoch: int,
                  num_samples: int | None = None) -> np.ndarray:
    """One epoch of global ids drawn ∝ ``p`` (int64 [num_samples], default N), in random order.

    Systematic sampling: with cumulative weights c (scaled to total ``num_samples``) and one offset u ∈ [0, 1),
    id i is drawn once for every point u + j inside [c_{i−1}, c_i). Each id appears ⌊n p_i⌋ or ⌈n p_i⌉ times.
    ``p=None`` (or a constant p) gives a random permutation. O(N) memory, any N.
    """
    n = num_examples if num_samples is None else int(num_samples)
    rng = generator(seed, _EPOCH, epoch)
    if p is None or (len(p) and np.all(p == p[0])):
        if n == num_examples:
            return rng.permutation(num_examples)
        p = np.full(num_examples, 1.0 / num_examples)
    p = np.asarray(p, dtype=np.float64)
    if len(p) != num_examples:
        raise ValueError(f"p has {len(p)} entries, expected {num_examples}")
    if np.any(p < 0) or not np.isfinite(p.sum()) or p.sum() <= 0:
        raise ValueError("p must be finite, non-negative, with a positive sum")
    cum = np.cumsum(p)
    cum *= n / cum[-1]
    points = rng.random() + np.arange(n, dtype=np.float64)
    ids = np.searchsorted(cum, points, side="right")
    np.minimum(ids, num_examples - 1, out=ids)
    return rng.permutation(ids)


def rank_share(ids: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s share of an epoch: ids[rank::world] after trimming to a multiple of world_size,
    so every rank gets the same number of examples (equal optimizer steps, no DDP hang)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside [0, {world_size})")
    usable = (len(ids) // world_size) * world_size
    return ids[rank:usable:world_size]


def race_keys(ids: np.ndarray, p: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """Exponential race keys −log(u)/p (float64, shape of ``ids``); smaller keys are kept. p = 0 → +inf."""
    u = uniform01(seed, _KEEP, epoch, ids)
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(p > 0, -np.log(u) / np.where(p > 0, p, 1.0), np.inf)


def keep_threshold(keys: np.ndarray, k: int) -> float:
    """The k-th smallest key: keeping ``keys <= threshold`` keeps exactly k (keys are a.s. distinct)."""
    if not 0 < k <= len(keys):
        raise ValueError(f"cannot keep {k} of {len(keys)}")
    return float(np.partition(keys, k - 1)[k - 1])


def keep_set(probs: np.ndarray, keep_fraction: float, seed: int, epoch: int) -> tuple[float, np.ndarray]:
    """(threshold, boolean mask [N]) keeping exactly round(N·keep_fraction) ids, without replacement, ∝ p; every
    id with p > 0 when fewer have (an id with p = 0 is never kept)."""
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction} (1 / oversampling factor)")
    n = len(probs)
    keys = race_keys(np.arange(n), probs, seed, epoch)
    t = keep_threshold(keys, max(1, round(n * keep_fraction)))
    return t, (keys <= t) & np.isfinite(keys)


def keep_mask(ids: np.ndarray, p: np.ndarray, threshold: float, seed: int, epoch: int) -> np.ndarray:
    """Which of ``ids`` (with probabilities ``p``) are kept under a global threshold; chunk-invariant. An id with
    p = 0 is never kept."""
    keys = race_keys(ids, p, seed, epoch)
    return (keys <= threshold) & np.isfinite(keys)


def keep_top_k(ids: np.ndarray, p: np.ndarray, k: int, seed: int, epoch: int) -> np.ndarray:
    """Boolean mask keeping exactly ``k`` of the ``m`` candidates, without replacement, ∝ p."""
    keys = race_keys(ids, p, seed, epoch)
    if k >= len(keys):
        return np.ones(len(keys), dtype=bool)
    mask = np.zeros(len(keys), dtype=bool)
    mask[np.argpartition(keys, k - 1)[:k]] = True
    return mask


def fold_of(ids: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold (int64 in [0, folds), shape of ``ids``) of each global id: a hash of (seed, id), so every rank
    and every rerun puts an example in the same fold; each fold holds ≈ 1/folds of any large set of ids."""
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    return (uniform01(seed, _FOLD, 0, ids) * folds).astype(np.int64)
