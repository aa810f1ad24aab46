"""The noisy-label table (issue 6): uniform vs Swift sampler vs hand rules, several noise rates and seeds.

    python tools/bench/noisy_labels.py [--config configs/bench_fmnist.yaml] [--noise 0 0.2 0.4] [--seeds 0 1 2]
        [--out runs/bench/noisy_labels] [--threads 1]
    python tools/bench/noisy_labels.py --tables-from runs/bench/noisy_labels.jsonl   (tables from saved output)

For every (noise, seed) it runs the whole pipeline (uniform = the pretrain phase, SS = the final phase), then
trains each hand rule at the same budget from the same θ0 features:
  drop_top_loss:<noise>  (knows the true noise rate: an oracle-ish upper bar; skipped at 0% noise)
  drop_top_loss:0.1      (a fixed guess users make without knowing the rate)
  loss_proportional      (importance sampling ∝ θ0 loss)
Runs resume: finished runs and rules are read back. Prints one JSON object per result, then one per
(noise, method) with mean ± std over seeds; writes docs/results/noisy_labels.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "bench_fmnist.yaml"))
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.2, 0.4])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "noisy_labels"))
    ap.add_argument("--results", default=str(ROOT / "docs" / "results"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--tables-from", metavar="JSONL", help="only rebuild the tables from this script's saved output")
    ap.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = ap.parse_args()
    if args.tables_from:
        lines = [json.loads(x) for x in Path(args.tables_from).read_text().splitlines() if x.startswith("{")]
        write_tables([r for r in lines if "method" in r and "test_accuracy" in r], Path(args.results), args.config,
                     [r for r in lines if r.get("event") == "run_done"])
        return

    import torch

    from swift_scale.config import load_config
    from swift_scale.pipeline import Pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    os.chdir(ROOT)  # the config's shard patterns are relative to the repository
    rows, done = [], []
    for noise in args.noise:
        for seed in args.seeds:
            out = Path(args.out) / f"noise{noise:g}_seed{seed}"
            cfg = load_config(args.config, [f"run.out_dir={out}", f"data.noise_rate={noise}", f"seed={seed}",
                                            *args.overrides])
            t0 = time.time()
            pipe = Pipeline(cfg)
            summary = pipe.run()
            rules = {"drop_top_loss:oracle": f"drop_top_loss:{noise:g}"} if noise > 0 else {}
            rules.update({"drop_top_loss:0.1": "drop_top_loss:0.1", "loss_proportional": "loss_proportional"})
            results = {"uniform": summary["baseline"]["value"], "swift": summary["swift"]["value"]}
            for label, rule in rules.items():
                results[label] = pipe.rule(rule)["test"]["accuracy"]
            for method, acc in results.items():
                row = {"bench": "noisy_labels", "noise": noise, "seed": seed, "method": method,
                       "test_accuracy": acc, "run_dir": str(out)}
                rows.append(row)
                print(json.dumps(row), flush=True)
            done.append({"bench": "noisy_labels", "noise": noise, "seed": seed, "event": "run_done",
                         "seconds": round(time.time() - t0, 1),
                         "noise_detection_auroc": summary.get("noise_detection_auroc")})
            print(json.dumps(done[-1]), flush=True)
    write_tables(rows, Path(args.results), args.config, done)


def write_tables(rows: list[dict], results_dir: Path, config: str, runs: list[dict]) -> None:
    """Mean ± std per (noise, method) → JSON lines on stdout, noisy_labels.json and a markdown table."""
    results_dir.mkdir(parents=True, exist_ok=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    noises = sorted({r["noise"] for r in rows})
    agg = []
    for noise in noises:
        for m in methods:
            accs = [r["test_accuracy"] for r in rows if r["noise"] == noise and r["method"] == m]
            if not accs:
                continue
            a = {"bench": "noisy_labels", "noise": noise, "method": m, "n": len(accs),
                 "mean": statistics.fmean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                 "runs": accs}
            agg.append(a)
            print(json.dumps(a), flush=True)
    (results_dir / "noisy_labels.json").write_text(json.dumps({"config": config, "rows": rows, "aggregate": agg,
                                                               "runs": runs}, indent=1))
    head = "| method | " + " | ".join(f"{n:.0%} noise" for n in noises) + " |"
    lines = [head, "|" + "---|" * (len(noises) + 1)]
    for m in methods:
        cells = []
        for noise in noises:
            a = next((x for x in agg if x["noise"] == noise and x["method"] == m), None)
            cells.append(f"{100 * a['mean']:.2f} ± {100 * a['std']:.2f}" if a else "—")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    seeds = {n: sorted({r["seed"] for r in rows if r["noise"] == n}) for n in noises}
    lines.append("| seeds | " + " | ".join(",".join(map(str, seeds[n])) for n in noises) + " |")
    au = {n: [r["noise_detection_auroc"] for r in runs if r["noise"] == n and r.get("noise_detection_auroc")]
          for n in noises}
    lines.append("| SS noise-detection AUROC | " + " | ".join(
        f"{statistics.fmean(au[n]):.2f} ({', '.join(f'{a:.2f}' for a in au[n])})" if au[n] else "—"
        for n in noises) + " |")
    (results_dir / "noisy_labels.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
