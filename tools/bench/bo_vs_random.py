"""Benchmark: the search engine's BO against random search on standard test functions in [0, 1]^10.

    python tools/bench/bo_vs_random.py [--seeds 10] [--trials 20] [--functions quadratic hartmann6 levy10 ...]
        [--acquisition logei] [--n-init 4] [--num-restarts 8] [--raw-samples 256] [--procs 1]
        [--batch Q]

Each function is maximised (the negated BoTorch test function on its usual domain, mapped from the unit cube;
hartmann6 uses the first 6 of the 10 coordinates, the rest are inert). Both strategies go through the real
:class:`~swift_scale.search.engine.SearchEngine` with the same first point (the Swift sampler's uniform θ) and
the same Sobol points, so they differ only after ``n_init``. One JSON line per (function, strategy) with the best
value after ``--trials`` trials for every seed, then one summary line per function: mean ± std of each, BO's
wins out of the seeds, and the gap in units of random search's spread.

``--batch Q`` runs the search as a trial-parallel, overlapped one does (``search.overlap``, W = Q processes):
rounds of Q trials, each round proposed from the trials finished *before the previous round* with the previous
round's Q trials as pending points (the helper computes it while that round trains); ``--batch 1`` is the
default one-process search (one pending trial).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def functions() -> dict:
    from botorch.test_functions import Ackley, Hartmann, Levy, Rosenbrock, StyblinskiTang

    def scaled(fn, lo, hi, dims=10):
        def f(x):
            z = torch.as_tensor(np.asarray(x[:dims]) * (hi - lo) + lo, dtype=torch.float64)
            return -float(fn(z.unsqueeze(0)))
        return f

    target = np.linspace(0.15, 0.85, 10)
    return {
        "quadratic": lambda x: -float(np.sum((np.asarray(x) - target) ** 2)),
        "hartmann6": scaled(Hartmann(dim=6), 0.0, 1.0, dims=6),
        "levy10": scaled(Levy(dim=10), -10.0, 10.0),
        "rosenbrock10": scaled(Rosenbrock(dim=10), -5.0, 10.0),
        "styblinski10": scaled(StyblinskiTang(dim=10), -5.0, 5.0),
        "ackley10": scaled(Ackley(dim=10), -5.0, 10.0),
    }


def best_of(f, strategy: str, seed: int, args) -> float:
    from swift_scale.sampler.swift import UNIFORM_THETA
    from swift_scale.search.driver import overlapped_inputs
    from swift_scale.search.engine import SearchEngine

    with tempfile.TemporaryDirectory() as d:
        engine = SearchEngine(Path(d) / "h.jsonl", strategy=strategy, seed=seed, n_init=args.n_init,
                              acquisition=args.acquisition, num_restarts=args.num_restarts,
                              raw_samples=args.raw_samples, initial=[UNIFORM_THETA])
        while engine.num_trials < args.trials:
            n = engine.num_trials
            if not args.batch:
                trials = [engine.ask()]
            else:  # the previous round (already told) stands in for the round still training
                observed, pending = overlapped_inputs(engine.history, n, args.batch)
                trials = engine.ask_batch(min(args.batch, args.trials - n), observed=observed, pending=pending)
            for trial in trials:
                engine.tell(trial, f(trial.theta), persist=False)
        return engine.best()["score"]


def _one(name: str, strategy: str, seed: int, args) -> float:
    torch.set_num_threads(1)  # a 20-point GP gains nothing from threads; processes share the cores instead
    warnings.simplefilter("ignore")
    return best_of(functions()[name], strategy, seed, args)


def best_values(name: str, strategy: str, seeds: range, args, procs: int = 1) -> list[float]:
    """The best value of each seed's search, the seeds spread over ``procs`` spawned processes (each search is
    a pure function of its seed, so the values do not depend on ``procs``)."""
    jobs = [(name, strategy, seed, args) for seed in seeds]
    if procs <= 1:
        return [_one(*job) for job in jobs]
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        return pool.starmap(_one, jobs)


def paired_lead(name: str, args, seeds: range = range(10), procs: int = 2) -> tuple[np.ndarray, np.ndarray, float]:
    """BO's and random search's best value for every seed, and the paired t-statistic of BO's lead over them."""
    import math

    bo = np.array(best_values(name, "bo", seeds, args, procs=procs))
    rnd = np.array(best_values(name, "random", seeds, args))
    lead = bo - rnd
    return bo, rnd, float(lead.mean() / (lead.std(ddof=1) / math.sqrt(len(lead))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--functions", nargs="+", default=["quadratic", "hartmann6", "levy10", "rosenbrock10"])
    ap.add_argument("--acquisition", default="logei")
    ap.add_argument("--n-init", type=int, default=4)
    ap.add_argument("--num-restarts", type=int, default=8)
    ap.add_argument("--raw-samples", type=int, default=256)
    ap.add_argument("--procs", type=int, default=1, help="processes the seeds are spread over")
    ap.add_argument("--batch", type=int, default=0, metavar="Q",
                    help="rounds of Q overlapped trials (see above); 0: one trial at a time, nothing pending")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    for name in args.functions:
        result = {}
        for strategy in ("bo", "random"):
            t0 = time.time()
            best = best_values(name, strategy, range(args.seeds), args, args.procs)
            result[strategy] = np.asarray(best)
            print(json.dumps({"bench": "bo_vs_random", "function": name, "strategy": strategy,
                              "acquisition": args.acquisition if strategy == "bo" else None, "trials": args.trials,
                              "batch": args.batch,
                              "best": [round(b, 4) for b in best], "seconds": round(time.time() - t0, 1)}),
                  flush=True)
        bo, rnd = result["bo"], result["random"]
        print(json.dumps({"bench": "bo_vs_random", "function": name, "summary": True, "seeds": args.seeds,
                          "trials": args.trials, "acquisition": args.acquisition,
                          "batch": args.batch,
                          "bo_mean": round(float(bo.mean()), 4), "bo_std": round(float(bo.std()), 4),
                          "random_mean": round(float(rnd.mean()), 4), "random_std": round(float(rnd.std()), 4),
                          "bo_wins": int((bo > rnd).sum()),
                          "gap_in_random_stds": round(float((bo.mean() - rnd.mean()) / max(rnd.std(), 1e-12)), 2)}),
              flush=True)


if __name__ == "__main__":
    main()
