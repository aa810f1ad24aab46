"""``swift-scale report RUN_DIR``: PNG plots and ``report/report.md`` from a run folder (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from swift_scale.features.store import FeatureStore
from swift_scale.io import FileError, atomic_write_text, read_json, read_jsonl
from swift_scale.sampler.swift import SwiftSampler, kept_share

__all__ = ["write_report", "PLOTS"]

PLOTS = ("sampler_heatmap.png", "prob_vs_loss.png", "search_progress.png", "training_curves.png")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    tmp.replace(path)


def plot_heatmap(sampler: SwiftSampler, feats: dict, flipped: np.ndarray | None, path: Path) -> None:
    """Sampling probability over (feature 1, feature 2) percentile space, noisy examples overlaid (paper Fig 1)."""
    plt = _plt()
    a, b = sampler.feature_names
    pct = sampler.percentiles(feats)
    fa, fb = pct[a], pct[b]
    w = sampler.weights_of(feats)
    bins = 24
    ia = np.minimum((fa * bins).astype(int), bins - 1)
    ib = np.minimum((fb * bins).astype(int), bins - 1)
    cell = ia * bins + ib
    wsum = np.bincount(cell, weights=w, minlength=bins * bins)
    cnt = np.bincount(cell, minlength=bins * bins)
    mean_w = np.where(cnt > 0, wsum / np.maximum(cnt, 1), np.nan).reshape(bins, bins)
    fig, axes = plt.subplots(1, 2 if flipped is not None and len(flipped) else 1, figsize=(11, 4.5), squeeze=False)
    im = axes[0, 0].imshow(mean_w.T / np.nanmax(mean_w), origin="lower", extent=(0, 1, 0, 1), cmap="viridis",
                           aspect="auto")
    axes[0, 0].set(xlabel=f"{a} percentile", ylabel=f"{b} percentile", title="learned sampling weight (max = 1)")
    fig.colorbar(im, ax=axes[0, 0])
    if flipped is not None and len(flipped):
        noisy = np.zeros(len(w), dtype=bool)
        noisy[flipped] = True
        frac = np.where(cnt > 0, np.bincount(cell, weights=noisy, minlength=bins * bins) / np.maximum(cnt, 1), np.nan)
        im2 = axes[0, 1].imshow(frac.reshape(bins, bins).T, origin="lower", extent=(0, 1, 0, 1), cmap="magma",
                                aspect="auto", vmin=0, vmax=1)
        axes[0, 1].set(xlabel=f"{a} percentile", ylabel=f"{b} percentile", title="fraction of flipped labels")
        fig.colorbar(im2, ax=axes[0, 1])
    _save(fig, path)


def plot_prob_vs_loss(sampler: SwiftSampler, feats: dict, flipped, path: Path) -> None:
    """Sampling probability against the percentile of the sampler's first feature (paper Fig 2b)."""
    plt = _plt()
    name = sampler.feature_names[0]
    pct = sampler.percentiles(feats)[name]
    p = sampler.probs(feats) * len(pct)
    fig, ax = plt.subplots(figsize=(6, 4))
    order = np.argsort(pct)
    ax.scatter(pct[order], p[order], s=3, alpha=0.4, label="examples")
    if flipped is not None and len(flipped):
        ax.scatter(pct[flipped], p[flipped], s=3, alpha=0.4, color="tab:red", label="flipped labels")
    ax.axhline(1.0, color="gray", lw=0.8, ls="--", label="uniform")
    ax.set(xlabel=f"{name} percentile", ylabel="probability × N", title=f"learned sampler vs {name}")
    ax.legend(loc="best", fontsize=8)
    _save(fig, path)


def plot_search(history: list[dict], path: Path) -> None:
    """Score per trial and best so far (paper Fig 3)."""
    plt = _plt()
    trials = [r["trial"] for r in history if r["status"] == "ok"]
    scores = [r["score"] for r in history if r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(trials, scores, s=12, label="trial score (val)")
    stopped = [(r["trial"], r["score"]) for r in history if r["status"] == "stopped"]
    if stopped:  # early-stopped trials: their score after the rung epoch they reached
        ax.scatter(*zip(*stopped), s=12, marker="x", color="tab:gray", label="stopped early (score at its rung)")
    if scores:
        ax.plot(trials, np.maximum.accumulate(scores), color="tab:green", label="best so far")
    else:
        ax.text(0.5, 0.5, "no search in this run (sampler transferred)", ha="center", transform=ax.transAxes)
    if history and history[0]["status"] == "ok":
        ax.axhline(history[0]["score"], color="gray", ls="--", lw=0.8, label="uniform (trial 0)")
    ax.set(xlabel="trial", ylabel="validation score after fine-tune", title="search")
    ax.legend(loc="best", fontsize=8)
    _save(fig, path)


def plot_curves(pre: dict, fin: dict, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, m in (("uniform", pre), ("swift sampler", fin)):
        curve = m.get("curve", [])
        ep = [r["epoch"] for r in curve]
        axes[0].plot(ep, [r["train_loss"] for r in curve], label=name)
        if curve and "test_accuracy" in curve[0]:
            axes[1].plot(ep, [r["test_accuracy"] for r in curve], label=name)
    axes[0].set(xlabel="epoch", ylabel="train loss (sampled batches)", title="training loss")
    axes[1].set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    for ax in axes:
        ax.legend(fontsize=8)
    _save(fig, path)


def write_report(run_dir: str | Path) -> Path:
    """Write the PNGs and ``report.md`` under ``RUN_DIR/report``; returns the markdown path."""
    run_dir = Path(run_dir)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    fix = f"rerun `swift-scale run` on {run_dir} to rewrite it"
    summary = read_json(run_dir / "summary.json", fix) if (run_dir / "summary.json").exists() else {}
    if not isinstance(summary, dict):
        raise FileError(f"{run_dir / 'summary.json'}: not a summary (a JSON object); {fix}")
    chosen = summary.get("chosen_round", 1)  # search.rounds > 1: the report shows the round that was kept
    src = run_dir / f"round{chosen}" if chosen > 1 else run_dir
    sampler = SwiftSampler.load(src / "sampler.json")
    store = FeatureStore(src / "features")
    feats = {n: np.ascontiguousarray(store.column(n)) for n in store.feature_names}
    noise = run_dir / "noise.json"
    flipped = np.asarray(read_json(noise, fix)["flipped_ids"], dtype=np.int64) if noise.exists() else None
    history = read_jsonl(src / "search" / "history.jsonl")
    pre = read_json(run_dir / "pretrain" / "metrics.json", fix)
    fin = read_json(src / "final" / "metrics.json", fix)
    plot_heatmap(sampler, feats, flipped, out / PLOTS[0])
    plot_prob_vs_loss(sampler, feats, flipped, out / PLOTS[1])
    plot_search(history, out / PLOTS[2])
    plot_curves(pre, fin, out / PLOTS[3])
    p = sampler.probs(feats)
    lines = [
        f"# swift_scale report: {run_dir.name}",
        "",
        "| | uniform (baseline) | swift sampler |",
        "|---|---|---|",
        f"| test accuracy, last epoch | {pre['test']['accuracy']:.4f} | {fin['test']['accuracy']:.4f} |",
        f"| val accuracy, last epoch | {pre['val']['accuracy']:.4f} | {fin['val']['accuracy']:.4f} |",
        *([f"| test accuracy, best-val checkpoint (epoch {pre['best']['epoch']} / {fin['best']['epoch']}) | "
           f"{pre['best']['test']['accuracy']:.4f} | {fin['best']['test']['accuracy']:.4f} |"]
          if "best" in pre and "best" in fin else []),
        *([f"| test perplexity | {pre['test']['perplexity']:.2f} | {fin['test']['perplexity']:.2f} |",
           f"| val perplexity | {pre['val']['perplexity']:.2f} | {fin['val']['perplexity']:.2f} |"]
          if "perplexity" in pre["test"] else []),
        "",
        f"- dataset: `{summary.get('dataset', '?')}`, model `{summary.get('model', '?')}`, "
        f"noise rate {summary.get('noise_rate', 0)}",
        f"- search: {len(history)} trials ({sum(r['status'] == 'stopped' for r in history)} stopped early), best "
        f"full-length val score {max((r['score'] for r in history if r['status'] == 'ok'), default=float('nan')):.4f}"
        f" (uniform: {history[0]['score'] if history else float('nan')})",
        f"- sampler: {sampler.describe()}",
        f"- share of training examples with probability < 0.1 × uniform: {1 - kept_share(p):.3f}",
    ]
    if summary.get("noise_detection_auroc") is not None:
        lines.append(f"- noise detection AUROC (1 − p vs flipped labels): {summary['noise_detection_auroc']:.3f}")
    for r in summary.get("rounds", []):
        auroc = "" if r.get("noise_detection_auroc") is None else f", AUROC {r['noise_detection_auroc']:.3f}"
        lines.append(f"- round {r['round']}{' (kept: highest final val)' if r['round'] == chosen else ''}: final "
                     f"val score {r['val_score']:.4f}, test {r['value']:.4f}{auroc}")
    lines += ["", *(f"![{name}]({name})" for name in PLOTS), ""]
    md = out / "report.md"
    atomic_write_text(md, "\n".join(lines))
    return md
