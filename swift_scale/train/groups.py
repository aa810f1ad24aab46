"""Training on a group of the run's processes, for the trial-parallel search.

With W processes and ``search.procs_per_trial`` = k, the processes form W / k groups of k consecutive ranks,
and each group fine-tunes its own trial while the others train theirs. :class:`GroupAccelerator` is the part of
accelerate's ``Accelerator`` that :func:`~swift_scale.train.loop.train_model` and
:func:`~swift_scale.train.loop.evaluate` use, over one such group: ranks, reductions and barriers within the
group, DDP over the group's process group when k > 1, and no wrapper (no gradient sync at all) when k = 1.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence

import torch

__all__ = ["GroupAccelerator", "trial_groups"]


def trial_groups(world: int, procs_per_trial: int) -> list[list[int]]:
    """The ranks of each trial group: W / k groups of k consecutive ranks (k = 0: one group of every rank)."""
    k = procs_per_trial or world
    if k < 1 or world % k:
        raise ValueError(f"search.procs_per_trial={procs_per_trial} does not divide the {world} processes; "
                         f"use a divisor of {world} (or 0: every process trains each trial)")
    return [list(range(g * k, (g + 1) * k)) for g in range(world // k)]


class _ScaledOptimizer:
    """An optimizer stepped through a ``GradScaler`` (fp16), as accelerate's wrapper does."""

    def __init__(self, optimizer: torch.optim.Optimizer, scaler):
        self.optimizer, self.scaler = optimizer, scaler

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()


class GroupAccelerator:
    """``Accelerator``'s training surface restricted to the processes ``ranks`` (this process among them).

    Args:
        accelerator: the run's accelerator (device, mixed precision, the global process index).
        ranks: the global ranks of this process's group, in order; its first rank is the group's leader.
        group: the ``torch.distributed`` process group of ``ranks`` (needed when there is more than one).
    """

    def __init__(self, accelerator, ranks: Sequence[int], group=None):
        self._acc, self.ranks, self.group = accelerator, list(ranks), group
        if accelerator.process_index not in self.ranks:
            raise ValueError(f"process {accelerator.process_index} is not in the group {self.ranks}")
        if len(self.ranks) > 1 and group is None:
            raise ValueError("a group of several processes needs its torch.distributed process group")
        self.num_processes = len(self.ranks)
        self.process_index = self.ranks.index(accelerator.process_index)
        self.device = accelerator.device
        self.mixed_precision = accelerator.mixed_precision
        self.is_main_process = self.process_index == 0
        self.is_local_main_process = accelerator.is_main_process  # progress bars: the run's main process only
        self._scaler = torch.amp.GradScaler(self.device.type) if self.mixed_precision == "fp16" else None

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        model = model.to(self.device)
        if self.num_processes > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids, process_group=self.group)
        return model, (_ScaledOptimizer(optimizer, self._scaler) if self._scaler is not None else optimizer)

    def autocast(self):
        return self._acc.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        (self._scaler.scale(loss) if self._scaler is not None else loss).backward()

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        out = tensor.clone()
        if self.num_processes > 1:
            torch.distributed.all_reduce(out, group=self.group)
            if reduction == "mean":
                out = out / self.num_processes
        return out

    def unwrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return getattr(model, "module", model)

    def wait_for_everyone(self) -> None:
        if self.num_processes > 1:
            torch.distributed.barrier(group=self.group)

    def free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
