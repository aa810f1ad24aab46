"""``swift-scale``: run | index | features | search | train | report | inspect | demo.

User-caused errors (bad config value, missing or corrupt shard, unknown model, empty split) print one line
``swift-scale: error: ...`` naming the field or file and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib import resources
from pathlib import Path

__all__ = ["main"]

EXIT_USAGE = 2


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="experiment YAML (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3 search.trials=10")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="swift-scale", description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="log every trial")
    sub = ap.add_subparsers(dest="command", required=True)
    for name, helptext in (("run", "the whole pipeline into runs/<run.name>/"),
                           ("index", "build the shard table (index.json)"),
                           ("features", "pretrain if needed, then the features pass"),
                           ("search", "everything up to and including the sampler search (sampler.json)")):
        _add_config_args(sub.add_parser(name, help=helptext))
    t = sub.add_parser("train", help="final training with the run's sampler or --sampler FILE")
    _add_config_args(t)
    t.add_argument("--sampler", help="a sampler.json learned elsewhere (e.g. with another model)")
    r = sub.add_parser("report", help="plots and report.md for a finished run folder")
    r.add_argument("run_dir")
    i = sub.add_parser("inspect", help="print a sampler.json in words")
    i.add_argument("sampler")
    d = sub.add_parser("demo", help="the embedded demo: digits, 40%% label noise, uniform vs swift sampler")
    d.add_argument("--data-dir", default="data/digits", help="where the digits shards are written")
    d.add_argument("overrides", nargs="*", help="dotted overrides of the demo config")
    h = sub.add_parser("config-help", help="every config key with its documentation")
    h.set_defaults(_help=True)
    return ap


def _fail(msg: str) -> int:
    print(f"swift-scale: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _run_pipeline(cfg, until: str, sampler: str | None = None):
    from swift_scale.pipeline import Pipeline

    pipe = Pipeline(cfg)
    # On error no barrier: a failing rank exits non-zero and the launcher stops the others.
    summary = pipe.run(until=until, sampler_path=sampler)
    pipe.acc.wait_for_everyone()
    pipe.acc.end_training()
    return pipe, summary


def _table(summary: dict) -> str:
    """Uniform (last epoch and early-stopped), the swift sampler's final model, and its noise detection."""
    b, sw = summary["baseline"], summary["swift"]
    lm = b["metric"] == "test_perplexity"  # language modelling: lower is better
    key = "test_perplexity" if lm else "test_accuracy"

    def fmt(v):
        return "—" if v is None else f"{v:.2f}" if lm else f"{v * 100:.2f}%"

    rows = [("uniform, last epoch", b["value"]),
            ("uniform, best-val epoch", (b.get("best_val") or {}).get(key)),
            (f"swift sampler ({sw.get('checkpoint', 'last').replace('_', '-')})", sw["value"])]
    head = "test perplexity" if lm else "test accuracy"
    out = [f"{'':<30}{head:>16}", "-" * 46] + [f"{name:<30}{fmt(v):>16}" for name, v in rows]
    if summary.get("noise_detection_auroc") is not None:
        out.append(f"{'noise-detection AUROC (1 − p)':<30}{summary['noise_detection_auroc']:>16.3f}")
    for r in summary.get("rounds", []):  # search.rounds > 1
        name = f"  round {r['round']}" + (" (kept)" if r["round"] == summary["chosen_round"] else "")
        out.append(f"{name:<30}{fmt(r['value']):>16}")
    return "\n".join(out)


def _inspect(path: str) -> None:
    import numpy as np

    from swift_scale.sampler.swift import SwiftSampler

    s = SwiftSampler.load(path)
    print(s.describe())
    t = np.linspace(0, 1, 11)
    phi = np.interp(t, s.knots, s.values)
    print("φ(T) at T = 0, 0.1, …, 1 (relative to max):", " ".join(f"{v / max(phi.max(), 1e-12):.2f}" for v in phi))
    store_dir = Path(path).parent / "features"
    if (store_dir / "meta.json").exists():  # inside a run folder: describe the effect on its data
        from swift_scale.features.store import FeatureStore

        store = FeatureStore(store_dir)
        p = s.probs({n: np.ascontiguousarray(store.column(n)) for n in store.feature_names}) * store.num_examples
        print(f"on the {store.num_examples} training examples of {store_dir.parent}: "
              f"{np.mean(p < 1e-3):.1%} get near-zero probability (< 0.001 × uniform), "
              f"{np.mean(p < 0.1):.1%} get < 0.1 × uniform, {np.mean(p > 1):.1%} are sampled more than uniform; "
              f"max {p.max():.2f} × uniform")


def _demo(args) -> None:
    import yaml

    from swift_scale.config import load_config
    from swift_scale.data.writers import write_digits

    base = yaml.safe_load(resources.files("swift_scale").joinpath("resources/demo.yaml").read_text())
    data_dir = Path(args.data_dir)
    patterns = write_digits(data_dir) if not (data_dir / "test-000000.tar").exists() else {
        s: str(data_dir / f"{s}-{{000000..{len(list(data_dir.glob(f'{s}-*.tar'))) - 1:06d}}}.tar")
        for s in ("train", "val", "test")}
    cfg = load_config(None, [f"data.{k}={v}" for k, v in patterns.items()] + list(args.overrides), base=base)
    _, summary = _run_pipeline(cfg, "report")
    if summary is not None:
        print(_table(summary))
        print(f"run folder: {cfg.run_dir()}  (report: {cfg.run_dir() / 'report' / 'report.md'})")


def _command(args) -> None:
    from swift_scale.config import field_docs, load_config

    if args.command == "config-help":
        for key, doc in field_docs().items():
            print(f"{key}\n    {doc}")
    elif args.command == "inspect":
        _inspect(args.sampler)
    elif args.command == "report":
        from swift_scale.report.writer import write_report

        if not (Path(args.run_dir) / "sampler.json").is_file():
            raise ValueError(f"{args.run_dir}: not a finished run folder (no sampler.json)")
        print(write_report(args.run_dir))
    elif args.command == "demo":
        _demo(args)
    else:
        cfg = load_config(args.config, args.overrides)
        until = {"run": "report", "index": "index", "features": "features", "search": "search", "train": "final"}
        _, summary = _run_pipeline(cfg, until[args.command], getattr(args, "sampler", None))
        if summary is not None and args.command in ("run", "train"):
            print(_table(summary))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        _command(args)
        return 0
    except ValueError as e:
        # ConfigError, DataError, FileError and the other user-facing checks: one line naming the field or file
        return _fail(_first_line(e))
    except OSError as e:  # a folder where a file should be, permissions, a full disk, …: name the file
        if e.filename is None:
            return _fail(_first_line(e))
        return _fail(f"{e.filename}: {e.strerror or type(e).__name__}")
    except RuntimeError as e:  # e.g. every search trial failed: not a usage error, but still one clear line
        print(f"swift-scale: error: {_first_line(e)}", file=sys.stderr)
        return 1


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
