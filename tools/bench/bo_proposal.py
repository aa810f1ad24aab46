"""Benchmark (issue 6): BO proposal time as a fraction of trial time (goal ≤ 1%).

    python tools/bench/bo_proposal.py [--history runs/bench/noisy_labels/noise0.4_seed0/search/history.jsonl]
        [--trials 40] [--num-restarts 8] [--raw-samples 256]

Replays a real search history: for every BO step k it builds the engine on the first k records (as a
restarted search would) and times ``ask()`` (GP fit + optimize_acqf). Trial time is the mean ``seconds`` of
the history's trials. When the history is shorter than ``--trials``, it is extended with synthetic scores
(a smooth function of θ) so the GP cost at the paper's 40 trials is measured too. One JSON object per line.

``--batch Q`` measures instead what the proposal helper of a trial-parallel search (W = Q processes, the default
``search.overlap``) computes per round: ``ask_batch(Q)`` from the trials finished a round earlier, with the
round's Q running trials as pending points, in CPU seconds of one thread (``time.process_time``). On CPU cores
shared with the trainers that CPU is taken from them, which bounds the trials per second of Q processes
against one (whose helper has a core to itself) at Q·c_t / (c_t + c_h / Q) — for Q = 2, 4c_t / (2c_t + c_h) —
with c_t a trial's seconds (the history's mean) and c_h a round's proposal CPU seconds; the line reports that
bound.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--history", default=str(ROOT / "runs/bench/noisy_labels/noise0.4_seed0/search/history.jsonl"))
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--num-restarts", type=int, default=8)
    ap.add_argument("--raw-samples", type=int, default=256)
    ap.add_argument("--batch", type=int, default=0, metavar="Q",
                    help="time a trial-parallel round's proposal (Q candidates, Q pending) instead")
    args = ap.parse_args()
    if args.batch:
        return batch_rounds(args)

    from swift_scale.io import append_jsonl
    from swift_scale.sampler import UNIFORM_THETA
    from swift_scale.search.engine import SearchEngine

    records = [json.loads(x) for x in Path(args.history).read_text().splitlines() if x.strip()]
    trial_seconds = float(np.mean([r["seconds"] for r in records]))
    times = []
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "history.jsonl"
        for k in range(args.trials):
            engine = SearchEngine(path, num_restarts=args.num_restarts, raw_samples=args.raw_samples,
                                  initial=[UNIFORM_THETA])
            t0 = time.perf_counter()
            trial = engine.ask()
            dt = time.perf_counter() - t0
            if trial.proposed_by == "bo":
                times.append(dt)
            if k < len(records):  # replay the recorded point and score
                rec = records[k] | {"trial": k}
            else:
                theta = trial.theta
                rec = {"trial": k, "params": theta.tolist(), "status": "ok", "seconds": trial_seconds,
                       "score": float(0.8 - np.sum((theta - 0.3) ** 2) / 10), "proposed_by": trial.proposed_by}
            append_jsonl(path, rec)
    mean_ask = float(np.mean(times))
    print(json.dumps({"bench": "bo_proposal", "history": args.history, "trials": args.trials,
                      "replayed_trials": min(len(records), args.trials), "bo_proposals": len(times),
                      "mean_proposal_seconds": round(mean_ask, 3), "max_proposal_seconds": round(max(times), 3),
                      "mean_trial_seconds": round(trial_seconds, 2),
                      "fraction_of_trial": round(mean_ask / trial_seconds, 4), "goal_fraction": 0.01}))


def batch_rounds(args) -> None:
    import torch

    from swift_scale.search.engine import SearchEngine

    torch.set_num_threads(1)  # the helper process's setting
    records = [json.loads(x) for x in Path(args.history).read_text().splitlines() if x.strip()]
    q, trial_cpu = args.batch, float(np.mean([r["seconds"] for r in records]))
    engine = SearchEngine(None, dim=len(records[0]["params"]), num_restarts=args.num_restarts,
                          raw_samples=args.raw_samples)
    engine.history = records
    cpu = []
    for start in range(q, min(len(records), args.trials) - q + 1, q):
        if any(r.get("proposed_by") != "bo" for r in records[start:start + q]):
            continue  # the search's fixed first points (uniform, steps, Sobol) cost the helper nothing
        observed, pending = start - q, [np.asarray(r["params"]) for r in records[start - q:start]]
        t0 = time.process_time()
        engine.ask_batch(q, observed=observed, pending=pending)
        cpu.append(time.process_time() - t0)
    c_h = float(np.mean(cpu))
    bound = q * trial_cpu / (trial_cpu + c_h / q)
    print(json.dumps({"bench": "bo_proposal_batch", "history": args.history, "q": q, "rounds": len(cpu),
                      "proposal_cpu_s_mean": round(c_h, 3), "proposal_cpu_s_max": round(max(cpu), 3),
                      "trial_seconds_mean": round(trial_cpu, 2), "proposal_cpu_per_trial": round(c_h / q / trial_cpu, 3),
                      "trials_per_s_ratio_bound_on_q_shared_cores": round(bound, 2), "goal_ratio": 1.8}))


if __name__ == "__main__":
    main()
