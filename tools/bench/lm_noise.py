"""Benchmark (issue 5): clean held-out perplexity of a GPT trained on text with corrupted sequences,
uniform sampling vs the learned sampler at the same budget.

    python tools/prepare_text_corpus.py kjv data/kjv-small --train-every=4
    python tools/bench/lm_noise.py [--config configs/kjv_gpt_noise30.yaml] [--seeds 0] [key=value ...]

Runs the whole pipeline per seed (resumable; seed 0 uses the config's run folder) and prints one JSON object per
seed plus a mean: test perplexity (the test chapters are never corrupted), the search's scores and wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "kjv_gpt_noise30.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    import torch

    from swift_scale.config import load_config
    from swift_scale.pipeline import Pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    os.chdir(ROOT)
    rows = []
    for seed in args.seeds:
        cfg = load_config(args.config, [f"seed={seed}", *args.overrides])
        if seed != 0:
            cfg.run.name = f"{cfg.run.name}_seed{seed}"
        s = Pipeline(cfg).run()
        row = {"bench": "lm_noise", "config": args.config, "seed": seed, "noise_rate": s["noise_rate"],
               "uniform_test_perplexity": round(s["baseline"]["value"], 3),
               "swift_test_perplexity": round(s["swift"]["value"], 3),
               "relative_change": round(s["swift"]["value"] / s["baseline"]["value"] - 1, 4),
               "uniform_val_perplexity": round(s["baseline"]["val_perplexity"], 3),
               "swift_val_perplexity": round(s["swift"]["val_perplexity"], 3),
               "noise_detection_auroc": s.get("noise_detection_auroc"), "trials": s["search"]["trials"],
               "seconds": round(sum(s["seconds"].values()), 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if len(rows) > 1:
        print(json.dumps({"bench": "lm_noise", "seeds": args.seeds,
                          "uniform_mean": statistics.fmean(r["uniform_test_perplexity"] for r in rows),
                          "swift_mean": statistics.fmean(r["swift_test_perplexity"] for r in rows)}))


if __name__ == "__main__":
    main()
