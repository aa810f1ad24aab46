"""Benchmark: the embedded demo over several seeds (mean ± std of uniform vs swift sampler test accuracy).

    python tools/bench/demo_seeds.py [--seeds 0 1 2 3 4] [key=value ...]      # e.g. train.schedule=constant

Runs ``swift-scale demo seed=S run.name=demo_<tag>_seedS`` per seed (each run folder resumes if it exists) and
prints one JSON object per seed, then one with the means. One seed takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--tag", default="", help="run-name tag (default: from the overrides)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    tag = args.tag or "_".join(o.split("=")[-1] for o in args.overrides) or "default"
    rows = []
    for seed in args.seeds:
        name = f"demo_{tag}_seed{seed}"
        cmd = [sys.executable, "-m", "swift_scale.cli", "demo", f"seed={seed}", f"run.name={name}",
               "train.progress=false", *args.overrides]
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if res.returncode != 0:
            sys.exit(f"demo seed {seed} failed: {res.stderr.strip().splitlines()[-1]}")
        s = json.loads((ROOT / "runs" / name / "summary.json").read_text())
        row = {"bench": "demo_seeds", "seed": seed, "overrides": args.overrides,
               "uniform_test_accuracy": round(100 * s["baseline"]["value"], 2),
               "swift_test_accuracy": round(100 * s["swift"]["value"], 2),
               "noise_detection_auroc": round(s["noise_detection_auroc"], 3),
               "seconds": round(sum(s["seconds"].values()), 1)}
        row["difference"] = round(row["swift_test_accuracy"] - row["uniform_test_accuracy"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)

    def stats(key):
        values = [r[key] for r in rows]
        return {"mean": round(statistics.fmean(values), 2),
                "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0}

    print(json.dumps({"bench": "demo_seeds", "seeds": args.seeds, "overrides": args.overrides,
                      "uniform": stats("uniform_test_accuracy"), "swift": stats("swift_test_accuracy"),
                      "difference": stats("difference"),
                      "seeds_where_swift_wins": sum(r["difference"] > 0 for r in rows)}))


if __name__ == "__main__":
    main()
