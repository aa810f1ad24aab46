"""Applying a sampler to map-style data in your own loop: a DDP-aware weighted sampler.

The selection functions themselves are pure and live in :mod:`swift_scale.selection` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch.utils.data

from swift_scale.selection import (
    epoch_indices,
    keep_mask,
    keep_set,
    keep_threshold,
    keep_top_k,
    race_keys,
    rank_share,
)

__all__ = [
    "epoch_indices",
    "rank_share",
    "race_keys",
    "keep_threshold",
    "keep_mask",
    "keep_set",
    "keep_top_k",
    "DistributedWeightedSampler",
]


class DistributedWeightedSampler(torch.utils.data.Sampler[int]):
    """A DDP-aware weighted sampler for map-style datasets (what ``WeightedRandomSampler`` cannot do).

    Every rank computes the same epoch of ids ∝ p from (seed, epoch) and takes its equal-length share, so the
    shares are disjoint positions of one draw and every rank runs the same number of steps.
    Call :meth:`set_epoch` before each epoch, as with ``DistributedSampler``.

    Args:
        probs: [N] sampling probabilities (e.g. ``SwiftSampler.probs(features)``); None for uniform.
        num_samples: draws per epoch over all ranks (default N).
        rank, world_size: default from ``torch.distributed`` when initialised, else 0 and 1.
    """

    def __init__(self, probs: np.ndarray | None, num_examples: int | None = None, *, seed: int = 0,
                 num_samples: int | None = None, rank: int | None = None, world_size: int | None = None):
        if probs is None and num_examples is None:
            raise ValueError("give probs or num_examples")
        self.probs = None if probs is None else np.asarray(probs, dtype=np.float64)
        self.num_examples = len(self.probs) if self.probs is not None else int(num_examples)  # type: ignore[arg-type]
        dist = torch.distributed
        initialised = dist.is_available() and dist.is_initialized()
        self.world_size = world_size if world_size is not None else (dist.get_world_size() if initialised else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if initialised else 0)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside [0, {self.world_size})")
        self.seed = seed
        self.num_samples = num_samples or self.num_examples
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples // self.world_size

    def __iter__(self) -> Iterator[int]:
        ids = epoch_indices(self.probs, self.num_examples, self.seed, self.epoch, self.num_samples)
        return iter(rank_share(ids, self.rank, self.world_size).tolist())

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
