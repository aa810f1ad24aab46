"""Benchmark (issue 6): BO proposal time as a fraction of trial time (goal ≤ 1%).

    python tools/bench/bo_proposal.py [--history runs/bench/noisy_labels/noise0.4_seed0/search/history.jsonl]
        [--trials 40] [--num-restarts 8] [--raw-samples 256]

Replays a real search history: for every BO step k it builds the engine on the first k records (as a
restarted search would) and times ``ask()`` (GP fit + optimize_acqf). Trial time is the mean ``seconds`` of
the history's trials. When the history is shorter than ``--trials``, it is extended with synthetic scores
(a smooth function of θ) so the GP cost at the paper's 40 trials is measured too. One JSON object per line.
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
    args = ap.parse_args()

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


if __name__ == "__main__":
    main()
