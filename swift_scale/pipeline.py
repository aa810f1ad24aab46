"""The whole run (docs/design.md §1): index → pretrain → features → search → final → report.

Each phase is a short method that records its completion in the run folder; rerunning the same command skips
finished phases and continues unfinished ones (epoch checkpoints, finished shards, finished trials). Data: in
:mod:`swift_scale.data`, training: :mod:`swift_scale.train`, the run folder: :mod:`swift_scale.run_folder`.
"""

from __future__ import annotations

import copy
import logging
import time
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from swift_scale.config import Config, later_round_features
from swift_scale.data import Data, load_data
from swift_scale.features.dynamics import DynamicsRecorder, dynamics_features
from swift_scale.features.extract import extract_features
from swift_scale.features.store import FeatureStore
from swift_scale.io import link_or_copy, read_jsonl
from swift_scale.report.progress import announce
from swift_scale.report.summary import RunFacts, build_summary
from swift_scale.report.tracking import Tracking, accelerator_for
from swift_scale.run_folder import RunFolder
from swift_scale.sampler.swift import SwiftSampler, kept_share
from swift_scale.search.trials import SamplerSearch
from swift_scale.selection import fold_of
from swift_scale.train.tasks import Task, sampler_features, task_for
from swift_scale.train.trainer import Trainer

__all__ = ["Pipeline", "PHASES"]

logger = logging.getLogger("swift_scale")
PHASES = ("index", "pretrain", "features", "search", "final", "report")


def best_round(rounds: list[dict]) -> int:
    """The round with the highest final val score among summary.json ``rounds`` entries, the first on a tie: the
    kept round, and what the rounds' stopping rule (``search.round_patience``) counts from."""
    return max(rounds, key=lambda e: (e["val_score"], -e["round"]))["round"]


class Pipeline:
    """Runs the phases of one run folder. Build once per process; ``run(until=...)``."""

    def __init__(self, cfg: Config, accelerator: Accelerator | None = None):
        from swift_scale.checks import check_precision

        self.cfg = cfg
        self.folder = RunFolder(cfg)
        self.dir = self.folder.root
        check_precision(cfg)
        self.acc = accelerator or accelerator_for(cfg, self.dir / "logs")
        self.tracking = Tracking(cfg, self.acc)
        self.log = self.tracking.log
        self.crossfit_folds = 0  # > 0: a later round whose features come from cross-fitted models (round_pipeline)

    # -- the run folder -------------------------------------------------------------------------------------
    def check(self, sampler_path: str | Path | None = None) -> None:
        """Everything a user can get wrong that is known before the data is read: the run folder (and its
        records), the sampler's features, the model, a transferred sampler. Writes nothing."""
        from swift_scale.checks import check_model, check_sampler_features, check_transfer, check_trial_groups

        self.folder.check()
        self.folder.check_records()
        check_sampler_features(self.cfg)
        check_trial_groups(self.cfg, self.acc.num_processes)
        check_model(self.cfg)
        if sampler_path is not None:
            check_transfer(self.cfg, self.folder, sampler_path)

    def prepare_dir(self, sampler_path: str | Path | None = None) -> None:
        """:meth:`check`, read the data, check the model fits it, then create the folder: the resolved config
        first, then the data's records. A failure before this point leaves no folder (or an existing one
        unchanged). Refuses a folder made by a different config."""
        self.check(sampler_path)
        self.folder.timed("index", lambda: self.data, write=False)
        self.trainer.check_model()
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            self.folder.create(self.data.records)
        self.acc.wait_for_everyone()
        self.tracking.start()

    # -- what the phases share ------------------------------------------------------------------------------
    @cached_property
    def data(self) -> Data:
        return load_data(self.cfg, self.acc, self.dir)

    @cached_property
    def task(self) -> Task:
        return task_for(self.cfg.data.task, self.data.rarity)

    @cached_property
    def trainer(self) -> Trainer:
        return Trainer(self.cfg, self.acc, self.data, self.task, self.log)

    def new_model(self, state: dict | None = None) -> torch.nn.Module:
        return self.trainer.new_model(state)

    def theta0(self) -> dict:
        """The weights that score the features."""
        return self.folder.load_weights("pretrain/theta0.pt")

    def start_weights(self) -> dict:
        """The weights every trial fine-tunes from (θ0 in run folders made before the two were separate)."""
        return self.folder.load_weights("pretrain/start.pt" if self.folder.has("pretrain/start.pt")
                                        else "pretrain/theta0.pt")

    def train_features(self, store: FeatureStore | None = None) -> dict[str, np.ndarray]:
        """Every stored feature column of the training set (float32 [N] each)."""
        store = store or self.features()
        return {n: np.ascontiguousarray(store.column(n)) for n in store.feature_names}

    def sampler_search(self) -> SamplerSearch:
        """The samplers of the run's feature store, and the trials that score them."""
        return SamplerSearch(self.cfg, self.trainer, store := self.features(), self.train_features(store),
                             self._online)

    def _online(self, sampler: SwiftSampler | None):
        """The online selector (data.online), or None."""
        if sampler is None or not self.cfg.data.online:
            return None
        return self.trainer.online_selector(sampler, self.theta0())

    def train_with(self, probs: np.ndarray | None, out: Path, desc: str, sampler: SwiftSampler | None = None,
                   start: bool = False) -> dict:
        """Train at the full budget sampling ∝ ``probs`` (None: uniform) into ``out`` (checkpoints, best-val
        weights, ``metrics.json``); from the trials' start checkpoint when ``start``, else from scratch."""
        state = self.start_weights() if start else None
        return self.trainer.train_to(out, probs, state=state, desc=desc, online=self._online(sampler))

    # -- phases ---------------------------------------------------------------------------------------------
    def pretrain(self) -> dict:
        """Uniform training (the baseline, with the training dynamics recorded as it goes); keeps the weights
        that score the features (θ0, ``features.epoch``) and that the trials start from (``search.start_epoch``)."""
        if self.folder.has("pretrain/metrics.json"):
            return self.folder.read_json("pretrain/metrics.json")
        keep = self.folder.fixed_pretrain_epochs()

        def save_epoch(epoch, model):
            if epoch in keep and self.acc.is_main_process:
                self.folder.save_weights(f"pretrain/epoch{epoch}.pt", self.trainer.state(model))

        def publish(metrics):
            if self.acc.is_main_process:
                self.folder.publish_pretrain_weights(metrics)

        recorder = DynamicsRecorder(self.dir / "pretrain" / "dynamics", len(self.data.train),
                                    self.acc.process_index, keep=self.folder.dynamics_keep) \
            if self.cfg.features.dynamics else None
        return self.trainer.train_to(self.dir / "pretrain", None, desc="pretrain", hook=save_epoch,
                                     recorder=recorder, keep_last=True, before_commit=publish)

    def features(self) -> FeatureStore:
        """θ0's features of every training example, in the store (done once; resumed per shard)."""
        store_dir = self.dir / "features"
        if self.features_done():
            return self.folder.note_skipped(self.data, FeatureStore(store_dir), self.acc.is_main_process)
        route = None
        if self.crossfit_folds:  # each example scored by the fold model that never trained on it
            weights = [self.folder.load_weights(f"crossfit/fold{k}/best.pt") for k in range(self.crossfit_folds)]
            folds, seed = self.crossfit_folds, self.cfg.seed
            route = lambda ids: fold_of(ids, folds, seed)  # noqa: E731
        else:
            weights = [self.theta0()]
        # no DDP wrapper: the pass has no gradients, and a wrapped forward is a collective (buffer broadcast) that
        # would hang the other ranks when one has no shard left to score
        models = [self.new_model(w).to(self.acc.device) for w in weights]
        idx, f = self.data.index["train"], self.cfg.features
        dyn = self.dir / "pretrain" / "dynamics"
        extra = None
        if f.dynamics and dyn.exists():
            until = self.folder.dynamics_epoch(self.folder.read_json("pretrain/metrics.json"))
            extra = dynamics_features(dyn, len(self.data.train), until, self.acc.num_processes)
        store = extract_features(self.acc, models, self.data.train, store_dir, idx.offsets, idx.counts, self.task,
                                 extra=extra, batch_size=f.batch_size, quantile_points=f.quantile_points,
                                 progress=self.cfg.train.progress, route=route)
        self.acc.free_memory()
        return self.folder.note_skipped(self.data, store, self.acc.is_main_process)

    def features_done(self) -> bool:
        store_dir = self.dir / "features"
        return (store_dir / "meta.json").exists() and FeatureStore(store_dir).complete

    def crossfit(self, prev: Pipeline) -> list[dict]:
        """A later round's scoring models (``search.round_scoring=crossfit``, docs/design.md §1.6): for each fold
        k, a training under ``prev``'s sampler (from scratch, ``train.epochs``, whatever ``train.final_mode``) on
        the examples of the other folds (fold k's p set to 0), into ``crossfit/fold<k>/``; its best-val checkpoint
        scores the examples of fold k."""
        sampler = SwiftSampler.load(prev.dir / "sampler.json")
        probs = sampler.probs(prev.train_features())
        fold = fold_of(np.arange(len(probs)), self.crossfit_folds, self.cfg.seed)
        out = []
        for k in range(self.crossfit_folds):
            rel = f"crossfit/fold{k}"
            out.append(self.folder.read_json(f"{rel}/metrics.json") if self.folder.has(f"{rel}/metrics.json")
                       else self.trainer.train_to(self.dir / rel, np.where(fold == k, 0.0, probs),
                                                  desc=f"crossfit fold {k}", online=prev._online(sampler)))
        return out

    def search(self) -> dict:
        """Bayesian optimisation over θ (:class:`~swift_scale.search.trials.SamplerSearch`); keeps the chosen
        sampler in ``sampler.json``."""
        search = self.sampler_search()
        best = search.run(self.dir / "search" / "history.jsonl", self.start_weights(), self.log)
        sampler = search.sampler(best["params"])
        sampler.info = {"trial": best["trial"], "val_score": best["score"], "kept": best["kept"],
                        "model": self.cfg.model.name, "run": str(self.dir)}
        if self.acc.is_main_process:
            sampler.save(self.dir / "sampler.json")
        self.acc.wait_for_everyone()  # other ranks read sampler.json next
        return best

    def final(self, sampler_path: str | Path | None = None) -> dict:
        """The full training with the learned (or a transferred) sampler."""
        if self.folder.has("final/metrics.json") and sampler_path is None:
            return self.folder.read_json("final/metrics.json")
        sampler = SwiftSampler.load(sampler_path or self.dir / "sampler.json")
        if sampler_path is not None and self.acc.is_main_process:
            sampler.info = {**sampler.info, "source": str(sampler_path)}
            sampler.save(self.dir / "sampler.json")
        self.acc.wait_for_everyone()
        probs, mode = sampler.probs(self.train_features()), self.cfg.train.final_mode
        if mode != "best_trial":
            return self.train_with(probs, self.dir / "final", "final", sampler, start=mode == "finetune")
        s = self.cfg.search  # the chosen trial's own fine-tune, redone (deterministic) with every epoch scored
        return self.trainer.train_to(self.dir / "final", probs, state=self.start_weights(), desc="final",
                                     online=self._online(sampler), epochs=s.finetune_epochs, lr=s.lr or None)

    def rule(self, rule: str) -> dict:
        """Train with a hand rule (:mod:`swift_scale.sampler.rules`, e.g. ``drop_top_loss:0.2``) at the final
        budget, into ``rules/<rule>/``; the comparison the benchmarks report next to uniform and SS."""
        from swift_scale.sampler.rules import rule_probs

        rel = f"rules/{rule.replace(':', '_')}"
        if self.folder.has(f"{rel}/metrics.json"):
            return self.folder.read_json(f"{rel}/metrics.json")
        return self.train_with(rule_probs(rule, self.train_features(), self.data.noisy_ids), self.dir / rel,
                               f"rule {rule}")

    def summary(self, publish: bool = True) -> dict:
        """This run's summary; with ``publish`` the main process writes it to summary.json and the trackers log
        its headline (:meth:`publish`)."""
        noisy, sampler = self.data.noisy_ids, SwiftSampler.load(self.dir / "sampler.json")
        final = self.folder.read_json("final/metrics.json")
        probs = sampler.probs(self.train_features())
        facts = RunFacts(self.task.name, self.task.metric, len(self.data.train), self.acc.num_processes,
                         str(self.acc.device), str(self.acc.mixed_precision), self.data.num_errors,
                         self.folder.seconds, noisy, probs if len(noisy) else None,
                         sampler.info.get("trial"), self.final_val_score(final), self.data.doc_of,
                         kept_share(probs))
        summary = build_summary(self.cfg, facts, self.folder.read_json("pretrain/metrics.json"), final,
                                read_jsonl(self.dir / "search" / "history.jsonl"))
        if publish:
            self.publish(summary)
        return summary

    def publish(self, summary: dict) -> None:
        """Write summary.json (main process) and log its headline to the trackers, once per run."""
        if self.acc.is_main_process:
            self.folder.write_json("summary.json", summary)
        self.tracking.log_summary(summary)

    # -- later rounds (search.rounds) ----------------------------------------------------------------------
    def round_pipeline(self, r: int) -> Pipeline:
        """Round ``r``'s pipeline: the run folder ``round<r>/`` with the same data, accelerator and budgets, whose
        features are θ0-style (no training dynamics) and whose numbers are logged as ``round<r>/...``."""
        cfg = copy.deepcopy(self.cfg)
        cfg.run.out_dir = str(self.dir / f"round{r}")
        cfg.features.dynamics = False
        cfg.sampler.features = later_round_features(sampler_features(self.cfg))
        cfg.search.rounds = 1
        cfg.train.log_with = ""  # this run's trackers carry its numbers
        child = Pipeline(cfg, self.acc)
        child.crossfit_folds = cfg.search.crossfit_folds if self.cfg.round_scoring() == "crossfit" else 0
        child.__dict__["data"] = self.data  # the same examples, index and noise: read once
        child.log = lambda prefix, values, step: self.log(f"round{r}/{prefix}", values, step)
        return child

    def _seed_round(self, child: Pipeline, prev: Pipeline) -> None:
        """Give round ``child`` its pretraining: ``prev``'s final model (best-val checkpoint) as θ0, the trials'
        start checkpoint and the pretraining's metrics (written last: they mark the phase done)."""
        child.folder.check()
        child.folder.check_records()
        if self.acc.is_main_process:
            child.folder.create(self.data.records)
            if not child.folder.has("pretrain/metrics.json"):
                start = "pretrain/start.pt" if prev.folder.has("pretrain/start.pt") else "pretrain/theta0.pt"
                link_or_copy(prev.folder.path(start), child.folder.path("pretrain/start.pt"))
                link_or_copy(prev.folder.path("final/best.pt"), child.folder.path("pretrain/theta0.pt"))
                child.folder.write_json("pretrain/metrics.json", prev.folder.read_json("pretrain/metrics.json"))
        self.acc.wait_for_everyone()

    def later_rounds(self, summary: dict) -> dict:
        """Rounds 2 … ``search.rounds``: each scores the features with the previous round's final model, searches
        and trains again (:meth:`round_pipeline`); they stop early once ``search.round_patience`` + 1 rounds in a
        row have not raised the best final val score. The round whose final model scores highest on val (the first
        on a tie) becomes the summary's ``swift``; every round's figures are in ``rounds``."""
        rounds, prev = [{"round": 1, **self._round_figures(summary)}], self
        summaries = {1: summary}
        for r in range(2, self.cfg.search.rounds + 1):
            if r - 1 - best_round(rounds) > self.cfg.search.round_patience:
                break  # search.round_patience + 1 rounds in a row without a new best final val
            child = self.round_pipeline(r)
            self._seed_round(child, prev)
            if child.crossfit_folds and not child.features_done():
                child._phase("crossfit", lambda: child.crossfit(prev))  # noqa: B023 (called at once)
            for phase, fn in (("features", child.features), ("search", child.search), ("final", child.final)):
                child._phase(phase, fn)
            summaries[r] = child.summary()
            rounds.append({"round": r, **child._round_figures(summaries[r])})
            prev = child
        chosen = best_round(rounds)
        out = {**summary, "rounds": rounds, "chosen_round": chosen, "round_scoring": self.cfg.round_scoring()}
        if chosen > 1:
            best = summaries[chosen]
            out.update(swift={**best["swift"], "round": chosen, "sampler": f"round{chosen}/sampler.json"},
                       search=best["search"])
            for key in ("noise_detection_auroc", "noise_detection_auroc_by_document"):  # only where noise was injected
                out.pop(key, None)
                if key in best:
                    out[key] = best[key]
        return out

    def final_val_score(self, final: dict | None = None) -> float:
        """The search's score (``task.score``) of the final model on val at ``train.final_checkpoint``: the
        winner's-curse reference in the summary, and what chooses among rounds."""
        final = final or self.folder.read_json("final/metrics.json")
        use = final.get("best") if self.cfg.train.final_checkpoint == "best_val" else None
        return self.task.score((use or final)["val"])

    def _round_figures(self, summary: dict) -> dict:
        """This round's line in summary.json ``rounds``: its final model's val score (what chooses the round),
        its headline test figure and its sampler's noise-detection AUROC."""
        return {"val_score": self.final_val_score(), "value": summary["swift"]["value"],
                "noise_detection_auroc": summary.get("noise_detection_auroc")}

    def _phase(self, phase: str, fn):
        """Run a phase, add its wall time to ``seconds.json`` and print its one-line summary (main process)."""
        t0, out = time.time(), self.folder.timed(phase, fn, self.acc.is_main_process)
        if self.acc.is_main_process and self.cfg.train.progress:
            announce(phase, time.time() - t0, out, self.task.metric, self.dir)
        return out

    def run(self, until: str = "report", sampler_path: str | Path | None = None) -> dict | None:
        """Run every phase up to ``until`` (inclusive), skipping finished ones."""
        if until not in PHASES:
            raise ValueError(f"unknown phase {until!r}; one of {PHASES}")
        stop, main = PHASES.index(until), self.acc.is_main_process
        self.prepare_dir(sampler_path)
        for phase, fn in (("pretrain", self.pretrain), ("features", self.features), ("search", self.search)):
            if stop >= PHASES.index(phase) and not (phase == "search" and sampler_path is not None):
                self._phase(phase, fn)
        if stop < PHASES.index("final"):
            return None
        self._phase("final", lambda: self.final(sampler_path))
        summary = self.summary(publish=False)
        if self.cfg.search.rounds > 1 and sampler_path is None:
            summary = self.folder.timed("rounds", lambda: self.later_rounds(summary), main)
        self.publish(summary)  # after the rounds: summary.json and the trackers' headline are the kept round's
        if stop >= PHASES.index("report") and main:
            from swift_scale.report.writer import write_report

            self.folder.timed("report", lambda: write_report(self.dir), main)
            summary["seconds"] = self.folder.seconds
            self.folder.write_json("summary.json", summary)
        self.acc.wait_for_everyone()
        return summary
