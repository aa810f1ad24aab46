"""Checks of what a user can get wrong, run before any phase (a config error is never a failed trial).

Each raises :class:`~swift_scale.config.ConfigError` (exit status 2) with one line naming the field or file
and the fix, and changes nothing on disk.
"""

from __future__ import annotations

from pathlib import Path

from swift_scale.config import Config, ConfigError
from swift_scale.run_folder import RunFolder
from swift_scale.train.tasks import ClassificationTask, LMTask, sampler_features

__all__ = ["check_precision", "check_sampler_features", "sampler_features", "stored_features", "check_transfer",
           "check_model", "check_trial_groups"]


def stored_features(cfg: Config) -> tuple[str, ...]:
    """The feature columns a run's store holds for its task (θ0's, then the training dynamics)."""
    from swift_scale.features.dynamics import DYNAMICS_FEATURES

    task = LMTask if cfg.data.task == "lm" else ClassificationTask
    return (*task.feature_names, *(DYNAMICS_FEATURES if cfg.features.dynamics else ()))


def check_sampler_features(cfg: Config) -> None:
    known = stored_features(cfg)
    if cfg.data.online:  # θ0 scores every candidate as it is read: only its own features exist then
        known = (LMTask if cfg.data.task == "lm" else ClassificationTask).feature_names
    for name in sampler_features(cfg):
        if name not in known:
            raise ConfigError(f"sampler.features: {name!r} is not a feature of a {cfg.data.task} run; "
                              f"choose two of {', '.join(known)}")


def check_precision(cfg: Config) -> None:
    """fp16 autocast needs CUDA: on the CPU accelerate would silently train in fp32."""
    import torch

    on_cpu = cfg.train.cpu or not torch.cuda.is_available()
    if cfg.train.mixed_precision == "fp16" and on_cpu:
        raise ConfigError("train.mixed_precision: fp16 needs a CUDA GPU and this run is on the CPU; "
                          "use bf16 or no")


def check_trial_groups(cfg: Config, world: int) -> None:
    """``search.procs_per_trial`` must divide the number of processes the run was launched with."""
    from swift_scale.train.groups import trial_groups

    try:
        trial_groups(world, cfg.search.procs_per_trial)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_transfer(cfg: Config, folder: RunFolder, sampler_path: str | Path) -> None:
    """``train --sampler FILE``: the file must be a sampler over this run's features, and the run folder must not
    hold a different sampler of its own (a learned one would be overwritten)."""
    from swift_scale.sampler.swift import SwiftSampler

    sampler = SwiftSampler.load(sampler_path)
    known = stored_features(cfg)
    missing = [n for n in (*sampler.feature_names, sampler.grad_feature) if n not in known
               and (n != sampler.grad_feature or sampler.transform == "cgf")]
    if missing:
        raise ConfigError(f"{sampler_path}: uses feature {missing[0]!r}, which a {cfg.data.task} run does not "
                          f"compute ({', '.join(known)}); use a sampler learned on the same task")
    own = folder.path("sampler.json")
    if own.exists() and Path(sampler_path).resolve() != own.resolve():
        try:
            same = (SwiftSampler.load(own).to_dict() | {"info": {}}) == (sampler.to_dict() | {"info": {}})
        except (OSError, ValueError):
            same = False
        if not same:
            raise ConfigError(f"{own}: this run folder already holds another sampler (its own search's or an "
                              "earlier transfer's); train the transferred sampler in a new run.name")


def check_model(cfg: Config) -> None:
    """An unknown model name, constructor argument or an unreadable ``model.checkpoint`` file, found by building
    the model on the meta device (no memory) before any data is read; whether the checkpoint's shapes fit is
    checked once the number of classes is known (:meth:`~swift_scale.train.trainer.Trainer.check_model`)."""
    import os

    import torch

    m = cfg.model
    if cfg.data.task == "lm":
        from swift_scale.train.models import create_lm

        path = m.checkpoint or (m.name if os.path.isdir(m.name) else None)
        if path is None:
            with torch.device("meta"):
                create_lm(m.name, 512, cfg.data.seq_len, None, **({"bos_token_id": 0, "eos_token_id": 0} | m.kwargs))
        elif not os.path.isdir(path):
            raise ConfigError(f"model.checkpoint: {path} is not a local transformers checkpoint directory")
        return
    from swift_scale.io import load_state_dict
    from swift_scale.train.models import create_model

    with torch.device("meta"):
        create_model(m.name, cfg.data.num_classes or 10, m.in_chans, None, **m.kwargs)
    if m.checkpoint:
        load_state_dict(m.checkpoint, name="model.checkpoint", fix="give a state_dict saved with torch.save")
