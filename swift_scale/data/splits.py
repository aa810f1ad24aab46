"""What a run trains and evaluates on: in-memory splits, the training-source protocol and :class:`Data`.

A *training source* yields each epoch's batches for one rank; the training loop and the features pass only
talk to this protocol, whether the examples are held in memory (:class:`Split`, :class:`TokenSplit`: an epoch
draws ids ∝ p with :func:`~swift_scale.selection.epoch_indices`) or streamed from shards every pass
(:class:`~swift_scale.data.stream.StreamingSplit`: streaming rejection before decoding).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from swift_scale.data.decode import images_to_input
from swift_scale.data.shards import ShardIndex
from swift_scale.rng import generator, stream_id
from swift_scale.selection import epoch_indices, keep_set, rank_share

__all__ = ["Batch", "TrainingSource", "Split", "TokenSplit", "Data", "OnlineSelect"]

_PASS_ORDER = stream_id("indexed-pass")

#: (model input on the device, targets on the device, global ids int64 [b] on the CPU)
Batch = tuple[torch.Tensor, torch.Tensor, np.ndarray]
#: The online selector of ``data.online``: (x, y, global ids, pass, keep) → bool mask [m] of the kept candidates.
OnlineSelect = Callable[[torch.Tensor, torch.Tensor, np.ndarray, int, int], torch.Tensor]


class TrainingSource(Protocol):
    """The training split as the loop and the features pass see it.

    Determinism: for a given seed, epoch, rank and world size :meth:`epoch` yields the same batches on every run,
    and every rank gets the same number of steps (uneven data never hangs DDP).
    """

    def __len__(self) -> int: ...

    def passes(self, epochs: int, sampled: bool) -> int:
        """Passes over the data that give ``epochs`` epochs' worth of optimizer steps."""
        ...

    def epoch(self, probs: np.ndarray | None, epoch: int, *, seed: int, rank: int, world: int, per_rank: int,
              start_step: int, device, online: OnlineSelect | None = None) -> tuple[int, Iterator[Batch]]:
        """(steps of this pass, this rank's batches from ``start_step`` on), sampling ∝ ``probs`` (None: uniform)."""
        ...

    def feature_batches(self, shard: int, offset: int, count: int,
                        batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Every example of one shard in stored order as (stored x, y, global ids) batches (the features pass)."""
        ...

    def to_input(self, x: torch.Tensor, device) -> torch.Tensor:
        """Stored examples → the model's input on ``device``."""
        ...

    def take_skipped(self) -> list[dict]:
        """Bad samples met since the last call (id, url, key, reason); in-memory sources have none."""
        ...


@dataclass
class Split:
    """A decoded image split held in memory: images uint8 [N, C, H, W], labels int64 [N]; row = global id.

    ``valid`` (bool [N], or None when every row is usable): rows that are never drawn (bad samples).

    ``cap`` (``data.draw=passes``): 0 draws a sampled epoch ∝ p with replacement; c > 0 makes a sampled training of
    E epochs max(1, round(E·c)) passes, each keeping round(N / c) ids ∝ p *without* replacement by the race keys a
    streaming pass uses (:func:`~swift_scale.selection.keep_set`: the same kept set for the same seed, pass and p;
    every id with p > 0 when fewer have), so no example is drawn more than once a pass. Uniform trainings are
    unchanged."""

    images: torch.Tensor
    labels: torch.Tensor
    cap: float = 0.0
    valid: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, ids: torch.Tensor) -> torch.Tensor:
        """The stored examples of rows ``ids``."""
        return self.images[ids]

    def to_input(self, x: torch.Tensor, device) -> torch.Tensor:
        """Stored uint8 images → the model's float input in [−1, 1] on ``device``."""
        return images_to_input(x, device)

    def batch(self, ids: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(model input, targets) of rows ``ids`` on ``device``."""
        idx = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        return self.to_input(self.inputs(idx), device), self.labels[idx].to(device, non_blocking=True)

    def passes(self, epochs: int, sampled: bool) -> int:
        return max(1, round(epochs * self.cap)) if sampled and self.cap else epochs

    def epoch(self, probs, epoch, *, seed, rank, world, per_rank, start_step, device, online=None):
        """An epoch of ⌈N / (world·b)⌉ steps: ids drawn ∝ p from (seed, epoch), identically on every rank, and
        dealt into equal rank shares (:func:`~swift_scale.selection.rank_share`). With ``cap`` and a sampler,
        pass ``epoch`` instead: its kept ids in an order drawn from (seed, pass), ⌊K / (world·b)⌋ steps."""
        if probs is not None and self.cap:
            _, mask = keep_set(np.asarray(probs, dtype=np.float64), 1.0 / self.cap, seed, epoch)
            kept = generator(seed, _PASS_ORDER, epoch).permutation(np.flatnonzero(mask))
            steps = len(kept) // (per_rank * world)
            ids = rank_share(kept[:steps * per_rank * world], rank, world)
        else:
            if probs is None and self.valid is not None:  # uniform over the usable rows
                probs = self.valid / self.valid.sum()
            steps = math.ceil(len(self) / (per_rank * world))
            ids = rank_share(epoch_indices(probs, len(self), seed, epoch, steps * per_rank * world), rank, world)
        rows = (ids[i * per_rank:(i + 1) * per_rank] for i in range(start_step, steps))
        return steps, ((*self.batch(r, device), r) for r in rows)

    def feature_batches(self, shard, offset, count, batch_size):
        ids = np.arange(offset, offset + count)
        for b in range(0, len(ids), batch_size):
            idx = torch.from_numpy(ids[b:b + batch_size])
            yield self.inputs(idx), self.labels[idx], idx

    def take_skipped(self) -> list[dict]:
        return []


class TokenSplit(Split):
    """Packed token sequences held in memory, int64 [N, T]; row = global id. Input and target are the same
    sequence (the task shifts it for next-token prediction)."""

    def __init__(self, tokens: torch.Tensor, cap: float = 0.0):
        super().__init__(tokens, tokens, cap)

    @property
    def tokens(self) -> torch.Tensor:
        return self.labels

    def to_input(self, x: torch.Tensor, device) -> torch.Tensor:
        return x.to(device, non_blocking=True)


@dataclass
class Data:
    """Everything a run reads, decoded or opened once per process by :func:`~swift_scale.data.load_data`.

    Attributes:
        index: the shard table of each split (global ids).
        train: the training source (in memory or streaming); val/test are held in memory.
        num_outputs: the width of the model's output layer: classes (classification) or vocabulary size (LM).
        noisy_ids: ids whose labels were flipped or whose text was corrupted (the benchmark's noise), sorted.
        num_errors: bad samples skipped so far (data.on_error=skip).
        train_valid: False for training rows that are never sampled (bad samples); None when all are valid.
        eos_id: LM: the tokenizer's end-of-text id (the model's bos/eos); None for classification.
        rarity: LM: −log unigram frequency of each token on the training split [vocab]; None otherwise.
        records: what the run folder should record about the data (relative path → a JSON-able object, or an
            object with ``save_pretrained`` such as a trained tokenizer); published by the pipeline once the
            folder is created, so a failed load leaves no folder behind.
        doc_of: LM: the document of each training sequence (int64 [N]); None where unknown.
    """

    index: dict[str, ShardIndex]
    train: TrainingSource
    val: Split
    test: Split
    num_outputs: int
    noisy_ids: np.ndarray
    num_errors: int = 0
    train_valid: np.ndarray | None = None
    eos_id: int | None = None
    rarity: np.ndarray | None = None
    records: dict[str, Any] = field(default_factory=dict)
    doc_of: np.ndarray | None = None

    def exclude(self, bad: list[dict]) -> None:
        """Never sample the training rows of ``bad`` (entries with an ``id``), and count them."""
        valid = np.ones(len(self.train), dtype=bool) if self.train_valid is None else self.train_valid.copy()
        valid[[e["id"] for e in bad]] = False
        self.train_valid, self.num_errors = valid, self.num_errors + len(bad)

    def sampling_weights(self, probs: np.ndarray | None) -> np.ndarray | None:
        """``probs`` with bad rows set to 0 (renormalised). None (uniform) stays None: a uniform pass leaves bad
        rows out itself (a stream skips them, an in-memory :class:`Split` draws only its ``valid`` rows)."""
        valid = self.train_valid
        if valid is None or probs is None:
            return probs
        p = np.asarray(probs, dtype=np.float64) * valid
        return p / p.sum() if p.sum() > 0 else valid / valid.sum()
