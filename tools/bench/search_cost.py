"""Benchmark: what the sampler search costs, against one baseline training, and what it finds.

    python tools/bench/search_cost.py --config CONFIG [--seeds 0 1 2] [--out runs/bench/search_cost]
        --variant NAME:PROCS[xTHREADS][:key=value,key=value...] [--variant ...] [--plot FILE.png] [--table FILE.jsonl]

For every seed the first variant runs the whole pipeline (``swift-scale run``, one process unless PROCS > 1);
every other variant copies that run folder's pretraining and features and redoes the search and the final
training with its own overrides on PROCS processes (``torchrun --standalone --nproc_per_node PROCS``), so all
variants search from the same start checkpoint and features. ``xTHREADS`` sets ``OMP_NUM_THREADS`` for the
variant's processes (torchrun gives each of several processes 1 thread; a single process otherwise uses every
core): ``1x1`` against ``2`` measures how trials per second scale with processes at equal threads per process, as
one device per process would. One JSON line per (variant, seed):

- ``search_s`` / ``pretrain_s``: wall time of the search and of the uniform pretraining (the baseline training
  of the first variant's run), and their ratio;
- ``trials``, ``stopped`` (early-stopped trials), ``fine_tune_epochs`` (epochs trained over all trials),
  ``trials_per_s``; ``proposal_wait_s``: time the rounds waited for their proposals (the GP on the critical path);
- ``best_val``: the search's best full-length val score; the final model's val and test accuracy at its
  best-val checkpoint; the learned sampler's noise-detection AUROC;
- ``curve``: (seconds since the search started, best val score so far) after each round (Fig-3 style).

Then one summary line per variant (mean ± std over seeds). ``--plot`` draws best val so far against trials and
against seconds for every variant. Nothing is chosen on test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchstats import mean_std

ROOT = Path(__file__).resolve().parents[2]


def parse_variant(text: str) -> dict:
    name, procs, *rest = text.split(":", 2)
    overrides = [o for o in (rest[0].split(",") if rest else []) if o]
    # a list value (search.rungs=[1,2]) was split at its commas: join the pieces back
    joined: list[str] = []
    for o in overrides:
        if joined and "=" not in o:
            joined[-1] += "," + o
        else:
            joined.append(o)
    procs, _, threads = procs.partition("x")
    return {"name": name, "procs": int(procs), "threads": int(threads) if threads else None, "overrides": joined}


def run_variant(args, variant: dict, seed: int, base: Path | None) -> Path:
    out = Path(args.out) / variant["name"] / f"seed{seed}"
    if (out / "summary.json").exists():
        return out
    if base is not None and not out.exists():
        shutil.copytree(base, out, ignore=shutil.ignore_patterns("search", "sampler.json", "final", "report",
                                                                 "rules", "summary.json"))
        timings = json.loads((out / "seconds.json").read_text())  # only the copied phases' times stay
        (out / "seconds.json").write_text(json.dumps({k: v for k, v in timings.items()
                                                      if k in ("index", "pretrain", "features")}))
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(variant["procs"])] \
        if variant["procs"] > 1 else []
    overrides = [f"run.out_dir={out}", f"seed={seed}", "train.progress=false", *args.overrides,
                 *variant["overrides"], *(["run.allow_changed_config=true"] if base is not None else [])]
    cmd = [sys.executable, *launcher, "-m", "swift_scale.cli", "run", "--config", args.config, *overrides]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(variant["threads"])} if variant["threads"] else {})}
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.exit(f"{variant['name']} seed {seed} failed:\n{res.stderr[-3000:]}")
    return out


def curve(history: list[dict]) -> list[tuple[float, float | None]]:
    """(seconds since the search began, best full-length val score so far) at the end of each round: a round
    lasts its slowest trial plus the time it waited for its proposals."""
    rounds: dict[int, list[dict]] = {}
    for r in history:
        rounds.setdefault(r.get("round", r["trial"]), []).append(r)
    out, t, best = [], 0.0, None
    for k in sorted(rounds):
        recs = rounds[k]
        t += max(r["seconds"] for r in recs) + recs[0].get("proposal_wait", 0.0)
        for r in recs:
            if r["status"] == "ok" and (best is None or r["score"] > best):
                best = r["score"]
        out.append((round(t, 2), best))
    return out


def measure(variant: dict, seed: int, run: Path, pretrain_s: float, finetune_epochs: int) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    seconds = json.loads((run / "seconds.json").read_text())
    history = [json.loads(x) for x in (run / "search" / "history.jsonl").read_text().splitlines() if x.strip()]
    search_s = seconds["search"]
    epochs = sum(r.get("epochs", finetune_epochs) for r in history if r["status"] != "failed")
    bv = summary["swift"]["best_val"]
    return {"bench": "search_cost", "variant": variant["name"], "procs": variant["procs"], "seed": seed,
            "search_s": round(search_s, 2), "pretrain_s": round(pretrain_s, 2),
            "search_over_pretrain": round(search_s / pretrain_s, 3), "trials": len(history),
            "stopped": sum(r["status"] == "stopped" for r in history), "fine_tune_epochs": epochs,
            "trials_per_s": round(len(history) / search_s, 4),
            "proposal_wait_s": round(sum(r.get("proposal_wait", 0.0) for r in history
                                         if r["trial"] == min(x["trial"] for x in history
                                                              if x.get("round") == r.get("round"))), 3),
            "best_val": summary["search"]["best_score"],
            "final_val": bv.get("val_accuracy"), "final_test": bv.get("test_accuracy"),
            "auroc": summary.get("noise_detection_auroc"), "curve": curve(history)}


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name]
        line = {"bench": "search_cost", "summary": True, "variant": name, "procs": mine[0]["procs"],
                "seeds": [r["seed"] for r in mine]}
        for key in ("search_s", "search_over_pretrain", "trials_per_s", "fine_tune_epochs", "stopped",
                    "proposal_wait_s", "best_val", "final_val", "final_test", "auroc"):
            if (stats := mean_std((r.get(key) for r in mine), 4)) is not None:
                line[key] = stats
        out.append(line)
    return out


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, name in enumerate(dict.fromkeys(r["variant"] for r in rows)):
        for r in (r for r in rows if r["variant"] == name):
            ts, best = zip(*[(t, b) for t, b in r["curve"] if b is not None])
            per_round = len(r["curve"])
            trials = [round((k + 1) * r["trials"] / per_round, 2) for k in range(per_round)][-len(best):]
            label = name if r["seed"] == rows[0]["seed"] else None
            ax1.step(trials, best, where="post", color=f"C{i}", alpha=0.7, label=label)
            ax2.step(ts, best, where="post", color=f"C{i}", alpha=0.7, label=label)
    ax1.set(xlabel="trials", ylabel="best val score so far")
    ax2.set(xlabel="search wall time (s)", ylabel="best val score so far")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "search_cost"))
    ap.add_argument("--variant", action="append", default=[], type=parse_variant)
    ap.add_argument("--plot")
    ap.add_argument("--table", nargs="+", metavar="JSONL", help="re-summarise (and --plot) saved output")
    argv = sys.argv[1:]
    overrides = [a for a in argv if "=" in a and not a.startswith("-") and ":" not in a.split("=")[0]]
    args = ap.parse_args([a for a in argv if a not in overrides])
    args.overrides = overrides
    if args.table:
        rows = [json.loads(x) for p in args.table for x in Path(p).read_text().splitlines()
                if x.startswith("{") and '"summary"' not in x]
    else:
        if not args.config or not args.variant:
            sys.exit("give --config and at least one --variant NAME:PROCS[:overrides]")
        from swift_scale.config import load_config

        rows = []
        for seed in args.seeds:
            base = None
            for variant in args.variant:
                run = run_variant(args, variant, seed, base)
                base = base or run
                cfg = load_config(args.config, [*args.overrides, *variant["overrides"]])
                pretrain_s = json.loads((base / "seconds.json").read_text())["pretrain"]
                row = measure(variant, seed, run, pretrain_s, cfg.search.finetune_epochs)
                rows.append(row)
                print(json.dumps(row), flush=True)
    for line in summarise(rows):
        print(json.dumps(line), flush=True)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
