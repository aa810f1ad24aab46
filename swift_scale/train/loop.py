"""The accelerate training loop, evaluation and the distributed features pass (in-memory splits).

Every rank runs ⌈N / batch⌉ optimizer steps per epoch by construction: the epoch's ids are drawn once
(identically on every rank, from (seed, epoch)) and split into equal rank shares, so uneven data can never
hang DDP. Batches are moved to ``accelerator.device`` by hand; no dataloader goes through ``prepare``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from swift_scale.data.decode import images_to_input
from swift_scale.features.store import FeatureStore
from swift_scale.io import atomic_write_json
from swift_scale.sampler.select import epoch_indices, rank_share
from swift_scale.train.tasks import CLASSIFICATION

__all__ = ["Split", "TextSplit", "train_model", "evaluate", "extract_features", "TrialFailed"]


class TrialFailed(RuntimeError):
    """Training diverged (non-finite loss); the search records the trial as failed."""


@dataclass
class Split:
    """A decoded split held in memory: images uint8 [N, C, H, W], labels int64 [N]; row = global id."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, ids: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        return self.to_input(self.images[idx], device), self.labels[idx].to(device, non_blocking=True)

    def to_input(self, images: torch.Tensor, device) -> torch.Tensor:
        """Stored uint8 images → the model's float input in [−1, 1] on ``device``."""
        return images_to_input(images, device)

    def shard_batches(self, shard_offset: int, shard_count: int, batch_size: int):
        """(images uint8, labels, global ids) batches of one shard's rows, in order (the features pass)."""
        ids = np.arange(shard_offset, shard_offset + shard_count)
        for b in range(0, len(ids), batch_size):
            idx = torch.from_numpy(ids[b:b + batch_size])
            yield self.images[idx], self.labels[idx], idx


class TextSplit(Split):
    """Packed token sequences held in memory: ``images`` = ``labels`` = tokens int64 [N, T]; row = global id."""

    def to_input(self, images: torch.Tensor, device) -> torch.Tensor:
        return images.to(device, non_blocking=True)


def _steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def _epoch_batches(data, probs, seed: int, epoch: int, rank: int, world: int, per_rank: int, start_step: int,
                   device, online=None):
    """(steps of this epoch, iterator of (x, y) from ``start_step`` on) — indexed or streaming."""
    if isinstance(data, Split):
        steps = _steps_per_epoch(len(data), per_rank * world)
        ids = rank_share(epoch_indices(probs, len(data), seed, epoch, steps * per_rank * world), rank, world)
        return steps, (data.batch(ids[i * per_rank:(i + 1) * per_rank], device) for i in range(start_step, steps))
    if online is not None and probs is not None:  # windows of oversample·b uniform candidates, θ0 keeps b
        window = max(per_rank, round(per_rank * data.oversample))
        plan = data.plan(None, epoch)
        loader = data.loader(plan, epoch, rank, world, window, start_step)

        def kept():
            for images, labels, gids in loader:
                x, y = data.to_input(images, device), labels.to(device)
                keep = online(x, y, gids.numpy(), epoch, per_rank).to(device)
                yield x[keep], y[keep]

        return data.steps(plan, world, window), kept()
    plan = data.plan(probs, epoch)
    steps = data.steps(plan, world, per_rank)
    loader = data.loader(plan, epoch, rank, world, per_rank, start_step)
    return steps, ((data.to_input(x, device), y.to(device)) for x, y, _ in loader)


def train_model(accelerator: Accelerator, model: torch.nn.Module, data, *, probs: np.ndarray | None,
                epochs: int, batch_size: int, lr: float, weight_decay: float, seed: int,
                ckpt_dir: Path | None = None, on_epoch: Callable[[int, torch.nn.Module], dict] | None = None,
                desc: str = "train", progress: bool = True, schedule: str = "constant",
                checkpoint_steps: int = 0, task=CLASSIFICATION, online=None) -> list[dict]:
    """Train ``model`` for ``epochs`` epochs, sampling ids ∝ ``probs`` (None = uniform).

    ``data`` is an in-memory :class:`Split` (indexed mode: each epoch draws ids ∝ p) or a
    :class:`~swift_scale.data.stream.StreamingSplit` (streaming rejection: a sampled run makes
    ``epochs × oversample`` passes, each keeping 1/oversample of the candidates ∝ p, so its optimizer steps match
    a uniform run's). With ``ckpt_dir`` the accelerate state is saved after every epoch (and every
    ``checkpoint_steps`` steps) and a rerun resumes at that (epoch, step) exactly. ``on_epoch(epoch, model)``
    returns metrics appended to the returned curve. ``schedule``: ``constant`` or ``cosine`` (lr → 0 over all
    steps); the lr is a pure function of (epoch, step), so resuming needs no scheduler state.
    ``online(x, y, gids, pass, keep) -> bool mask`` (streaming only): instead of a kept set from the store, each
    window of ``oversample × b`` uniform candidates is scored by a frozen model and ``b`` are kept.
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    per_rank = max(1, batch_size // world)
    epochs_total = epochs if isinstance(data, Split) else data.passes(epochs, probs is not None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    start, start_step, curve, carried = 0, 0, [], 0.0
    state_file = ckpt_dir / "state.json" if ckpt_dir else None
    if state_file is not None and state_file.exists():
        try:
            saved = json.loads(state_file.read_text())
            accelerator.load_state(str(ckpt_dir / "accelerate"))
        except Exception as e:  # written atomically by us, so this is outside damage: say what to delete
            raise ValueError(f"{ckpt_dir}: checkpoint cannot be loaded ({type(e).__name__}); "
                             f"delete {ckpt_dir} to redo this training from its start") from None
        start, curve = int(saved["epoch"]), list(saved["curve"])
        start_step, carried = int(saved.get("step", 0)), float(saved.get("loss_sum", 0.0))
    for epoch in range(start, epochs_total):
        model.train()
        first = start_step if epoch == start else 0
        steps, batches = _epoch_batches(data, probs, seed, epoch, rank, world, per_rank, first, accelerator.device,
                                        online)
        bar = tqdm(batches, total=steps - first, desc=f"{desc} {epoch + 1}/{epochs_total}", leave=False,
                   disable=None if (progress and accelerator.is_local_main_process) else True)
        total = torch.full((), carried if epoch == start else 0.0, device=accelerator.device)
        step = first
        for x, y in bar:
            if schedule == "cosine":
                for group in optimizer.param_groups:
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (epoch * steps + step) / (epochs_total * steps)))
            with accelerator.autocast():
                # a batch whose samples were all skipped still takes part in the gradient all-reduce
                loss = task.loss(model, x, y) if len(y) else sum(p.sum() * 0 for p in model.parameters())
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            total += loss.detach()
            step += 1
            if ckpt_dir is not None and checkpoint_steps and step % checkpoint_steps == 0 and step < steps:
                _save_state(accelerator, ckpt_dir, epoch, curve, step=step,
                            loss_sum=accelerator.reduce(total, "mean").item())
        if step != steps:
            raise RuntimeError(f"rank {rank} ran {step} of {steps} steps in epoch {epoch + 1}; the data changed "
                               "while training — delete the run's index.json and rerun")
        mean_loss = accelerator.reduce(total, "mean").item() / max(steps, 1)
        if not math.isfinite(mean_loss):
            raise TrialFailed(f"non-finite training loss in epoch {epoch + 1}")
        row = {"epoch": epoch + 1, "train_loss": mean_loss}
        if on_epoch is not None:
            row.update(on_epoch(epoch + 1, model))
        curve.append(row)
        if ckpt_dir is not None:
            _save_state(accelerator, ckpt_dir, epoch + 1, curve)
    return curve


def _save_state(accelerator: Accelerator, ckpt_dir: Path, epoch: int, curve: list[dict], step: int = 0,
                loss_sum: float = 0.0) -> None:
    """accelerate state into a temp folder, swapped into place, then state.json (the commit point)."""
    tmp, final = ckpt_dir / "accelerate.tmp", ckpt_dir / "accelerate"
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        old = ckpt_dir / "accelerate.old"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        atomic_write_json(ckpt_dir / "state.json", {"epoch": epoch, "step": step, "loss_sum": loss_sum,
                                                    "curve": curve})
        if old.exists():
            import shutil

            shutil.rmtree(old)
    accelerator.wait_for_everyone()


@torch.no_grad()
def evaluate(accelerator: Accelerator, model: torch.nn.Module, data: Split, batch_size: int = 512,
             task=CLASSIFICATION) -> dict:
    """The task's metrics (accuracy and mean loss; perplexity for LM) over the whole split; each rank takes
    ids[rank::world], the sums are all-reduced."""
    model.eval()
    ids = np.arange(len(data))[accelerator.process_index::accelerator.num_processes]
    sums = torch.zeros(3, device=accelerator.device, dtype=torch.float64)
    for s in range(0, len(ids), batch_size):
        x, y = data.batch(ids[s:s + batch_size], accelerator.device)
        with accelerator.autocast():
            correct, loss_sum, count = task.eval_sums(model, x, y)
        sums[0] += correct
        sums[1] += loss_sum
        sums[2] += count
    sums = accelerator.reduce(sums, "sum")
    return task.finish(sums)


@torch.no_grad()
def extract_features(accelerator: Accelerator, model: torch.nn.Module, data: Split, store_dir: Path,
                     shard_offsets: list[int], shard_counts: list[int], batch_size: int = 512,
                     quantile_points: int = 1025, progress: bool = True, task=CLASSIFICATION) -> FeatureStore:
    """One pass of θ0 over the training split writing features into the store, by global id.

    Rank r owns the shards with ordinal ≡ r (mod world) and writes its ids straight into the memory-mapped
    store (nothing is gathered); each finished shard is marked, so a killed pass redoes only unfinished shards.
    """
    if accelerator.is_main_process:
        FeatureStore.create(store_dir, len(data), task.feature_names)
    accelerator.wait_for_everyone()
    store = FeatureStore(store_dir, mode="r+")
    done = store.done_units()
    model.eval()
    mine = [s for s in range(len(shard_counts)) if s % accelerator.num_processes == accelerator.process_index]
    for s in tqdm(mine, desc="features", leave=False, disable=None if (progress and accelerator.is_local_main_process) else True):
        unit = f"shard-{s:06d}"
        if unit in done:
            continue
        streaming = not isinstance(data, Split)
        if streaming:  # bad samples met by earlier passes are not this shard's findings: count each once, here
            data.take_skipped()
        batches = (data.shard_batches(s, batch_size) if streaming
                   else data.shard_batches(shard_offsets[s], shard_counts[s], batch_size))
        for images, labels, ids in batches:
            with accelerator.autocast():
                feats = task.features(model, data.to_input(images, accelerator.device),
                                      labels.to(accelerator.device)).cpu().numpy()
            store.write(ids.numpy(), feats)
        skipped = data.take_skipped() if streaming else []  # streaming: the bad ids of this shard
        store.mark_done(unit, {"skipped": skipped} if skipped else None)
    store.flush()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        store = FeatureStore(store_dir, mode="r+")
        store.finalize(num_points=quantile_points)
    accelerator.wait_for_everyone()
    return FeatureStore(store_dir)
