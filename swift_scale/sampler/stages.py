"""Use a learned sampler in your own data pipeline: a webdataset stage and Hugging Face ``datasets`` helpers.

All decisions are pure functions of (seed, epoch, global id) — see :mod:`swift_scale.selection` — so
every rank, worker and restart agrees on which examples are kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from swift_scale.data.shards import ShardIndex
from swift_scale.features.functions import CLASSIFICATION_FEATURES, classification_features
from swift_scale.selection import epoch_indices, keep_set, keep_top_k

__all__ = ["KeepByGlobalId", "hf_epoch", "hf_keep", "keep_set", "online_keep"]


class KeepByGlobalId:
    """A webdataset pipeline stage (iterator → iterator) that keeps raw samples *before decoding*.

    The global id of a raw sample is offset[url] + its position in the shard, from the run's shard table, so
    the stage must see whole shards (split by shard across nodes/workers, as webdataset does) in stored order.
    Kept samples get ``__gid__``. Picklable, for DataLoader workers. Call :meth:`set_epoch` each epoch.
    :meth:`read` is the faster form for local shards: it replaces ``tarfile_to_samples`` and never reads the
    payloads of rejected samples.

    Example::

        pipe = wds.DataPipeline(wds.SimpleShardList(index.urls), wds.split_by_worker, wds.tarfile_to_samples(),
                                KeepByGlobalId(index, probs, keep_fraction=0.5, seed=0),
                                wds.decode("pil"), wds.to_tuple("png", "cls"), wds.batched(64))
    """

    def __init__(self, index: ShardIndex, probs: np.ndarray, *, keep_fraction: float = 0.5, seed: int = 0,
                 epoch: int = 0):
        if len(probs) != index.total:
            raise ValueError(f"probs has {len(probs)} entries but the shard table holds {index.total} samples")
        self.offsets = dict(zip(index.urls, index.offsets))
        self.counts = dict(zip(index.urls, index.counts))
        self.probs = np.asarray(probs, dtype=np.float64)
        self.keep_fraction, self.seed = keep_fraction, seed
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.threshold, self.mask = keep_set(self.probs, self.keep_fraction, self.seed, epoch)

    def read(self, src: Iterable[dict]) -> Iterator[dict]:
        """A source stage that replaces ``wds.tarfile_to_samples()`` *and* this filter: local tars are read
        header by header and only kept samples' payloads are read at all
        (:func:`~swift_scale.data.shards.tar_samples`); other urls go through webdataset and this filter.

        Example::

            pipe = wds.DataPipeline(wds.SimpleShardList(index.urls), wds.split_by_worker, stage.read,
                                    wds.decode("pil"), wds.to_tuple("png", "cls"))
        """
        from swift_scale.data.shards import local_path, raw_samples, tar_samples

        for shard in src:
            url = shard["url"]
            if url not in self.offsets:
                raise KeyError(f"{url} is not in the shard table this stage was built with")
            if (local := local_path(url)) is None:
                yield from self(raw_samples(url))
                continue
            offset = self.offsets[url]
            kept = self.mask[offset:offset + self.counts[url]]
            for pos, sample in tar_samples(local, kept.__getitem__):
                sample["__url__"], sample["__gid__"] = url, offset + pos
                yield sample

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        position: dict[str, int] = {}
        for sample in src:
            url = sample["__url__"]
            pos = position.get(url, 0)
            position[url] = pos + 1
            if url not in self.offsets:
                raise KeyError(f"{url} is not in the shard table this stage was built with")
            gid = self.offsets[url] + pos
            if self.mask[gid]:  # = race key of (seed, epoch, gid) <= the epoch's threshold
                sample["__gid__"] = gid
                yield sample


def hf_epoch(dataset, probs: np.ndarray, seed: int, epoch: int, num_samples: int | None = None):
    """An epoch of a map-style ``datasets.Dataset`` drawn ∝ p (indexed mode): ``dataset.select(ids)``."""
    if len(probs) != len(dataset):
        raise ValueError(f"probs has {len(probs)} entries, the dataset {len(dataset)} rows")
    return dataset.select(epoch_indices(probs, len(dataset), seed, epoch, num_samples))


def hf_keep(dataset, probs: np.ndarray, keep_fraction: float, seed: int, epoch: int, *, id_column: str | None = None):
    """Keep round(N·keep_fraction) rows ∝ p without replacement.

    ``datasets.Dataset``: ``select`` of the kept rows (global id = row index). ``datasets.IterableDataset``
    (streaming): a lazy ``filter`` on ``id_column``, a column holding each row's global id, decided per row from
    (seed, epoch, id) with the same threshold — the identical kept set on every node and DataLoader worker, so
    apply it before or after ``split_dataset_by_node``. A stream needs that column: after
    ``split_dataset_by_node`` or inside DataLoader workers, row indices restart per shard, so they are not ids.
    Write one when preparing the data, e.g. ``ds.add_column("id", range(len(ds))).to_parquet(...)``.
    """
    _, mask = keep_set(np.asarray(probs, dtype=np.float64), keep_fraction, seed, epoch)
    if hasattr(dataset, "select") and hasattr(dataset, "__len__"):
        return dataset.select(np.flatnonzero(mask))
    if id_column is None:
        raise ValueError("hf_keep on a streaming dataset needs id_column= (a column with each row's global id); "
                         "row indices restart per shard after split_dataset_by_node and in DataLoader workers")
    columns = getattr(dataset, "column_names", None)
    if columns is not None and id_column not in columns:
        raise ValueError(f"hf_keep: no column {id_column!r} in the stream (columns: {columns})")
    return dataset.filter(lambda row: bool(mask[row[id_column]]))


@torch.no_grad()
def online_keep(sampler, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, global_ids: np.ndarray,
                keep: int, *, seed: int, epoch: int) -> torch.Tensor:
    """The online mode (the paper's recipe for random crops): score candidates with the frozen θ0 and keep
    exactly ``keep`` of them ∝ the sampler's weight, without replacement. Returns a bool mask [m] on CPU.

    ``images`` [m, ...] are the already-augmented candidates (e.g. 2B of them for a batch of B); features come
    from ``model`` in eval mode, so no feature store is needed — only ``sampler.json``.
    """
    was_training = model.training
    model.eval()
    feats = classification_features(model(images), labels).cpu().numpy()
    model.train(was_training)
    columns = {name: feats[:, i] for i, name in enumerate(CLASSIFICATION_FEATURES)}
    weights = sampler.weights_of(columns).astype(np.float64)
    if weights.sum() <= 0:
        weights = np.ones_like(weights)
    return torch.from_numpy(keep_top_k(np.asarray(global_ids), weights / weights.sum(), keep, seed, epoch))
