"""The sampler search of a run (docs/design.md §4): Bayesian optimisation over θ, each trial a short fine-tune
from the start checkpoint under the trial's sampler, scored on val.

The first points are uniform sampling and the step samplers of ``search.init_steps`` (drop the top q of the
first feature), so a search that never finds better still reports what uniform sampling scores, and the GP sees
sharp samplers from the start (docs/design.md §6: without them, 40 trials rarely reach a sharp step by chance).

Trials run in parallel across the run's processes (``search.procs_per_trial`` processes each) and a trial that
is clearly behind after a rung epoch (``search.rungs``) stops there (:func:`~swift_scale.search.engine.asha_stop`);
see :mod:`swift_scale.search.driver`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from swift_scale.config import Config
from swift_scale.features.dynamics import suspect_sign
from swift_scale.features.store import FeatureStore
from swift_scale.sampler.swift import SwiftSampler, kept_share, num_params, uniform_theta
from swift_scale.search.driver import TrialResult, best_or_raise, run_search
from swift_scale.search.engine import SearchEngine, Trial, asha_stop
from swift_scale.train.groups import GroupAccelerator, trial_groups
from swift_scale.train.tasks import sampler_features
from swift_scale.train.trainer import Trainer

__all__ = ["SamplerSearch", "choose"]


class _Stopped(Exception):
    def __init__(self, epoch: int):
        self.epoch = epoch


class SamplerSearch:
    """The samplers of one feature store, and the trials that score them.

    ``online(sampler)`` returns the online selector of ``data.online`` (or None).
    """

    def __init__(self, cfg: Config, trainer: Trainer, store: FeatureStore, feats: dict[str, np.ndarray],
                 online: Callable[[SwiftSampler | None], Any] = lambda s: None):
        self.cfg, self.trainer, self.store, self.feats, self.online = cfg, trainer, store, feats, online
        self.names = sampler_features(cfg)
        self.quantiles = {n: store.quantiles(n) for n in self.names}

    def sampler(self, theta) -> SwiftSampler:
        """The sampler of θ, fitted to this store's features."""
        return SwiftSampler.from_theta(np.asarray(theta), self.names, self.quantiles,
                                       self.cfg.sampler.transform).fit(self.feats)  # type: ignore[arg-type]

    def initial_points(self) -> list[np.ndarray]:
        """Uniform sampling, then the step samplers of ``search.init_steps`` (each drops the suspect end of the
        first feature: its top, or its bottom for the margin ``aum``; with an edge ``search.init_band`` wide)."""
        segments, transform = self.cfg.sampler.segments, self.cfg.sampler.transform
        sign = suspect_sign(self.names[0])
        steps = [SwiftSampler.drop_top(q, self.names, self.quantiles, self.feats, transform,  # type: ignore[arg-type]
                                       segments, sign=sign, band=self.cfg.search.init_band).theta
                 for q in self.cfg.search.init_steps] if segments >= 3 else []
        return [uniform_theta(segments), *steps]

    def trial(self, trial: Trial, state0: dict, earlier: Sequence[dict] = (),
              trainer: Trainer | None = None) -> TrialResult:
        """Fine-tune ``state0`` under trial's sampler and score it on val; scored on val after each rung epoch
        too, and stopped there when :func:`asha_stop` says so against the ``earlier`` trials. A failure is a
        result with its reason, never an exception: it must not end the search."""
        s, trainer = self.cfg.search, trainer or self.trainer
        rungs: dict[int, float] = {}
        t0 = time.time()

        passes = trainer.data.train.passes(s.finetune_epochs, True)  # streaming / data.draw=passes: oversample passes an epoch

        def at_epoch(done, model):  # done passes → epochs' worth of steps (rungs count epochs in every mode)
            epoch, part = divmod(done * s.finetune_epochs, passes)
            if not part and epoch in s.rungs and epoch < s.finetune_epochs:
                rungs[epoch] = score = trainer.task.score(trainer.evaluate(model, "val"))
                model.train()
                if asha_stop(earlier, epoch, score, s.eta):
                    raise _Stopped(epoch)

        sampler = self.sampler(trial.theta)
        try:
            model, _ = trainer.fit(sampler.probs(self.feats), epochs=s.finetune_epochs, lr=s.lr or self.cfg.train.lr,
                                   state=state0, desc=f"trial {trial.index}", eval_each_epoch=False,
                                   hook=at_epoch, online=self.online(sampler))
            score = trainer.task.score(trainer.evaluate(model, "val"))
            return TrialResult(score, rungs=rungs, seconds=time.time() - t0)
        except _Stopped as stop:
            return TrialResult(rungs[stop.epoch], rungs=rungs, stopped_at=stop.epoch, seconds=time.time() - t0)
        except Exception as e:  # noqa: BLE001 - any failure inside a trial is recorded, never fatal
            return TrialResult(None, error=f"{type(e).__name__}: {e}", rungs=rungs, seconds=time.time() - t0)
        finally:
            trainer.acc.free_memory()

    def engine(self, history: Path) -> SearchEngine:
        s = self.cfg.search
        return SearchEngine(history, dim=num_params(self.cfg.sampler.segments), strategy=s.strategy,  # type: ignore[arg-type]
                            seed=self.cfg.seed, n_init=s.n_init, acquisition=s.acquisition,  # type: ignore[arg-type]
                            beta=s.beta, num_restarts=s.num_restarts, raw_samples=s.raw_samples,
                            initial=self.initial_points(), fidelity_epochs=s.finetune_epochs if s.rungs else 0)

    def group_trainer(self) -> tuple[Trainer, int, int, bool]:
        """(this process's trainer, its group, the number of groups, whether it leads its group): every process
        trains each trial together (the run's own accelerator) or groups of ``search.procs_per_trial`` do."""
        acc = self.trainer.acc
        groups = trial_groups(acc.num_processes, self.cfg.search.procs_per_trial)
        if len(groups) == 1:
            return self.trainer, 0, 1, acc.is_main_process
        import torch.distributed as dist

        handles = [dist.new_group(ranks) if len(ranks) > 1 else None for ranks in groups]  # every rank, in order
        g = next(i for i, ranks in enumerate(groups) if acc.process_index in ranks)
        view = GroupAccelerator(acc, groups[g], handles[g])
        return self.trainer.on(view), g, len(groups), view.is_main_process

    def run(self, history: Path, state0: dict, log: Callable[[str, dict, int], None] | None = None) -> dict:
        """Search until ``search.trials`` trials are in ``history`` (a resumed search continues); the chosen
        trial's record: the best observed full-length score, or the GP's best posterior mean
        (``search.select``)."""
        s = self.cfg.search
        engine = self.engine(history)
        trainer, group, slots, leader = self.group_trainer()
        run_search(engine, s.trials, lambda t, earlier: self.trial(t, state0, earlier, trainer), self.trainer.acc,
                   log, slots=slots, group=group, leader=leader, overlap=s.overlap, progress=self.cfg.train.progress)
        best_or_raise(engine)
        return choose(engine.ranked(s.select), lambda rec: kept_share(self.sampler(rec["params"]).probs(self.feats)),
                      s.min_kept)


def choose(ranked: Sequence[dict], share: Callable[[dict], float], min_kept: float) -> dict:
    """The first trial of ``ranked`` (best first, in the order of ``search.select``) whose sampler keeps a
    share ``share(trial)`` of the training set of at least ``min_kept``, with that share as ``kept``.
    Uniform sampling, the first point, keeps all of it, so only when it failed can none qualify: then the
    first of ``ranked``. Shares are computed best first and only until one qualifies (each is a pass over N)."""
    first = None
    for rec in ranked:
        value = share(rec)
        if value >= min_kept:
            return {**rec, "kept": value}
        first = value if first is None else first
    return {**ranked[0], "kept": first}
