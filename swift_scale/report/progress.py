"""One line per finished phase (its wall time and headline figure), as training scripts print them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

__all__ = ["phase_line", "announce"]


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" if metric == "perplexity" else f"{100 * value:.2f}%"


def _training(metric: str, m: dict) -> str:
    best = m.get("best")
    last = f"val {metric} {_fmt(metric, m['val'][metric])} at the last epoch"
    if not best:
        return last
    return f"{last}, {_fmt(metric, best['val'][metric])} at its best epoch {best['epoch']}"


def phase_line(phase: str, seconds: float, result: Any, metric: str, history: list[dict] | None = None) -> str:
    """``phase`` took ``seconds`` and gave ``result`` (the phase method's return value); ``metric``: the task's
    (``accuracy`` or ``perplexity``); ``history``: the search's records."""
    head = f"{phase:<9}{seconds:8.1f} s  "
    if phase in ("pretrain", "final") or phase.startswith("rule"):
        return head + _training(metric, result)
    if phase == "crossfit" and result:
        shown = ", ".join(_fmt(metric, m["best"]["val"][metric] if m.get("best") else m["val"][metric])
                          for m in result)
        return head + f"{len(result)} fold models, best val {metric} {shown}"
    if phase == "features" and result is not None:
        return head + f"{result.num_examples} examples × {len(result.feature_names)} features"
    if phase == "search" and history:
        stopped = sum(r["status"] == "stopped" for r in history)
        failed = sum(r["status"] == "failed" for r in history)
        score = result["score"]
        shown = f"{-score:.3f} log-perplexity" if metric == "perplexity" else f"{100 * score:.2f}%"
        extra = ", ".join(x for x in (f"{stopped} stopped early" if stopped else "",
                                      f"{failed} failed" if failed else "") if x)
        return head + (f"{len(history)} trials{f' ({extra})' if extra else ''}, chosen trial {result['trial']}: "
                       f"val {shown}")
    return head.rstrip()


def announce(phase: str, seconds: float, result: Any, metric: str, run_dir: Path) -> None:
    """Print :func:`phase_line` to stderr above any progress bars (the run's main process)."""
    from tqdm.auto import tqdm

    from swift_scale.io import read_jsonl

    history = read_jsonl(Path(run_dir) / "search" / "history.jsonl") if phase == "search" else None
    tqdm.write(phase_line(phase, seconds, result, metric, history), file=sys.stderr)
