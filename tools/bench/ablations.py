"""The paper's ablations on one finished run (issue 6), reusing its θ0 and feature store.

    python tools/bench/ablations.py [--run runs/bench/noisy_labels/noise0.4_seed0]
        [--config configs/bench_fmnist.yaml] [--fidelity-trials 10] [--fidelity-epochs 10]

1. Search: best-so-far validation score per trial for cgf + BO (the run itself), cdf + BO and cgf + random
   search (Fig 3 style) → docs/results/ablation_search.png.
2. Inner-loop fidelity (Tab 4 style): the last K samplers of the run's search are each trained from scratch
   for ``--fidelity-epochs`` epochs; Spearman rank correlation (SR) between their fine-tune scores and their
   from-scratch validation accuracy, and top rank (TR: the from-scratch rank, 1 = best, of the sampler the
   fine-tune score ranked first).
3. Segments S ∈ {2, 4, 6} of φ: search + final at the run's budget (S = 4 is the run itself).
Each variant lives in its own folder next to the run (copies of index, pretrain and features); everything
resumes. Prints one JSON object per result; writes docs/results/ablations.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED = ("index.json", "pretrain", "features", "noise.json", "data_errors.json")


def emit(row: dict) -> dict:
    print(json.dumps({"bench": "ablations", **row}), flush=True)
    return row


def variant(run: Path, name: str, config: str, overrides: list[str]):
    """A pipeline in ``<run>_<name>`` sharing the run's θ0 and features (copied once)."""
    from swift_scale.config import load_config
    from swift_scale.pipeline import Pipeline
    from swift_scale.run_folder import RunFolder

    base = json.loads((run / "summary.json").read_text())
    out = run.parent / f"{run.name}_{name}"
    cfg = load_config(config, [f"run.out_dir={out}", f"seed={base['seed']}", f"data.noise_rate={base['noise_rate']}",
                               *overrides])
    RunFolder(cfg).create()  # a run folder (config.yaml first), then the shared phases copied in
    for item in SHARED:
        src, dst = run / item, out / item
        if src.exists() and not dst.exists():
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    return Pipeline(cfg)


def best_so_far(history: Path) -> list[float]:
    scores = [json.loads(line)["score"] for line in history.read_text().splitlines() if line.strip()]
    out, best = [], -np.inf
    for s in scores:
        best = max(best, s if s is not None else -np.inf)
        out.append(best)
    return out


def spearman(a, b) -> float:
    ra, rb = (np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(float) for x in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(ROOT / "runs" / "bench" / "noisy_labels" / "noise0.4_seed0"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "bench_fmnist.yaml"))
    ap.add_argument("--fidelity-trials", type=int, default=10)
    ap.add_argument("--fidelity-epochs", type=int, default=10)
    ap.add_argument("--segments", type=int, nargs="+", default=[2, 6])
    ap.add_argument("--results", default=str(ROOT / "docs" / "results"))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--parts", nargs="+", default=["search", "fidelity", "segments"],
                    choices=["search", "fidelity", "segments"])
    ap.add_argument("--fidelity-pick", choices=["last", "spread"], default="last",
                    help="the last K finished trials, or K spread evenly over the search (less clustered)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    os.chdir(ROOT)
    run = Path(args.run)
    if not (run / "summary.json").exists():
        sys.exit(f"{run}: not a finished run; run tools/bench/noisy_labels.py (or swift-scale run) first")
    results: dict = {"run": str(run)}

    if "search" in args.parts:
        results["search"] = _search_ablation(run, args)
    if "fidelity" in args.parts:
        results["fidelity"] = _fidelity(run, args)
    if "segments" in args.parts:
        results["segments"] = _segments(run, args)
    Path(args.results).mkdir(parents=True, exist_ok=True)
    (Path(args.results) / "ablations.json").write_text(json.dumps(results, indent=1))


def _search_ablation(run: Path, args) -> dict:
    """1. search strategies / transforms: best-so-far curves."""
    curves = {"cgf + BO": best_so_far(run / "search" / "history.jsonl")}
    for label, name, ov in (("cdf + BO", "cdf", ["sampler.transform=cdf"]),
                            ("cgf + random", "random", ["search.strategy=random"])):
        pipe = variant(run, name, args.config, ov)
        pipe.run(until="search")
        curves[label] = best_so_far(pipe.dir / "search" / "history.jsonl")
    for label, c in curves.items():
        emit({"ablation": "search", "variant": label, "best_so_far": c, "final_best": c[-1]})
    _plot_search(curves, Path(args.results) / "ablation_search.png")
    return curves


def _fidelity(run: Path, args) -> dict:
    """2. inner-loop fidelity: fine-tune score vs from-scratch val accuracy (SR, TR)."""
    from swift_scale.pipeline import Pipeline  # noqa: F401  (variant() imports it too)

    pipe = variant(run, f"fidelity{args.fidelity_epochs}", args.config, [f"train.epochs={args.fidelity_epochs}"])
    pipe.prepare_dir()
    history = [json.loads(x) for x in (run / "search" / "history.jsonl").read_text().splitlines() if x.strip()]
    ok = [r for r in history if r["status"] == "ok"]
    if args.fidelity_pick == "spread":
        last = [ok[int(i)] for i in np.unique(np.linspace(0, len(ok) - 1, args.fidelity_trials).round())]
    else:
        last = ok[-args.fidelity_trials:]
    search = pipe.sampler_search()
    feats = search.feats
    inner, full = [], []
    for r in last:
        probs = search.sampler(r["params"]).probs(feats)
        m = pipe.train_with(probs, pipe.dir / "fidelity" / f"trial{r['trial']:04d}", f"fidelity {r['trial']}")
        best = m.get("best", m)  # the best-val checkpoint: what the final phase reports (early stopping)
        inner.append(r["score"])
        full.append(best["val"]["accuracy"])
        emit({"ablation": "fidelity", "trial": r["trial"], "finetune_score": r["score"],
              "scratch_val_accuracy": best["val"]["accuracy"], "scratch_test_accuracy": best["test"]["accuracy"],
              "last_epoch_val_accuracy": m["val"]["accuracy"]})
    order = np.argsort(-np.asarray(full), kind="stable")
    top_rank = int(np.where(order == int(np.argmax(inner)))[0][0]) + 1
    return emit({"ablation": "fidelity", "samplers": len(last), "epochs": args.fidelity_epochs,
                 "pick": args.fidelity_pick, "spearman": spearman(inner, full), "top_rank": top_rank})


def _segments(run: Path, args) -> dict:
    """3. segments S of φ: search + final at the run's budget."""
    base = json.loads((run / "summary.json").read_text())
    seg = {4: base["swift"]["value"]}
    for s in args.segments:
        pipe = variant(run, f"S{s}", args.config, [f"sampler.segments={s}"])
        seg[s] = pipe.run(until="final")["swift"]["value"]
    for s in sorted(seg):
        emit({"ablation": "segments", "segments": s, "swift_test_accuracy": seg[s],
              "uniform_test_accuracy": base["baseline"]["value"]})
    return {str(k): v for k, v in sorted(seg.items())}


def _plot_search(curves: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, c in curves.items():
        ax.plot(range(1, len(c) + 1), np.asarray(c) * 100, label=label, marker=".")
    ax.set_xlabel("trial")
    ax.set_ylabel("best validation accuracy so far (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
