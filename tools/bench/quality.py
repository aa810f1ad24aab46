"""Benchmark: the learned sampler's final model against what a user gets for free, over seeds.

    python tools/bench/quality.py --config CONFIG [--seeds 0 1 2] [--name NAME] [--out runs/bench/quality]
        [--rules clean drop_top_loss:rate] [--final-modes finetune best_trial] [--reuse NAME] [key=value ...]
    python tools/bench/quality.py --table runs/bench/quality/NAME.jsonl [--table ...]   (markdown from saved output)

For every seed it runs the whole pipeline (``CONFIG`` plus the overrides) into ``OUT/NAME/seedS`` and reports,
test accuracy (or perplexity) in %:
- ``uniform`` — the pretraining: its last epoch and its best-val epoch (plain early stopping);
- ``swift`` — the final model under the learned sampler: last epoch and best-val epoch, the sampler's
  noise-detection AUROC (1 − p against the flipped ids), its share of examples below 0.1× uniform, the share of
  draws that go to flipped labels, and the search's winner's-curse gap;
- each ``--rules`` entry at the same budget: ``clean`` (the oracle: train on the clean ids only),
  ``drop_top_loss:rate`` (told the true noise rate), ``drop_top_loss:F``;
- each ``--final-modes`` entry: the final phase redone on the same search with ``train.final_mode`` set, in a
  copy of the run folder (the ablation of the final mode).

Nothing is chosen on test. One JSON line per (seed, method), then one summary line per method (mean ± std);
with ``--table`` the markdown rows. Runs resume (finished run folders are read back).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from benchstats import mean_std
from step_cut import best_cut, oriented

ROOT = Path(__file__).resolve().parents[2]


def pct(x):
    return None if x is None else round(100 * x, 2)


def sampler_stats(pipe) -> dict:
    """AUROC, the share of examples below 0.1× uniform, and the share of draws that land on flipped labels."""
    from swift_scale.report.metrics import noise_auroc
    from swift_scale.sampler.swift import SwiftSampler, kept_share

    noisy = pipe.data.noisy_ids
    sampler, feats = SwiftSampler.load(pipe.dir / "sampler.json"), pipe.train_features()
    p = sampler.probs(feats)
    out = {"share_below_0.1x": round(1 - kept_share(p), 3)}
    if len(noisy):
        out.update(auroc=round(noise_auroc(p, noisy), 3), noisy_draw_share=round(float(p[noisy].sum()), 3))
        out.update(ranking_auroc(sampler.score(feats), p, noisy))
    return out


def ranking_auroc(score: np.ndarray, p: np.ndarray, noisy: np.ndarray) -> dict:
    """How well the sampler's aggregated score s (what φ is applied to) ranks the noisy examples, oriented as φ
    is (s against p), and the best AUROC any step φ on s could reach (a step ties every example on each side, so
    its AUROC is its balanced accuracy ½(1 + TPR − FPR)): why a sharp φ caps the AUROC of 1 − p."""
    from swift_scale.report.metrics import noise_auroc

    s = oriented(score, p)  # low s ↔ low p
    flagged = np.zeros(len(s), bool)
    flagged[noisy] = True
    step = best_cut(s, flagged, np.linspace(0.01, 0.99, 99))["balanced_accuracy"]
    return {"score_auroc": round(noise_auroc(s, noisy), 3), "best_step_auroc": round(step, 3)}


def run_seed(args, seed: int) -> list[dict]:
    from swift_scale.config import load_config
    from swift_scale.pipeline import Pipeline

    out = Path(args.out) / args.name / f"seed{seed}"
    overrides = [f"run.out_dir={out}", f"seed={seed}", "train.progress=false", *args.overrides]
    if args.reuse and not out.exists():  # the same pretraining and features: start from that run's copy
        src = Path(args.out) / args.reuse / f"seed{seed}"
        if not (src / "features" / "meta.json").exists():
            sys.exit(f"--reuse {args.reuse}: {src} has no finished features phase")
        redo = ("features",) if any(o.startswith("features.") for o in args.overrides) else ()  # its config changed
        # the later rounds start from round 1's final model: none of them is kept
        shutil.copytree(src, out, ignore=shutil.ignore_patterns("search", "sampler.json", "final", "report", "rules",
                                                                 "summary.json", "*_final_*", "round[0-9]*", *redo))
        timings = json.loads((out / "seconds.json").read_text())  # only the copied phases' times stay
        (out / "seconds.json").write_text(json.dumps({k: v for k, v in timings.items()
                                                      if k in ("index", "pretrain", "features")
                                                      and k not in redo}))
    if args.reuse:
        overrides.append("run.allow_changed_config=true")
    cfg = load_config(args.config, overrides)
    t0 = time.time()
    pipe = Pipeline(cfg)
    summary = pipe.run()
    metric = summary["baseline"]["metric"]
    scale = pct if metric == "test_accuracy" else (lambda v: None if v is None else round(v, 2))
    base, sw = summary["baseline"], summary["swift"]
    val = metric.replace("test_", "val_")
    rows = [{"method": "uniform", "last": scale(base["value"]), "best_val": scale(base["best_val"][metric]),
             "best_epoch": base["best_val"]["epoch"], "best_val_val": scale(base["best_val"][val])},
            {"method": "swift", "last": scale(sw["last"][metric]), "best_val": scale(sw["best_val"][metric]),
             "best_epoch": sw["best_val"]["epoch"], "best_val_val": scale(sw["best_val"][val]),
             "search_best": summary["search"]["best_score"],
             "uniform_trial": summary["search"]["uniform_score"], "optimism": summary["search"].get("optimism"),
             "chosen_kept": summary["search"].get("chosen_kept"),
             **sampler_stats(pipe if summary.get("chosen_round", 1) == 1 else pipe.round_pipeline(summary["chosen_round"])),
             "seconds": round(sum(summary["seconds"].values()), 1)}]
    if "rounds" in summary:  # search.rounds > 1: every round's final val and test, and which one was chosen
        rows[1].update(chosen_round=summary["chosen_round"],
                       rounds=[{"round": e["round"], "val": scale(e["val_score"]) if metric == "test_accuracy"
                                else e["val_score"], "test": scale(e["value"]), "auroc": e["noise_detection_auroc"]}
                               for e in summary["rounds"]])
    for rule in args.rules:
        spelled = rule.replace("rate", f"{cfg.data.noise_rate:g}")
        if "drop_top_loss" in spelled and cfg.data.noise_rate == 0 and "rate" in rule:
            continue
        if spelled == "clean" and cfg.data.noise_rate == 0:
            continue
        m = pipe.rule(spelled)
        rows.append({"method": rule, "last": scale(m["test"][metric.split("_", 1)[1]]),
                     "best_val": scale(m["best"]["test"][metric.split("_", 1)[1]])})
    pipe.acc.end_training()
    for mode in args.final_modes:
        rows.append(final_mode(args, cfg, out, mode, metric, scale))
    for r in rows:
        r.update(bench="quality", name=args.name, seed=seed, run_seconds=round(time.time() - t0, 1))
    return rows


def final_mode(args, cfg, out: Path, mode: str, metric: str, scale) -> dict:
    """The final phase redone with ``train.final_mode=mode`` on a copy of the run folder (same search)."""
    from swift_scale.config import load_config
    from swift_scale.pipeline import Pipeline

    dst = out.parent / f"{out.name}_final_{mode}"
    if not (dst / "summary.json").exists():  # a new round-1 final model: the later rounds are redone too
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(out, dst, ignore=shutil.ignore_patterns("final", "report", "summary.json", "rules",
                                                                "round[0-9]*"))
    overrides = [f"run.out_dir={dst}", f"seed={cfg.seed}", "train.progress=false", *args.overrides,
                 f"train.final_mode={mode}", "run.allow_changed_config=true"]
    pipe = Pipeline(load_config(args.config, overrides))
    s = pipe.run()
    pipe.acc.end_training()
    return {"method": f"swift final_mode={mode}", "last": scale(s["swift"]["last"][metric]),
            "best_val": scale(s["swift"]["best_val"][metric]),
            "best_val_val": scale(s["swift"]["best_val"][metric.replace("test_", "val_")])}


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        line = {"bench": "quality", "summary": True, "name": mine[0]["name"], "method": method,
                "seeds": [r["seed"] for r in mine]}
        for key in ("last", "best_val", "best_val_val", "auroc", "share_below_0.1x", "noisy_draw_share", "optimism"):
            if (stats := mean_std(r.get(key) for r in mine)) is not None:
                line[key] = stats
        out.append(line)
    return out


def table(paths: list[str]) -> None:
    """Markdown rows: method | last epoch | best-val checkpoint | AUROC, mean ± std over seeds."""
    print("| run | method | test, last epoch | test, best-val checkpoint | val, best-val checkpoint | noise AUROC | seeds |")
    print("|---|---|---|---|---|---|---|")
    for path in paths:
        rows = [json.loads(x) for x in Path(path).read_text().splitlines() if x.startswith("{")]
        for s in (r for r in rows if r.get("summary")):
            def f(key, s=s):
                v = s.get(key)
                return "—" if v is None else f"{v['mean']:.2f} ± {v['std']:.2f}"

            auroc = "—" if "auroc" not in s else f"{s['auroc']['mean']:.3f}"
            print(f"| {s['name']} | {s['method']} | {f('last')} | {f('best_val')} | {f('best_val_val')} | {auroc} "
                  f"| {len(s['seeds'])} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--name", default="default")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "quality"))
    ap.add_argument("--rules", nargs="*", default=["clean", "drop_top_loss:rate"])
    ap.add_argument("--final-modes", nargs="*", default=[])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--reuse", metavar="NAME", help="copy the pretraining and features of run NAME's seeds (the "
                    "overrides must not change the pretraining; with features.* overrides the features are redone)")
    ap.add_argument("--table", nargs="+", metavar="JSONL")
    # key=value overrides may stand anywhere (also after --seeds, whose nargs would otherwise swallow them)
    argv = sys.argv[1:]
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    args = ap.parse_args([a for a in argv if a not in overrides])
    args.overrides = overrides
    if args.table:
        table(args.table)
        return
    if not args.config:
        sys.exit("give --config")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    os.chdir(ROOT)
    rows = []
    for seed in args.seeds:
        for row in run_seed(args, seed):
            rows.append(row)
            print(json.dumps(row), flush=True)
    for line in summarise(rows):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
