"""The sampler search of a run (docs/design.md §4): Bayesian optimisation over θ, each trial a short fine-tune
from the start checkpoint under the trial's sampler, scored on val.

The first points are uniform sampling and the step samplers of ``search.init_steps`` (drop the top q of the
first feature), so a search that never finds better still reports what uniform sampling scores, and the GP sees
sharp samplers from the start (docs/design.md §6: without them, 40 trials rarely reach a step by chance).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from swift_scale.config import Config
from swift_scale.features.store import FeatureStore
from swift_scale.sampler.swift import SwiftSampler, num_params, uniform_theta
from swift_scale.search.driver import Outcome, best_or_raise, run_search
from swift_scale.search.engine import SearchEngine, Trial
from swift_scale.train.tasks import sampler_features
from swift_scale.train.trainer import Trainer

__all__ = ["SamplerSearch"]


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
        """Uniform sampling, then the step samplers of ``search.init_steps``."""
        segments, transform = self.cfg.sampler.segments, self.cfg.sampler.transform
        steps = [SwiftSampler.drop_top(q, self.names, self.quantiles, self.feats, transform,  # type: ignore[arg-type]
                                       segments).theta
                 for q in self.cfg.search.init_steps] if segments >= 3 else []
        return [uniform_theta(segments), *steps]

    def trial(self, trial: Trial, state0: dict) -> Outcome:
        """(val score, None), or (None, the reason) when the fine-tune fails; a failure never ends the search."""
        s, trainer = self.cfg.search, self.trainer
        sampler = self.sampler(trial.theta)
        try:
            model, _ = trainer.fit(sampler.probs(self.feats), epochs=s.finetune_epochs, lr=s.lr or self.cfg.train.lr,
                                   state=state0, desc=f"trial {trial.index}", eval_each_epoch=False,
                                   online=self.online(sampler))
            return trainer.task.score(trainer.evaluate(model, "val")), None
        except Exception as e:  # noqa: BLE001 - any failure inside a trial is recorded, never fatal
            return None, f"{type(e).__name__}: {e}"
        finally:
            trainer.acc.free_memory()

    def run(self, history: Path, state0: dict, log: Callable[[str, dict, int], None] | None = None) -> dict:
        """Search until ``search.trials`` trials are in ``history`` (a resumed search continues); the chosen
        trial's record: the best observed score, or the GP's best posterior mean (``search.select``)."""
        s = self.cfg.search
        engine = SearchEngine(history, dim=num_params(self.cfg.sampler.segments), strategy=s.strategy,  # type: ignore[arg-type]
                              seed=self.cfg.seed, n_init=s.n_init, acquisition=s.acquisition,  # type: ignore[arg-type]
                              beta=s.beta, num_restarts=s.num_restarts, raw_samples=s.raw_samples,
                              initial=self.initial_points())
        run_search(engine, s.trials, lambda t: self.trial(t, state0), self.trainer.acc, log)
        best = best_or_raise(engine)
        return (engine.posterior_best() or best) if s.select == "posterior" else best
