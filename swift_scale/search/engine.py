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
which is always evaluated first), then ``n_init`` scrambled-Sobol points, then (``strategy="bo"``) the maximiser
of LogEI (or UCB(β), qLogNEI) on a SingleTaskGP fitted to every finished trial (inputs normalised to the unit
cube, outputs standardised, double precision) or (``strategy="random"``) uniform random points — the ablation
baseline with the same interface.

Batches (trial-parallel search): :meth:`ask_batch` proposes ``q`` trials at once. Their BO points maximise the
joint qLogNEI (qUCB for ``ucb``) by sequential greedy optimisation, with the batch's other points and any
``pending`` trials (proposed, still running) as ``X_pending``, so a batch spreads out instead of proposing the
same point ``q`` times. ``ask_batch(1)`` without pending trials is exactly :meth:`ask`.

Multi-fidelity (``fidelity_epochs`` = E, the trials' full length): a trial may report its val score after
epoch e < E (``rungs``) and may have been stopped there (status ``stopped``, see :func:`asha_stop`). The GP then
models the fidelity explicitly: each observation is (θ, e / E) → score, every rung score of every trial is one,
and the acquisition is maximised at fidelity 1 (the full fine-tune). Stopped trials thus still tell the GP
where not to look, through what their first epochs showed, without being mistaken for full-length scores.

Failed trials (exception, NaN/inf score) enter the GP at the worst score seen so far, so the engine does not
propose the same region again. Every proposal is a pure function of (seed, trial index, the history it is
given): the history is appended (fsynced) after every trial, and a new engine on the same file continues
exactly where a killed one stopped, reproducing the uninterrupted run.
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

from swift_scale.io import append_jsonl, atomic_write_jsonl, read_jsonl
from swift_scale.rng import generator, stream_id

__all__ = ["SearchEngine", "Trial", "asha_stop"]


@dataclass
class Trial:
    index: int
    theta: np.ndarray
    proposed_by: str
    started: float = 0.0
    gp: dict | None = None  # the fitted GP hyperparameters (raw values) of the proposal, kept in its record


def asha_stop(history: Sequence[dict], epoch: int, score: float, eta: float = 3.0) -> bool:
    """Successive halving against the scores seen at the same epoch (ASHA's rule, made deterministic by
    judging against finished trials only): stop a trial whose val ``score`` after ``epoch`` is not in the top
    1/``eta`` of the rung — the scores that earlier trials in ``history`` recorded after that epoch, and its own.
    Nothing is stopped until ⌈eta⌉ earlier scores exist at the rung."""
    seen = [r["rungs"][str(epoch)] for r in history if str(epoch) in (r.get("rungs") or {})]
    if len(seen) < math.ceil(eta):
        return False
    ranked = sorted([*seen, score], reverse=True)
    keep = max(1, int(len(ranked) / eta))
    return score < ranked[keep - 1]


class SearchEngine:
    """Ask/tell Bayesian optimisation with an append-only ``history.jsonl`` (maximises the score).

    Args:
        history_path: JSONL file; created if missing, continued if present (None: in memory only, e.g. in a
            process that only computes proposals).
        dim: number of parameters (10 for the Swift sampler).
        strategy: "bo" (GP + acquisition) or "random".
        seed: makes every proposal reproducible.
        n_init: quasi-random points after the initial points before the GP takes over.
        acquisition: ``logei`` (LogEI over the best posterior mean; the default), ``qlognei`` (noisy LogEI, slower)
            or ``ucb`` (UCB with ``beta``).
        beta: UCB exploration weight.
        num_restarts, raw_samples: ``optimize_acqf`` effort (shrink both for a smoke run).
        initial: points evaluated first, in order, before any Sobol point (e.g. the sampler search's uniform
            sampling); empty to start with Sobol points.
        fidelity_epochs: the trials' full length E when they report rung scores (multi-fidelity GP); 0 = every
            observation is a full-length score.
    """

    def __init__(self, history_path: str | Path | None, *, dim: int = 10,
                 strategy: Literal["bo", "random"] = "bo", seed: int = 0, n_init: int = 4,
                 acquisition: Literal["logei", "qlognei", "ucb"] = "logei", beta: float = 2.0,
                 num_restarts: int = 8, raw_samples: int = 256, initial: Sequence[np.ndarray] = (),
                 fidelity_epochs: int = 0):
        if strategy not in ("bo", "random"):
            raise ValueError(f"strategy must be 'bo' or 'random', got {strategy!r}")
        if acquisition not in ("logei", "qlognei", "ucb"):
            raise ValueError(f"acquisition must be 'logei', 'qlognei' or 'ucb', got {acquisition!r}")
        if beta < 0 or n_init < 0 or num_restarts < 1 or raw_samples < 1 or fidelity_epochs < 0:
            raise ValueError("need beta >= 0, n_init >= 0, num_restarts >= 1, raw_samples >= 1, fidelity_epochs >= 0")
        self.path = None if history_path is None else Path(history_path)
        self.dim, self.strategy, self.seed, self.n_init, self.beta = dim, strategy, seed, n_init, beta
        self.acquisition, self.fidelity_epochs = acquisition, fidelity_epochs
        self.num_restarts, self.raw_samples = num_restarts, raw_samples
        self.initial = [np.asarray(x, dtype=np.float64) for x in initial]
        for x in self.initial:
            if x.shape != (dim,):
                raise ValueError(f"initial points must have {dim} entries, got shape {x.shape}")
        self.history: list[dict] = read_jsonl(self.path) if self.path is not None else []
        for i, rec in enumerate(self.history):
            if rec.get("trial") != i or len(rec.get("params", [])) != dim:
                raise ValueError(f"{self.path}: record {i} is not trial {i} with {dim} params; the history is "
                                 "corrupt or from another search — move it away to start over")

    def settings(self) -> dict:
        """The constructor's keyword arguments (a copy of this engine elsewhere: ``SearchEngine(None, **s)``)."""
        return {"dim": self.dim, "strategy": self.strategy, "seed": self.seed, "n_init": self.n_init,
                "acquisition": self.acquisition, "beta": self.beta, "num_restarts": self.num_restarts,
                "raw_samples": self.raw_samples, "initial": self.initial, "fidelity_epochs": self.fidelity_epochs}

    # -- state ----------------------------------------------------------------------------------------------
    @property
    def num_trials(self) -> int:
        return len(self.history)

    def ok_trials(self) -> list[dict]:
        """The trials that ran to full length and have a score."""
        return [r for r in self.history if r["status"] == "ok"]

    def best(self) -> dict | None:
        ok = self.ok_trials()
        return max(ok, key=lambda r: r["score"]) if ok else None

    # -- ask / tell -----------------------------------------------------------------------------------------
    def ask(self) -> Trial:
        """Propose the next θ (deterministic given seed and history)."""
        return self.ask_batch(1)[0]

    def ask_batch(self, q: int, *, observed: int | None = None, pending: Sequence[np.ndarray] = ()) -> list[Trial]:
        """Propose the next ``q`` trials, numbered from ``observed + len(pending)``.

        ``observed``: how many history records the proposals may use (default all): a proposal made while
        earlier trials were still running sees only what had finished, and a resumed search passes the same
        number to make the same proposals. ``pending``: θ of trials proposed but not finished (numbered
        ``observed`` …), avoided by the batch's BO points.
        """
        n_obs = self.num_trials if observed is None else observed
        if not 0 <= n_obs <= self.num_trials or q < 1:
            raise ValueError(f"need 0 <= observed <= {self.num_trials} and q >= 1, got {observed}, {q}")
        records, start = self.history[:n_obs], n_obs + len(pending)
        out: list[Trial] = []
        for t in range(start, start + q):
            theta, how = self._fixed_point(t)
            if theta is not None:
                out.append(Trial(t, np.clip(theta, 0.0, 1.0), how, time.time()))
        bo_start = start + len(out)
        if len(out) < q:  # the BO slots come after every fixed point of the sequence
            points = [np.asarray(p, dtype=np.float64) for p in pending] + [tr.theta for tr in out]
            proposals, gp = self._bo(records, bo_start, q - len(out), points)
            for i, (theta, how) in enumerate(proposals):
                out.append(Trial(bo_start + i, np.clip(theta, 0.0, 1.0), how, time.time(), gp))
        return out

    def tell(self, trial: Trial, score: float | None, *, error: str | None = None, extra: dict | None = None,
             persist: bool = True, rungs: dict[int, float] | None = None, stopped_at: int | None = None,
             seconds: float | None = None) -> dict:
        """Record the outcome of ``trial`` (a None/NaN score or an error marks it failed) and append it.

        ``rungs``: its val score after some epochs (multi-fidelity); ``stopped_at``: the epoch it was stopped
        after (status ``stopped``; ``score`` is then its score there). ``persist=False`` updates only this
        engine's in-memory history: in a multi-process run every rank tells, so all ranks agree on the next
        proposal, and only the main rank writes the file.
        """
        if trial.index != self.num_trials:
            raise ValueError(f"trial {trial.index} told out of order; next expected is {self.num_trials}")
        ok = error is None and score is not None and math.isfinite(score)
        if seconds is None:
            seconds = time.time() - trial.started if trial.started else 0.0
        rec = {
            "trial": trial.index,
            "params": [float(x) for x in trial.theta],
            "score": float(score) if ok and score is not None else None,
            "status": ("ok" if stopped_at is None else "stopped") if ok else "failed",
            "seconds": round(seconds, 3),
            "proposed_by": trial.proposed_by,
        }
        if not ok:
            rec["error"] = error or f"non-finite score {score!r}"
        if rungs:
            rec["rungs"] = {str(e): float(s) for e, s in sorted(rungs.items())}
        if stopped_at is not None:
            rec["epochs"] = int(stopped_at)
        if trial.gp is not None:
            rec["gp"] = trial.gp
        if extra:
            rec.update(extra)
        if persist and self.path is not None:
            append_jsonl(self.path, rec)
        self.history.append(rec)
        return rec

    def persist(self, records: list[dict]) -> None:
        """Append records already told with ``persist=False`` to the history file, in one write."""
        if self.path is not None and records:
            append_jsonl(self.path, records)

    def drop_last(self, k: int, persist: bool = True) -> None:
        """Forget the last ``k`` records; with ``persist`` the file is rewritten without them (atomically)."""
        if k > 0:
            del self.history[-k:]
            if persist and self.path is not None:
                atomic_write_jsonl(self.path, self.history)

    # -- proposals ------------------------------------------------------------------------------------------
    def _fixed_point(self, t: int) -> tuple[np.ndarray | None, str]:
        """Trial ``t``'s point when it does not come from the GP: initial, Sobol or random."""
        offset = len(self.initial)
        if t < offset:
            return self.initial[t].copy(), "initial" if t else "first"
        if t < offset + self.n_init:
            return self._sobol(t - offset), "sobol"
        if self.strategy == "random":
            return generator(self.seed, stream_id("random-search"), t).random(self.dim), "random"
        return None, "bo"

    def _sobol(self, i: int) -> np.ndarray:
        engine = torch.quasirandom.SobolEngine(self.dim, scramble=True, seed=self.seed)
        return engine.draw(i + 1, dtype=torch.float64)[i].numpy()

    def _training_data(self, records: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """GP inputs [n, d] (or [n, d + 1] with the fidelity column) and scores [n, 1]; failed trials at the
        worst score seen."""
        seen = [r["score"] for r in records if r["status"] != "failed"]
        seen += [s for r in records for s in (r.get("rungs") or {}).values()]
        worst = min(seen)
        xs: list[list[float]] = []
        ys: list[float] = []
        for r in records:
            final = r["status"] in ("ok", "failed")
            score = r["score"] if r["status"] == "ok" else worst
            if not self.fidelity_epochs:
                if r["status"] != "stopped":
                    xs.append(list(r["params"]))
                    ys.append(score)
                continue
            for e, s in (r.get("rungs") or {}).items():
                xs.append([*r["params"], int(e) / self.fidelity_epochs])
                ys.append(s)
            if final:
                xs.append([*r["params"], 1.0])
                ys.append(score)
        return torch.tensor(xs, dtype=torch.float64), torch.tensor(ys, dtype=torch.float64).unsqueeze(-1)

    def _fit_gp(self, records: Sequence[dict]):
        """A SingleTaskGP on the records (inputs on the unit cube, outputs standardised, float64); its default
        priors (botorch ≥ 0.12: dimension-scaled log-normal lengthscales) suit [0, 1]^10.

        The marginal-likelihood fit starts from the hyperparameters of the latest proposal in ``records`` (kept
        in its record as ``gp``): a warm start converges in a fraction of the iterations of a cold one, and as a
        function of the records alone it keeps every proposal reproducible on resume."""
        with warnings.catch_warnings():  # botorch's import emits a torch.jit deprecation warning
            warnings.simplefilter("ignore", FutureWarning)
            from botorch.fit import fit_gpytorch_mll
            from botorch.models import SingleTaskGP
            from botorch.models.transforms import Normalize, Standardize
            from gpytorch.mlls import ExactMarginalLogLikelihood

        x, y = self._training_data(records)
        model = SingleTaskGP(x, y, input_transform=Normalize(d=x.shape[-1], bounds=self._bounds(x.shape[-1])),
                             outcome_transform=Standardize(m=1))
        warm = next((r["gp"] for r in reversed(records) if r.get("gp")), None)
        params = dict(model.named_parameters())
        if warm is not None and all(n in params and tuple(params[n].shape) == tuple(np.shape(v))
                                    for n, v in warm.items()):
            with torch.no_grad():
                for n, v in warm.items():
                    params[n].copy_(torch.as_tensor(v, dtype=params[n].dtype))
        # stop when an L-BFGS step improves the marginal likelihood by < 1e-6 (relative): botorch's default
        # tolerance spends ~300 steps crawling along a flat optimum (0.7 s at 30 trials) for lengthscales that
        # move by a few percent; warm-started, a fit then takes ~10 steps
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model),
                         optimizer_kwargs={"options": {"ftol": 1e-6}})
        return model, x

    @staticmethod
    def _hyperparameters(model) -> dict:
        """The GP's raw hyperparameters as plain lists (JSON), to warm-start the next fit."""
        return {n: p.detach().tolist() for n, p in model.named_parameters()}

    def _bounds(self, d: int | None = None) -> torch.Tensor:
        d = d or self.dim
        return torch.stack([torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)])

    def _full(self, x: torch.Tensor) -> torch.Tensor:
        """θ rows [n, dim] as GP inputs: the fidelity column at 1 (the full fine-tune) when there is one."""
        if not self.fidelity_epochs:
            return x
        return torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype)], dim=-1)

    def _acquisition(self, model, x: torch.Tensor, q: int, pending: torch.Tensor | None):
        from botorch.acquisition import LogExpectedImprovement, UpperConfidenceBound
        from botorch.acquisition.logei import qLogExpectedImprovement, qLogNoisyExpectedImprovement
        from botorch.acquisition.monte_carlo import qUpperConfidenceBound

        batch = q > 1 or pending is not None
        if self.acquisition == "ucb":
            return qUpperConfidenceBound(model, beta=self.beta, X_pending=pending) if batch else \
                UpperConfidenceBound(model, beta=self.beta)
        thetas = torch.unique(x[:, :self.dim], dim=0)
        if self.acquisition == "qlognei":
            return qLogNoisyExpectedImprovement(model, X_baseline=self._full(thetas), prune_baseline=True,
                                                X_pending=pending)
        with torch.no_grad():  # noisy scores: improve on the best posterior mean, not the luckiest observation
            best_f = model.posterior(self._full(thetas)).mean.max()
        return qLogExpectedImprovement(model, best_f=best_f, X_pending=pending) if batch else \
            LogExpectedImprovement(model, best_f=best_f)

    def _bo(self, records: Sequence[dict], t: int, q: int,
            pending: Sequence[np.ndarray]) -> tuple[list[tuple[np.ndarray, str]], dict | None]:
        """``q`` GP proposals for trials t, t+1, … (Sobol points while fewer than 2 trials have scores), and the
        fitted hyperparameters."""
        sobol = [(self._sobol(t + i), "sobol") for i in range(q)]
        if sum(r["status"] != "failed" for r in records) < 2:
            return sobol, None
        with torch.random.fork_rng(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # botorch's import warns about torch.jit; fits warn about conditioning
            from botorch.optim import optimize_acqf

            torch.manual_seed(self.seed * 1_000_003 + t)
            try:
                model, x = self._fit_gp(records)
                pend = self._full(torch.tensor(np.array(pending), dtype=torch.float64)) if len(pending) else None
                fixed = {self.dim: 1.0} if self.fidelity_epochs else None
                cand, _ = optimize_acqf(self._acquisition(model, x, q, pend), bounds=self._bounds(x.shape[-1]),
                                        q=q, num_restarts=self.num_restarts, raw_samples=self.raw_samples,
                                        fixed_features=fixed, sequential=q > 1)
            except Exception:  # a numerically singular GP must not end the search
                return [(theta, "sobol-fallback") for theta, _ in sobol], None
        cand = cand.detach()[:, :self.dim]
        taken = torch.cat([x[:, :self.dim], *([pend[:, :self.dim]] if pend is not None else [])])
        out = []
        for i in range(q):
            if torch.cdist(cand[i:i + 1], taken).min() < 1e-6:  # already evaluated: explore instead
                out.append(sobol[i][:1] + ("sobol-duplicate",))
            else:
                out.append((cand[i].numpy(), "bo"))
        return out, self._hyperparameters(model)

    def posterior_best(self) -> dict | None:
        """The full-length trial with the highest GP posterior mean (the winner's curse: the best *observed*
        score of many noisy trials is optimistic); the best observed one when a GP cannot be fitted."""
        ranked = self.ranked("posterior")
        return ranked[0] if ranked else None

    def ranked(self, select: str = "best") -> list[dict]:
        """The full-length trials, best first: by observed score (``best``; ties in trial order, so the first is
        :meth:`best`), or by GP posterior mean (``posterior``; by observed score when no GP can be fitted)."""
        ok = self.ok_trials()
        by_score = sorted(ok, key=lambda r: -r["score"])
        if select == "best" or len(ok) < 3:  # a GP needs 3 points
            return by_score
        with torch.random.fork_rng(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(self.seed * 1_000_003 + self.num_trials)
            try:
                model, _ = self._fit_gp(self.history)
                xs = self._full(torch.tensor([r["params"] for r in ok], dtype=torch.float64))
                with torch.no_grad():
                    mean = model.posterior(xs).mean.squeeze(-1)
            except Exception:
                return by_score
        order = np.argsort(-mean.numpy(), kind="stable")  # ties: the first trial, as torch.argmax
        return [ok[i] for i in order]
