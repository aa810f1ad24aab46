"""The accelerate training loop and evaluation, over any :class:`~swift_scale.data.splits.TrainingSource`.

Every rank runs the same number of optimizer steps per epoch by construction (the source deals equal rank
shares), so uneven data can never hang DDP. Batches are moved to ``accelerator.device`` by hand; no dataloader
goes through ``prepare``. The learning rate is a pure function of (epoch, step), so resuming needs no scheduler
state, and a checkpoint is the accelerate state plus a small :class:`ResumePoint`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from swift_scale.data.splits import OnlineSelect, Split, TrainingSource
from swift_scale.io import atomic_write_json
from swift_scale.train.tasks import CLASSIFICATION, Task

__all__ = ["TrainSpec", "ResumePoint", "Checkpoints", "BatchRecorder", "train_model", "evaluate", "TrialFailed"]


class TrialFailed(RuntimeError):
    """Training diverged (non-finite loss) or has nothing to train on; the search records the trial as failed."""


@dataclass(frozen=True)
class TrainSpec:
    """One training's budget and optimizer (AdamW).

    ``schedule``: ``constant``, or ``cosine`` (lr → 0 over all of this training's steps).
    """

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine"] = "constant"
    seed: int = 0

    def lr_at(self, epoch: int, step: int, steps: int, epochs: int | None = None) -> float:
        """The learning rate at ``step`` of ``epoch`` (0-based), with ``steps`` steps per epoch over ``epochs``
        epochs (passes; default :attr:`epochs`)."""
        if self.schedule != "cosine":
            return self.lr
        total = (epochs or self.epochs) * steps
        return self.lr * 0.5 * (1 + math.cos(math.pi * (epoch * steps + step) / total))


@dataclass
class ResumePoint:
    """Where a checkpointed training stands: the next (epoch, step), the loss summed so far in that epoch, and
    the per-epoch curve."""

    epoch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    curve: list[dict] = field(default_factory=list)


class Checkpoints:
    """Epoch (and every ``every_steps`` steps) checkpoints in ``root``. A rerun resumes at the committed
    (epoch, step) exactly.

    Each save writes the accelerate state to ``accelerate.tmp``, renames it to a fresh ``accelerate-<n>``
    folder, then atomically rewrites ``state.json`` (the commit point) naming that folder; only then are the
    other ``accelerate*`` folders removed. A kill at any moment leaves ``state.json`` naming a complete folder
    that matches it, and whatever else is lying there is an uncommitted leftover the next save clears."""

    def __init__(self, root: Path, every_steps: int = 0):
        self.root, self.every_steps = Path(root), every_steps

    def _committed(self) -> dict | None:
        """The committed ``state.json`` (None before the first save); ``dir`` defaults to the earlier layout's
        single ``accelerate`` folder."""
        state_file = self.root / "state.json"
        return {"dir": "accelerate", **json.loads(state_file.read_text())} if state_file.exists() else None

    def load(self, accelerator: Accelerator) -> ResumePoint:
        if not (self.root / "state.json").exists():
            return ResumePoint()
        try:
            saved = self._committed()
            assert saved is not None  # state.json exists
            accelerator.load_state(str(self.root / saved["dir"]))
            return ResumePoint(int(saved["epoch"]), int(saved.get("step", 0)), float(saved.get("loss_sum", 0.0)),
                               list(saved["curve"]))
        except Exception as e:  # written atomically by us, so this is outside damage: say what to delete
            raise ValueError(f"{self.root}: checkpoint cannot be loaded ({type(e).__name__}); "
                             f"delete {self.root} to redo this training from its start") from None

    def _clear(self, keep: str | None) -> None:
        """Remove every ``accelerate*`` folder in ``root`` but ``keep`` (leftovers of saves cut off)."""
        for p in self.root.glob("accelerate*"):
            if p.name != keep:
                shutil.rmtree(p) if p.is_dir() else p.unlink()

    def save(self, accelerator: Accelerator, point: ResumePoint) -> None:
        tmp = self.root / "accelerate.tmp"
        if accelerator.is_main_process:  # only the main process reads state.json and moves folders
            committed = self._committed()
            self._clear(committed["dir"] if committed else None)  # a killed save's tmp or uncommitted folder
        accelerator.wait_for_everyone()
        # tied weights (GPT-2's lm_head) make safetensors log "Removed shared tensor" at every save: expected
        quiet = logging.getLogger("accelerate.utils.other")
        level, quiet.level = quiet.level, logging.ERROR
        try:
            accelerator.save_state(str(tmp))
        finally:
            quiet.level = level
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            gen = int((committed or {}).get("gen", 0)) + 1
            name = f"accelerate-{gen}"
            os.replace(tmp, self.root / name)
            atomic_write_json(self.root / "state.json", {**asdict(point), "dir": name, "gen": gen})
            self._clear(name)
        accelerator.wait_for_everyone()


class BatchRecorder(Protocol):
    """Receives every training batch's per-example statistics (training dynamics); its state is saved and
    restored with each checkpoint, under the checkpoint's (epoch, step)."""

    def record(self, epoch: int, ids: np.ndarray, stats: np.ndarray) -> None:
        """``stats`` float32 [b, 2] (loss, margin) of the examples with global ``ids`` in ``epoch``."""
        ...

    def end_epoch(self, epoch: int) -> None:
        """Called on every rank after the last step of ``epoch``, before its checkpoint."""
        ...

    def save(self, epoch: int, step: int) -> None:
        """Snapshot for the checkpoint at (epoch, step), before that checkpoint is committed."""
        ...

    def load(self, epoch: int, step: int) -> None:
        """Restore the snapshot of the committed checkpoint at (epoch, step) ((0, 0): start empty)."""
        ...

    def prune(self, epoch: int, step: int) -> None:
        """Drop snapshots older than the committed (epoch, step)."""
        ...


def train_model(accelerator: Accelerator, model: torch.nn.Module, source: TrainingSource, *,
                probs: np.ndarray | None, spec: TrainSpec, task: Task = CLASSIFICATION,
                checkpoints: Checkpoints | None = None,
                on_epoch: Callable[[int, torch.nn.Module], dict] | None = None,
                recorder: BatchRecorder | None = None, online: OnlineSelect | None = None,
                desc: str = "train", progress: bool = True, epoch_bar: bool = False) -> list[dict]:
    """Train ``model`` for ``spec.epochs`` epochs, sampling ids ∝ ``probs`` (None = uniform); returns the curve.

    A streaming source (or an in-memory one with ``data.draw=passes``) makes ``epochs × oversample`` passes when
    sampling (each keeps 1/oversample of the candidates ∝ p), so its optimizer steps match a uniform run's; its
    curve then has a row per pass. ``on_epoch(epoch, model)`` returns metrics
    appended to the curve; ``recorder`` sees every batch's per-example loss and margin; ``online`` is the
    ``data.online`` selector (streaming only). ``progress``: a bar per epoch on the main process;
    ``epoch_bar``: and one over the epochs (with the last epoch's train loss and val score).
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    per_rank = max(1, spec.batch_size // world)
    passes = source.passes(spec.epochs, probs is not None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    at = checkpoints.load(accelerator) if checkpoints is not None else ResumePoint()
    if recorder is not None:
        recorder.load(at.epoch, at.step)

    def commit(point: ResumePoint) -> None:
        if checkpoints is None:
            return
        if recorder is not None:
            recorder.save(point.epoch, point.step)
        checkpoints.save(accelerator, point)
        if recorder is not None:
            recorder.prune(point.epoch, point.step)

    curve = at.curve
    show = None if (progress and accelerator.is_local_main_process) else True
    outer = tqdm(total=passes, initial=at.epoch, desc=desc, unit="epoch", dynamic_ncols=True,
                 disable=show if epoch_bar else True)
    for epoch in range(at.epoch, passes):
        model.train()
        first = at.step if epoch == at.epoch else 0
        steps, batches = source.epoch(probs, epoch, seed=spec.seed, rank=rank, world=world, per_rank=per_rank,
                                      start_step=first, device=accelerator.device, online=online)
        if steps == 0:  # a sampler that keeps fewer examples than one global batch: nothing would train
            raise TrialFailed(f"pass {epoch + 1} keeps fewer examples than one batch of {per_rank * world}: the "
                              "sampler gives p > 0 to too few examples (or the data is smaller than train.batch_size)")
        bar = tqdm(batches, total=steps - first, desc=f"{desc} {epoch + 1}/{passes}", leave=False,
                   dynamic_ncols=True, disable=show)
        total = torch.full((), at.loss_sum if epoch == at.epoch else 0.0, device=accelerator.device)
        step = first
        for x, y, ids in bar:
            for group in optimizer.param_groups:
                group["lr"] = spec.lr_at(epoch, step, steps, passes)
            total += _step(accelerator, model, optimizer, task, x, y, ids, epoch, recorder)
            step += 1
            if checkpoints is not None and checkpoints.every_steps and step % checkpoints.every_steps == 0 \
                    and step < steps:
                commit(ResumePoint(epoch, step, accelerator.reduce(total, "mean").item(), curve))
        if step != steps:
            raise RuntimeError(f"rank {rank} ran {step} of {steps} steps in epoch {epoch + 1}; the data changed "
                               "while training — delete the run's index.json and rerun")
        curve.append(_end_epoch(accelerator, model, total, steps, epoch, on_epoch, recorder))
        commit(ResumePoint(epoch + 1, 0, 0.0, curve))
        outer.update(1)
        outer.set_postfix({k.replace("_accuracy", "_acc"): f"{v:.4g}" for k, v in curve[-1].items()
                           if k in ("train_loss", "val_accuracy", "val_perplexity")}, refresh=False)
    outer.close()
    return curve


def _step(accelerator, model, optimizer, task: Task, x, y, ids, epoch: int, recorder) -> torch.Tensor:
    """One optimizer step; returns the detached loss. A batch whose samples were all skipped still takes part
    in the gradient all-reduce (with a zero loss)."""
    with accelerator.autocast():
        if len(y):
            loss, stats = task.loss(model, x, y, stats=recorder is not None)
        else:
            loss, stats = sum(p.sum() * 0 for p in model.parameters()), None
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    optimizer.step()
    if recorder is not None and stats is not None:
        recorder.record(epoch, np.asarray(ids), stats.cpu().numpy())
    return loss.detach()


def _end_epoch(accelerator, model, total, steps: int, epoch: int, on_epoch, recorder) -> dict:
    mean_loss = accelerator.reduce(total, "mean").item() / max(steps, 1)
    if not math.isfinite(mean_loss):
        raise TrialFailed(f"non-finite training loss in epoch {epoch + 1}")
    if recorder is not None:
        recorder.end_epoch(epoch)
    row = {"epoch": epoch + 1, "train_loss": mean_loss}
    if on_epoch is not None:
        row.update(on_epoch(epoch + 1, model))
    return row


@torch.no_grad()
def evaluate(accelerator: Accelerator, model: torch.nn.Module, data: Split, batch_size: int = 512,
             task: Task = CLASSIFICATION) -> dict:
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
