"""A resumable ask/tell search engine over θ ∈ [0, 1]^d.

The caller owns each trial::

    engine = SearchEngine("search/history.jsonl", seed=0)
    while engine.num_trials < 40:
        trial = engine.ask()                    # Trial(index, theta [d] float64)
        try:
            score = evaluate(trial.theta)
        except Exception as e:                  # a failed trial is recorded, the search goes on
            engine.tell(trial, None, error=repr(e)); continue
        engine.tell(trial, score)

Proposals: first the caller's ``initial`` points in order (the Swift sampler search passes uniform sampling,
which is always evaluated first), then ``n_init`` scrambled-Sobol points, then (``strategy="bo"``) the maximiser of LogEI (or UCB(β), qLogNEI) on a SingleTaskGP fitted to every
finished trial (inputs normalised to the unit cube, outputs standardised, double precision) or
(``strategy="random"``) uniform random points — the ablation baseline with the same interface.

Failed trials (exception, NaN/inf score) enter the GP at the worst score seen so far, so the engine does not
propose the same region again. Every proposal is a pure function of (seed, trial index, finished history):
the history is appended (fsynced) after every trial, and a new engine on the same file continues exactly
where a killed one stopped, reproducing the uninterrupted run.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from swift_scale.io import append_jsonl, read_jsonl
from swift_scale.rng import generator, stream_id

__all__ = ["SearchEngine", "Trial"]


@dataclass
class Trial:
    index: int
    theta: np.ndarray
    proposed_by: str
    started: float = 0.0


class SearchEngine:
    """Ask/tell Bayesian optimisation with an append-only ``history.jsonl`` (maximises the score).

    Args:
        history_path: JSONL file; created if missing, continued if present.
        dim: number of parameters (10 for the Swift sampler).
        strategy: "bo" (GP + UCB) or "random".
        seed: makes every proposal reproducible.
        n_init: quasi-random points after the uniform point before the GP takes over.
        acquisition: ``logei`` (LogEI over the best posterior mean; the default), ``qlognei`` (noisy LogEI, slower)
            or ``ucb`` (UCB with ``beta``).
        beta: UCB exploration weight.
        num_restarts, raw_samples: ``optimize_acqf`` effort (shrink both for a smoke run).
        initial: points evaluated first, in order, before any Sobol point (e.g. the sampler search's uniform
            sampling); empty to start with Sobol points.
    """

    def __init__(self, history_path: str | Path, *, dim: int = 10, strategy: Literal["bo", "random"] = "bo",
                 seed: int = 0, n_init: int = 4, acquisition: Literal["logei", "qlognei", "ucb"] = "logei",
                 beta: float = 2.0, num_restarts: int = 8,
                 raw_samples: int = 256, initial: Sequence[np.ndarray] = ()):
        if strategy not in ("bo", "random"):
            raise ValueError(f"strategy must be 'bo' or 'random', got {strategy!r}")
        if acquisition not in ("logei", "qlognei", "ucb"):
            raise ValueError(f"acquisition must be 'logei', 'qlognei' or 'ucb', got {acquisition!r}")
        if beta < 0 or n_init < 0 or num_restarts < 1 or raw_samples < 1:
            raise ValueError("need beta >= 0, n_init >= 0, num_restarts >= 1, raw_samples >= 1")
        self.path = Path(history_path)
        self.dim, self.strategy, self.seed, self.n_init, self.beta = dim, strategy, seed, n_init, beta
        self.acquisition = acquisition
        self.num_restarts, self.raw_samples = num_restarts, raw_samples
        self.initial = [np.asarray(x, dtype=np.float64) for x in initial]
        for x in self.initial:
            if x.shape != (dim,):
                raise ValueError(f"initial points must have {dim} entries, got shape {x.shape}")
        self.history: list[dict] = read_jsonl(self.path)
        for i, rec in enumerate(self.history):
            if rec.get("trial") != i or len(rec.get("params", [])) != dim:
                raise ValueError(f"{self.path}: record {i} is not trial {i} with {dim} params; the history is "
                                 "corrupt or from another search — move it away to start over")

    # -- state ----------------------------------------------------------------------------------------------
    @property
    def num_trials(self) -> int:
        return len(self.history)

    def ok_trials(self) -> list[dict]:
        return [r for r in self.history if r["status"] == "ok"]

    def best(self) -> dict | None:
        ok = self.ok_trials()
        return max(ok, key=lambda r: r["score"]) if ok else None

    # -- ask / tell -----------------------------------------------------------------------------------------
    def ask(self) -> Trial:
        """Propose the next θ (deterministic given seed and history)."""
        t = self.num_trials
        offset = len(self.initial)
        if t < offset:
            theta, how = self.initial[t].copy(), "initial" if t else "first"
        elif t < offset + self.n_init:
            theta, how = self._sobol(t - offset), "sobol"
        elif self.strategy == "random":
            theta, how = generator(self.seed, stream_id("random-search"), t).random(self.dim), "random"
        else:
            theta, how = self._bo(t)
        return Trial(t, np.clip(theta, 0.0, 1.0), how, time.time())

    def tell(self, trial: Trial, score: float | None, *, error: str | None = None, extra: dict | None = None,
             persist: bool = True) -> dict:
        """Record the outcome of ``trial`` (a None/NaN score or an error marks it failed) and append it.

        ``persist=False`` updates only this engine's in-memory history: in a multi-process run every rank
        tells, so all ranks agree on the next proposal, and only the main rank writes the file.
        """
        if trial.index != self.num_trials:
            raise ValueError(f"trial {trial.index} told out of order; next expected is {self.num_trials}")
        ok = error is None and score is not None and math.isfinite(score)
        rec = {
            "trial": trial.index,
            "params": [float(x) for x in trial.theta],
            "score": float(score) if ok and score is not None else None,
            "status": "ok" if ok else "failed",
            "seconds": round(time.time() - trial.started, 3) if trial.started else 0.0,
            "proposed_by": trial.proposed_by,
        }
        if not ok:
            rec["error"] = error or f"non-finite score {score!r}"
        if extra:
            rec.update(extra)
        if persist:
            append_jsonl(self.path, rec)
        self.history.append(rec)
        return rec

    # -- proposals ------------------------------------------------------------------------------------------
    def _sobol(self, i: int) -> np.ndarray:
        engine = torch.quasirandom.SobolEngine(self.dim, scramble=True, seed=self.seed)
        return engine.draw(i + 1, dtype=torch.float64)[i].numpy()

    def _training_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        ok = [r["score"] for r in self.history if r["status"] == "ok"]
        worst = min(ok)
        x = torch.tensor([r["params"] for r in self.history], dtype=torch.float64)
        y = torch.tensor([[r["score"] if r["status"] == "ok" else worst] for r in self.history],
                         dtype=torch.float64)
        return x, y

    def _fit_gp(self, t: int):
        """A SingleTaskGP on every finished trial (inputs on the unit cube, outputs standardised, float64); its
        default priors (botorch ≥ 0.12: dimension-scaled log-normal lengthscales) suit [0, 1]^10."""
        with warnings.catch_warnings():  # botorch's import emits a torch.jit deprecation warning
            warnings.simplefilter("ignore", FutureWarning)
            from botorch.fit import fit_gpytorch_mll
            from botorch.models import SingleTaskGP
            from botorch.models.transforms import Normalize, Standardize
            from gpytorch.mlls import ExactMarginalLogLikelihood

        x, y = self._training_data()
        model = SingleTaskGP(x, y, input_transform=Normalize(d=self.dim, bounds=self._bounds()),
                             outcome_transform=Standardize(m=1))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        return model, x

    def _bounds(self) -> torch.Tensor:
        return torch.stack([torch.zeros(self.dim, dtype=torch.float64), torch.ones(self.dim, dtype=torch.float64)])

    def _acquisition(self, model, x: torch.Tensor):
        from botorch.acquisition import LogExpectedImprovement, UpperConfidenceBound
        from botorch.acquisition.logei import qLogNoisyExpectedImprovement

        if self.acquisition == "ucb":
            return UpperConfidenceBound(model, beta=self.beta)
        if self.acquisition == "qlognei":
            return qLogNoisyExpectedImprovement(model, X_baseline=x, prune_baseline=True)
        with torch.no_grad():  # noisy scores: improve on the best posterior mean, not the luckiest observation
            best_f = model.posterior(x).mean.max()
        return LogExpectedImprovement(model, best_f=best_f)

    def _bo(self, t: int) -> tuple[np.ndarray, str]:
        if len(self.ok_trials()) < 2:
            return self._sobol(t), "sobol"
        with torch.random.fork_rng(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # botorch's import warns about torch.jit; fits warn about conditioning
            from botorch.optim import optimize_acqf

            torch.manual_seed(self.seed * 1_000_003 + t)
            try:
                model, x = self._fit_gp(t)
                cand, _ = optimize_acqf(self._acquisition(model, x), bounds=self._bounds(), q=1,
                                        num_restarts=self.num_restarts, raw_samples=self.raw_samples)
            except Exception:  # a numerically singular GP must not end the search
                return self._sobol(t), "sobol-fallback"
        theta = cand[0].detach().numpy()
        if torch.cdist(cand, x).min() < 1e-6:  # already evaluated: explore instead
            return self._sobol(t), "sobol-duplicate"
        return theta, "bo"

    def posterior_best(self) -> dict | None:
        """The finished trial with the highest GP posterior mean (the winner's curse: the best *observed*
        score of many noisy trials is optimistic); the best observed one when a GP cannot be fitted."""
        ok = self.ok_trials()
        if len(ok) < 3:
            return self.best()
        with torch.random.fork_rng(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(self.seed * 1_000_003 + self.num_trials)
            try:
                model, _ = self._fit_gp(self.num_trials)
                xs = torch.tensor([r["params"] for r in ok], dtype=torch.float64)
                with torch.no_grad():
                    mean = model.posterior(xs).mean.squeeze(-1)
            except Exception:
                return self.best()
        return ok[int(torch.argmax(mean))]
