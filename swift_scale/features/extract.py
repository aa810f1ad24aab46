"""The distributed features pass: one pass of θ0 over the training split, writing features by global id.

Rank r owns the shards with ordinal ≡ r (mod world) and writes its ids straight into the memory-mapped store
(nothing is gathered); each finished shard is marked, so a killed pass redoes only unfinished shards. With
``extra`` columns (training dynamics recorded during pretraining) each shard's rows get them copied beside the
θ0 features, so the store holds every feature a sampler may use. With several models and a ``route`` (cross-fitted
features, docs/design.md §1.6), each example's features come from the model ``route`` names for its global id.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from swift_scale.data.splits import TrainingSource
from swift_scale.features.store import FeatureStore

__all__ = ["FeatureTask", "extract_features"]


class FeatureTask(Protocol):
    """What the pass needs of a task: its feature names and per-example features of a batch."""

    feature_names: tuple[str, ...]

    def features(self, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


@torch.no_grad()
def extract_features(accelerator, model: torch.nn.Module | Sequence[torch.nn.Module], source: TrainingSource,
                     store_dir: Path, shard_offsets: list[int], shard_counts: list[int], task: FeatureTask, *,
                     extra: Mapping[str, np.ndarray] | None = None, batch_size: int = 512,
                     quantile_points: int = 1025, progress: bool = True,
                     route: Callable[[np.ndarray], np.ndarray] | None = None) -> FeatureStore:
    """Write ``task.feature_names`` (then the ``extra`` columns, float32 [N] each) of every training example
    into the store at ``store_dir``; finalise it (quantile tables) on the main process. Bad samples a streaming
    source meets are recorded in their shard's done marker (``{"skipped": [...]}``), each id once.

    ``model`` may be a sequence of models with ``route(global ids int64 [b]) -> model index [b]``: every model
    scores the batch and each row keeps the features of its own model (the same rows whatever the world size)."""
    models = list(model) if isinstance(model, Sequence) else [model]
    if len(models) > 1 and route is None:
        raise ValueError("several models need a route (global id -> model index)")
    extra = dict(extra or {})
    names = (*task.feature_names, *extra)
    if accelerator.is_main_process:
        FeatureStore.create(store_dir, len(source), names)
    accelerator.wait_for_everyone()
    store = FeatureStore(store_dir, mode="r+")
    done = store.done_units()
    for m in models:
        m.eval()
    mine = [s for s in range(len(shard_counts)) if s % accelerator.num_processes == accelerator.process_index]
    show = progress and accelerator.is_local_main_process
    for s in tqdm(mine, desc="features", leave=False, disable=None if show else True):
        unit = f"shard-{s:06d}"
        if unit in done:
            continue
        source.take_skipped()  # bad samples met by earlier passes are not this shard's findings
        for x, y, ids in source.feature_batches(s, shard_offsets[s], shard_counts[s], batch_size):
            xin, yin = source.to_input(x, accelerator.device), y.to(accelerator.device)
            with accelerator.autocast():
                per_model = [task.features(m, xin, yin) for m in models]
            if len(per_model) == 1:
                feats = per_model[0]
            else:
                assert route is not None  # checked above
                which = torch.from_numpy(route(ids.numpy())).to(per_model[0].device)
                feats = torch.stack(per_model)[which, torch.arange(len(which), device=which.device)]
            rows = feats.float().cpu().numpy()
            if extra:
                gid = ids.numpy()
                rows = np.concatenate([rows, np.stack([extra[n][gid] for n in extra], 1)], 1)
            store.write(ids.numpy(), rows)
        skipped = source.take_skipped()
        store.mark_done(unit, {"skipped": skipped} if skipped else None)
    store.flush()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        FeatureStore(store_dir, mode="r+").finalize(num_points=quantile_points)
    accelerator.wait_for_everyone()
    return FeatureStore(store_dir)
