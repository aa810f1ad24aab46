"""The search loop around an :class:`~swift_scale.search.engine.SearchEngine`, for every process of a run.

Every rank asks the engine for the same θ (proposals are a function of the shared history), runs the trial
(a distributed fine-tune), and tells the outcome; only the main rank appends to the history file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from swift_scale.search.engine import SearchEngine, Trial

__all__ = ["run_search", "best_or_raise"]

logger = logging.getLogger("swift_scale")

#: a trial's outcome: (score, None), or (None, the reason it failed)
Outcome = tuple[float | None, str | None]


def run_search(engine: SearchEngine, trials: int, evaluate: Callable[[Trial], Outcome], accelerator,
               log: Callable[[str, dict, int], None] | None = None) -> SearchEngine:
    """Ask, evaluate and tell until the history holds ``trials`` trials (a resumed search continues)."""
    while engine.num_trials < trials:
        trial = engine.ask()
        score, error = evaluate(trial)
        accelerator.wait_for_everyone()
        rec = engine.tell(trial, score, error=error, persist=accelerator.is_main_process)
        accelerator.wait_for_everyone()
        best = engine.best()
        if log is not None:
            log("search", {"score": rec["score"] if rec["score"] is not None else math.nan,
                           "best_so_far": best["score"] if best else math.nan}, trial.index)
        logger.info("trial %d score %s (best %s)", trial.index, rec["score"], best and best["score"])
    return engine


def best_or_raise(engine: SearchEngine) -> dict:
    """The best finished trial; RuntimeError naming the first failure when every trial failed."""
    best = engine.best()
    if best is None:
        first = next((r.get("error") for r in engine.history if r.get("error")), "unknown")
        raise RuntimeError(f"every search trial failed (first: {first}); see {engine.path}")
    return best
