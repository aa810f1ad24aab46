"""Training dynamics: per-example statistics recorded during the uniform pretraining, at no extra pass.

As batches go by, every example's training loss and margin (target logit − largest other logit, the statistic
of area-under-the-margin) are accumulated by global id; after pretraining they become three features:

- ``dyn_loss``   — the mean training loss over the example's visits (high for labels the model resists);
- ``aum``        — the mean margin (area under the margin: negative for mislabelled examples);
- ``wrong_frac`` — the fraction of visits on which the example was misclassified (margin < 0).

Determinism: each rank accumulates the visits it sees into its own file as fixed-point integers (2^-20 units),
and the features are the sums over rank files. Integer addition is exact and commutative, so the features are
bit-identical for any world size and any order of visits, given the same per-visit values. The accumulators are
saved with every training checkpoint under the checkpoint's (epoch, step), so a resumed pretraining neither
loses nor double-counts a visit.

Early stopping: the sums at the end of every epoch ``keep()`` names (the pretraining's best-val epoch so far) are
kept besides the latest, so the features can be averaged over the epochs *before* uniform training memorised
the noisy labels (``features.dynamics_until=best``) instead of over the whole run, whose late epochs (every
label fitted, losses near 0) dilute the signal.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from swift_scale.config import DYNAMICS_FEATURES
from swift_scale.io import atomic_save_npy

__all__ = ["DYNAMICS_FEATURES", "DynamicsRecorder", "dynamics_features", "suspect_sign"]

#: Features whose *low* values mark the examples a model resists (every other feature: the high values).
LOW_IS_SUSPECT: frozenset[str] = frozenset({"aum"})
_SCALE = float(1 << 20)  # fixed-point units of loss and margin
_LIMIT = 1e6  # |value| is clipped here so sums of up to 10^5 epochs stay far inside int64


def suspect_sign(name: str) -> float:
    """+1 when a feature's high values mark suspect examples (losses, ``wrong_frac``), −1 when its low values do
    (the margin ``aum``): the weight the step first points put on it, so a step drops the suspect end."""
    return -1.0 if name in LOW_IS_SUSPECT else 1.0


class DynamicsRecorder:
    """Accumulates (loss, margin, wrong) sums and visit counts by global id for one rank.

    Args:
        root: a folder shared by the ranks (the run's ``pretrain/dynamics``).
        num_examples: N, the training split's size (global ids in [0, N)).
        rank: this process's rank.
        keep: the epochs whose end-of-epoch sums must survive pruning (read at each prune, on every rank).
    """

    def __init__(self, root: str | os.PathLike, num_examples: int, rank: int = 0,
                 keep: Callable[[], Iterable[int]] | None = None):
        self.root, self.n, self.rank, self.keep = Path(root), int(num_examples), rank, keep
        self.acc = np.zeros((self.n, 4), dtype=np.int64)  # Σ loss, Σ margin (fixed point), Σ wrong, visits

    # -- recording ------------------------------------------------------------------------------------------
    def record(self, epoch: int, ids: np.ndarray, stats: np.ndarray) -> None:
        """Add one batch's per-example (loss, margin) [b, 2] at global ``ids`` [b]."""
        ids = np.asarray(ids, dtype=np.int64)
        s = np.nan_to_num(np.asarray(stats, dtype=np.float64), nan=_LIMIT, posinf=_LIMIT, neginf=-_LIMIT)
        s = np.clip(s, -_LIMIT, _LIMIT)
        rows = np.stack([np.rint(s[:, 0] * _SCALE), np.rint(s[:, 1] * _SCALE), s[:, 1] < 0,
                         np.ones(len(ids))], 1).astype(np.int64)
        np.add.at(self.acc, ids, rows)  # an id may appear twice in a batch

    def end_epoch(self, epoch: int) -> None:
        """Nothing to do: sums need no ordering."""

    # -- checkpointing with the training state --------------------------------------------------------------
    def _file(self, epoch: int, step: int) -> Path:
        return self.root / f"rank{self.rank:05d}-e{epoch:06d}-s{step:09d}.npy"

    def save(self, epoch: int, step: int) -> None:
        """Snapshot the sums for the checkpoint at (epoch, step) (before that checkpoint's commit)."""
        atomic_save_npy(self._file(epoch, step), self.acc)

    def load(self, epoch: int, step: int) -> None:
        """Restore the sums of the checkpoint at (epoch, step); (0, 0) starts from zero."""
        if (epoch, step) == (0, 0):
            self.acc[:] = 0
            return
        path = self._file(epoch, step)
        try:
            acc = np.load(path)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: the training dynamics of this checkpoint cannot be read "
                             f"({type(e).__name__}); delete {self.root.parent} to redo the pretraining") from None
        if acc.shape != self.acc.shape:
            raise ValueError(f"{path}: holds {acc.shape[0]} examples, the split {self.n}; delete "
                             f"{self.root.parent} to redo the pretraining")
        self.acc = acc

    def prune(self, epoch: int, step: int) -> None:
        """Delete this rank's snapshots older than the committed (epoch, step), except those ``keep()`` names."""
        keep = {self._file(epoch, step).name, *(self._file(e, 0).name for e in (self.keep() if self.keep else ()))}
        for p in self.root.glob(f"rank{self.rank:05d}-e*.npy"):
            if p.name not in keep:
                p.unlink(missing_ok=True)


def dynamics_features(root: str | os.PathLike, num_examples: int, epoch: int, world: int) -> dict[str, np.ndarray]:
    """The three features (float32 [N] each) from every rank's snapshot at the end of ``epoch`` epochs."""
    root = Path(root)
    total = np.zeros((num_examples, 4), dtype=np.int64)
    for rank in range(world):
        path = root / f"rank{rank:05d}-e{epoch:06d}-s{0:09d}.npy"
        if not path.exists():
            raise ValueError(f"{path}: the training dynamics after epoch {epoch} were not kept (a pretraining from "
                             f"before features.dynamics_until); delete {root.parent} to redo the pretraining")
        total += np.load(path)
    visits = np.maximum(total[:, 3], 1).astype(np.float64)
    return {"dyn_loss": (total[:, 0] / _SCALE / visits).astype(np.float32),
            "aum": (total[:, 1] / _SCALE / visits).astype(np.float32),
            "wrong_frac": (total[:, 2] / visits).astype(np.float32)}
