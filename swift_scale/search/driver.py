"""The search loop around a :class:`~swift_scale.search.engine.SearchEngine`, for every process of a run.

The search runs in *rounds* of ``slots`` trials: with W processes and ``search.procs_per_trial`` = k there are
W / k groups, and group g trains trial ``g`` of the round on its own processes (no gradient sync between
groups). Every round:

1. the main process proposes the round's θ (or takes the proposals its helper process computed during the
   previous round, see :class:`Proposer`) and broadcasts them;
2. each group fine-tunes and scores its trial (:class:`TrialResult`), judged for early stopping against the
   trials of earlier rounds only, so the outcome does not depend on which group finishes first;
3. the results are all-gathered — a group that finishes early waits there, whatever the trials' durations —
   and every rank tells the engine the round's trials in trial order; only the main process appends them to
   the history file.

Determinism: the round structure is fixed by ``slots``, and a round's proposals are a pure function of the
history before it (with ``overlap``: the history before the previous round, and the previous round's θ as
pending points), so a killed search resumes to the same history for the same number of processes.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from swift_scale.search.engine import SearchEngine, Trial

__all__ = ["TrialResult", "Proposer", "run_search", "best_or_raise", "partial_round"]

logger = logging.getLogger("swift_scale")


@dataclass
class TrialResult:
    """What one trial reports: its val score (None when it failed, with ``error`` the reason), its val scores
    after the rung epochs it reached, the epoch it was stopped after (None: it ran to full length) and its wall
    time."""

    score: float | None
    error: str | None = None
    rungs: dict[int, float] = field(default_factory=dict)
    stopped_at: int | None = None
    seconds: float = 0.0


def overlapped_inputs(history: Sequence[dict], start: int, slots: int) -> tuple[int, list[np.ndarray]]:
    """What an overlapped search proposes round ``start`` from, once the round before it is in ``history``: the
    records before that round, and that round's θ as pending points (a resumed search, or a replay of one)."""
    lo = max(0, start - slots)
    return lo, [np.asarray(r["params"]) for r in history[lo:start]]


def spread_cores() -> list[int] | None:
    """The cores to spread the helper over: all of this process's, when this machine's processes of the run
    (``LOCAL_WORLD_SIZE``, set by torchrun and accelerate) are at least as many as its cores, so every core runs
    a trainer; None otherwise (a free core is left to the helper, and the scheduler puts it there) or where
    affinity cannot be set. ``SWIFT_SCALE_SPREAD_HELPER=0`` turns it off, ``=1`` on."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    forced = os.environ.get("SWIFT_SCALE_SPREAD_HELPER")
    if forced is not None:
        return cores if forced == "1" and len(cores) > 1 else None
    full = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) >= len(cores) > 1
    return cores if full else None


class Proposer:
    """The proposals of each round, for the main process.

    ``overlap=False``: a round's proposals are computed when it starts, from every finished trial.
    ``overlap=True``: they are computed during the previous round, in a helper process (started once; it
    shares no RNG or threads with training), from the trials finished before that round and with its running
    trials as pending points — the proposal is then off the critical path as long as it takes less time than a
    round. A resumed search recomputes a round the same way. Random search and the fixed first points
    (initial, Sobol) are computed in place either way.
    """

    def __init__(self, engine: SearchEngine, slots: int, overlap: bool):
        self.engine, self.slots = engine, slots
        self.overlap = overlap and engine.strategy == "bo"
        self._conn: Any = None  # our end of the helper's socket (a multiprocessing Connection), and the helper
        self._proc: Any = None
        self._waiting: tuple[int, int] | None = None

    def _needs_gp(self, start: int, q: int) -> bool:
        return any(self.engine._fixed_point(t)[0] is None for t in range(start, start + q))

    def _inputs(self, start: int, running: Sequence[Trial] | None) -> tuple[int, list[np.ndarray]]:
        """(records the round ``start`` may use, θ of the pending trials) — see the class docstring. The round
        before is ``running`` (not yet in the history) or, on a resumed search, the history's last records."""
        if not self.overlap or start == 0:
            return start, []
        if running is not None:
            return start - len(running), [t.theta for t in running]
        return overlapped_inputs(self.engine.history, start, self.slots)

    def prepare(self, trials: int) -> None:
        """Start the helper at the start of the search when a later round will need the GP, so its start-up
        (a fresh interpreter and BoTorch's import) overlaps the first rounds instead of delaying the first GP round."""
        if self.overlap and self._needs_gp(self.engine.num_trials, trials - self.engine.num_trials):
            self._spawn()

    def _spawn(self) -> None:
        """Start the helper process (once): a fresh interpreter running :mod:`swift_scale.search.helper`, which
        imports only this package — never the user's ``__main__``, as a ``multiprocessing`` spawn would."""
        if self._proc is not None:
            return
        import socket
        import subprocess
        import sys
        from multiprocessing.connection import Connection
        from pathlib import Path

        ours, theirs = socket.socketpair()
        env = dict(os.environ)  # the helper finds this package where this process found it (an uninstalled checkout)
        root = str(Path(__file__).resolve().parents[2])  # the folder holding swift_scale/
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", "swift_scale.search.helper", str(theirs.fileno())],
                                          pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send((self.engine.settings(), spread_cores()))

    def submit(self, start: int, q: int, running: Sequence[Trial] | None = None) -> None:
        """Start computing the round of trials start … start+q−1 while the round ``running`` trains."""
        if not self.overlap or not self._needs_gp(start, q):
            return
        self._spawn()
        observed, pending = self._inputs(start, running)
        self._conn.send((self.engine.history[:observed], observed, pending, q))
        self._waiting = (start, q)

    def round(self, start: int, q: int) -> list[Trial]:
        """The θ of trials start … start+q−1 (waits for the helper when it is computing them)."""
        if self._waiting != (start, q):
            self.submit(start, q)
        if self._waiting == (start, q):
            self._waiting = None
            return self._conn.recv()
        observed, pending = self._inputs(start, None)
        return self.engine.ask_batch(q, observed=observed, pending=pending)

    def close(self) -> None:
        """End the helper: ask it to stop, and kill it if it has not within 10 s."""
        if self._proc is None:
            return
        import subprocess

        try:
            self._conn.send(None)
        except OSError:  # it is gone already
            pass
        self._conn.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None


def run_search(engine: SearchEngine, trials: int,
               evaluate: Callable[[Trial, Sequence[dict]], TrialResult], accelerator,
               log: Callable[[str, dict, int], None] | None = None, *, slots: int = 1, group: int = 0,
               leader: bool = True, overlap: bool = False, progress: bool = False) -> SearchEngine:
    """Run rounds until the history holds ``trials`` trials (a resumed search continues).

    ``evaluate(trial, earlier)`` runs on every process of this process's ``group`` (``earlier``: the records of
    the rounds before, for early stopping); ``leader``: this process reports its group's result.
    """
    from accelerate.utils import broadcast_object_list, gather_object
    from tqdm.auto import tqdm

    main = accelerator.is_main_process
    engine.drop_last(partial_round(engine.history, slots, trials), persist=main)
    proposer = Proposer(engine, slots, overlap) if main else None
    if proposer is not None:
        proposer.prepare(trials)
    bar = tqdm(total=trials, initial=engine.num_trials, desc="search", unit="trial", dynamic_ncols=True,
               disable=None if (progress and main) else True)
    try:
        while engine.num_trials < trials:
            start = engine.num_trials
            q = min(slots, trials - start)
            waited = time.time()
            batch = proposer.round(start, q) if proposer is not None else None
            waited = time.time() - waited
            batch = broadcast_object_list([batch])[0]
            if proposer is not None and start + q < trials:
                proposer.submit(start + q, min(slots, trials - start - q), running=batch)
            earlier = list(engine.history)
            mine = evaluate(batch[group], earlier) if group < len(batch) else None
            results = [r for r in gather_object([(group, mine) if leader else None]) if r is not None]
            by_group = dict(results)
            records = [engine.tell(trial, by_group[g].score, error=by_group[g].error, rungs=by_group[g].rungs,
                                   stopped_at=by_group[g].stopped_at, seconds=by_group[g].seconds, persist=False,
                                   extra={"round": start // slots, "proposal_wait": round(waited, 4)})
                       for g, trial in enumerate(batch)]
            if main:  # the whole round in one write: a kill leaves whole rounds (or a torn line, cut on resume)
                engine.persist(records)
            for rec in records:
                _report(engine, rec, log, bar)
    finally:
        bar.close()
        if proposer is not None:
            proposer.close()
    return engine


def partial_round(history: Sequence[dict], slots: int, trials: int) -> int:
    """How many records at the end of ``history`` form a round cut short (a crash between its records, as
    histories written one record at a time could leave): they are redone, so a resumed search proposes the same
    rounds as an uninterrupted one. 0 when every round is whole, or when the rounds are not ``slots`` wide (a
    history made with another number of processes is kept as it is)."""
    n = len(history)
    if n == 0 or n >= trials or "round" not in history[-1]:
        return 0
    k = history[-1]["round"]
    if any(r.get("round") != i // slots for i, r in enumerate(history)):
        return 0
    return n - k * slots if n - k * slots < min(slots, trials - k * slots) else 0


def _report(engine: SearchEngine, rec: dict, log, bar) -> None:
    best = engine.best()
    if log is not None:
        log("search", {"score": rec["score"] if rec["score"] is not None else math.nan,
                       "best_so_far": best["score"] if best else math.nan}, rec["trial"])
    logger.info("trial %d %s score %s (best %s)", rec["trial"], rec["status"], rec["score"],
                best and best["score"])
    bar.update(1)
    if best is not None:
        bar.set_postfix(best=f"{best['score']:.4f}", refresh=False)


def best_or_raise(engine: SearchEngine) -> dict:
    """The best full-length trial; RuntimeError naming the first failure when every trial failed."""
    best = engine.best()
    if best is None:
        first = next((r.get("error") for r in engine.history if r.get("error")), "unknown")
        raise RuntimeError(f"every search trial failed (first: {first}); see {engine.path}")
    return best
