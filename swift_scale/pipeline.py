"""The whole run (docs/design.md §1): index → pretrain → features → search → final → report.

Each phase is a short method that records its completion in the run folder; rerunning the same command skips
finished phases and continues unfinished ones (epoch checkpoints, finished shards, finished trials). Data
loading lives in :mod:`swift_scale.data`, training in :mod:`swift_scale.train`, the run folder's bookkeeping in
:mod:`swift_scale.run_folder` and the summary in :mod:`swift_scale.report`.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from swift_scale.config import Config
from swift_scale.data import Data, load_data
from swift_scale.features.extract import extract_features
from swift_scale.features.store import FeatureStore
from swift_scale.io import read_jsonl
from swift_scale.report.summary import RunFacts, build_summary
from swift_scale.report.tracking import Tracking, trackers_of
from swift_scale.run_folder import RunFolder
from swift_scale.sampler.swift import SwiftSampler, num_params, uniform_theta
from swift_scale.search.driver import best_or_raise, run_search
from swift_scale.search.engine import SearchEngine
from swift_scale.train.tasks import Task, task_for
from swift_scale.train.trainer import Trainer

__all__ = ["Pipeline", "PHASES"]

logger = logging.getLogger("swift_scale")
PHASES = ("index", "pretrain", "features", "search", "final", "report")


class Pipeline:
    """Runs the phases of one run folder. Build once per process; ``run(until=...)``."""

    def __init__(self, cfg: Config, accelerator: Accelerator | None = None):
        from swift_scale.checks import check_precision

        self.cfg = cfg
        self.folder = RunFolder(cfg)
        self.dir = self.folder.root
        check_precision(cfg)
        self.acc = accelerator or Accelerator(cpu=cfg.train.cpu, mixed_precision=cfg.train.mixed_precision,
                                              log_with=trackers_of(cfg) or None, project_dir=str(self.dir / "logs"))
        self.tracking = Tracking(cfg, self.acc)
        self.log = self.tracking.log

    # -- the run folder -------------------------------------------------------------------------------------
    def check(self, sampler_path: str | Path | None = None) -> None:
        """Everything a user can get wrong that is known before the data is read: the run folder (and its
        records), the sampler's features, the model, a transferred sampler. Writes nothing."""
        from swift_scale.checks import check_model, check_sampler_features, check_transfer

        self.folder.check()
        self.folder.check_records()
        check_sampler_features(self.cfg)
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
        return self.folder.load_weights("pretrain/theta0.pt")

    def train_features(self, store: FeatureStore | None = None) -> dict[str, np.ndarray]:
        """Every stored feature column of the training set (float32 [N] each)."""
        store = store or self.features()
        return {n: np.ascontiguousarray(store.column(n)) for n in store.feature_names}

    def make_sampler(self, theta, store: FeatureStore, feats: dict[str, np.ndarray]) -> SwiftSampler:
        from swift_scale.checks import sampler_features

        names = sampler_features(self.cfg)
        q = {n: store.quantiles(n) for n in names}
        return SwiftSampler.from_theta(theta, names, q, self.cfg.sampler.transform).fit(feats)  # type: ignore[arg-type]

    def _online(self, sampler: SwiftSampler | None):
        """The online selector (data.online), or None."""
        if sampler is None or not self.cfg.data.online:
            return None
        return self.trainer.online_selector(sampler, self.theta0())

    def train_with(self, probs: np.ndarray | None, out: Path, desc: str, sampler: SwiftSampler | None = None,
                   hook=None) -> dict:
        """Train at the full budget sampling ∝ ``probs`` (None: uniform) into ``out`` (checkpoints and
        ``metrics.json``), from scratch unless ``train.final_from_scratch=false`` and a sampler is given."""
        state = None if probs is None or self.cfg.train.final_from_scratch else self.theta0()
        return self.trainer.train_to(out, probs, state=state, desc=desc, hook=hook, online=self._online(sampler))

    # -- phases ---------------------------------------------------------------------------------------------
    def pretrain(self) -> dict:
        """Uniform training (the baseline); θ0 = its weights after ``search.theta0_epoch`` epochs."""
        if self.folder.has("pretrain/metrics.json"):
            return self.folder.read_json("pretrain/metrics.json")
        theta0_epoch = self.cfg.search.theta0_epoch or self.cfg.train.epochs

        def save_theta0(epoch, model):
            if epoch == theta0_epoch and self.acc.is_main_process:
                self.folder.save_weights("pretrain/theta0.pt", self.trainer.state(model))

        return self.train_with(None, self.dir / "pretrain", "pretrain", hook=save_theta0)

    def features(self) -> FeatureStore:
        """θ0's features of every training example, in the store (done once; resumed per shard)."""
        store_dir = self.dir / "features"
        if (store_dir / "meta.json").exists() and (store := FeatureStore(store_dir)).complete:
            return self._note_streaming_skips(store)
        model = self.acc.prepare(self.new_model(self.theta0()))
        idx, f = self.data.index["train"], self.cfg.features
        store = extract_features(self.acc, model, self.data.train, store_dir, idx.offsets, idx.counts, self.task,
                                 batch_size=f.batch_size, quantile_points=f.quantile_points,
                                 progress=self.cfg.train.progress)
        self.acc.free_memory()
        return self._note_streaming_skips(store)

    def _note_streaming_skips(self, store: FeatureStore) -> FeatureStore:
        """Streaming with ``data.on_error=skip``: the features pass finds the bad training samples (their shards'
        done markers list them). From then on they are never sampled and are reported like the indexed mode's."""
        if self.cfg.data.mode == "streaming" and self.data.train_valid is None and (skipped := store.skipped()):
            self.data.exclude(skipped)
            logger.warning("skipped %d bad training sample(s) (data.on_error=skip), e.g. %s sample %r: %s; all in %s",
                           len(skipped), skipped[0]["url"], skipped[0]["key"], skipped[0]["reason"],
                           self.dir / "data_errors.json")
            if self.acc.is_main_process:
                self.folder.record_data_errors("train", skipped)
        return store

    def search(self) -> dict:
        """Bayesian optimisation over θ; each trial fine-tunes θ0 under its sampler and scores it on val."""
        s = self.cfg.search
        store = self.features()
        feats = self.train_features(store)
        engine = SearchEngine(self.dir / "search" / "history.jsonl", dim=num_params(self.cfg.sampler.segments),
                              strategy=s.strategy, seed=self.cfg.seed, n_init=s.n_init, beta=s.beta,  # type: ignore[arg-type]
                              num_restarts=s.num_restarts, raw_samples=s.raw_samples,
                              initial=[uniform_theta(self.cfg.sampler.segments)])
        state0 = self.theta0()
        run_search(engine, s.trials, lambda t: self._trial(self.make_sampler(t.theta, store, feats), feats, state0,
                                                           t.index), self.acc, self.log)
        return self._publish_best(engine, store, feats)

    def _trial(self, sampler: SwiftSampler, feats, state0: dict, index: int) -> tuple[float | None, str | None]:
        """(val score, None), or (None, the reason) when the fine-tune fails; a failure never ends the search."""
        s = self.cfg.search
        try:
            model, _ = self.trainer.fit(sampler.probs(feats), epochs=s.finetune_epochs, lr=s.lr or self.cfg.train.lr,
                                        state=state0, desc=f"trial {index}", eval_each_epoch=False,
                                        online=self._online(sampler))
            return self.task.score(self.trainer.evaluate(model, "val")), None
        except Exception as e:  # noqa: BLE001 - any failure inside a trial is recorded, never fatal
            return None, f"{type(e).__name__}: {e}"
        finally:
            self.acc.free_memory()

    def _publish_best(self, engine: SearchEngine, store: FeatureStore, feats) -> dict:
        best = best_or_raise(engine)
        sampler = self.make_sampler(np.asarray(best["params"]), store, feats)
        sampler.info = {"trial": best["trial"], "val_score": best["score"], "model": self.cfg.model.name,
                        "run": str(self.dir)}
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
        return self.train_with(sampler.probs(self.train_features()), self.dir / "final", "final", sampler)

    def rule(self, rule: str) -> dict:
        """Train with a hand rule (:mod:`swift_scale.sampler.rules`, e.g. ``drop_top_loss:0.2``) at the final
        budget, into ``rules/<rule>/``; the comparison the benchmarks report next to uniform and SS."""
        from swift_scale.sampler.rules import rule_probs

        rel = f"rules/{rule.replace(':', '_')}"
        if self.folder.has(f"{rel}/metrics.json"):
            return self.folder.read_json(f"{rel}/metrics.json")
        return self.train_with(rule_probs(rule, self.train_features()), self.dir / rel, f"rule {rule}")

    def summary(self) -> dict:
        """summary.json (main process writes it)."""
        noisy = self.data.noisy_ids
        probs = SwiftSampler.load(self.dir / "sampler.json").probs(self.train_features()) if len(noisy) else None
        facts = RunFacts(self.task.name, self.task.metric, len(self.data.train), self.acc.num_processes,
                         str(self.acc.device), str(self.acc.mixed_precision), self.data.num_errors,
                         self.folder.seconds, noisy, probs)
        summary = build_summary(self.cfg, facts, self.folder.read_json("pretrain/metrics.json"),
                                self.folder.read_json("final/metrics.json"), read_jsonl(self.dir / "search" / "history.jsonl"))
        if self.acc.is_main_process:
            self.folder.write_json("summary.json", summary)
        metric = self.task.metric
        self.log("summary", {f"baseline_test_{metric}": summary["baseline"]["value"],
                             f"swift_test_{metric}": summary["swift"]["value"]}, 0)
        return summary

    def run(self, until: str = "report", sampler_path: str | Path | None = None) -> dict | None:
        """Run every phase up to ``until`` (inclusive), skipping finished ones."""
        if until not in PHASES:
            raise ValueError(f"unknown phase {until!r}; one of {PHASES}")
        stop, main = PHASES.index(until), self.acc.is_main_process
        self.prepare_dir(sampler_path)
        for phase, fn in (("pretrain", self.pretrain), ("features", self.features), ("search", self.search)):
            if stop >= PHASES.index(phase) and not (phase == "search" and sampler_path is not None):
                self.folder.timed(phase, fn, main)
        if stop < PHASES.index("final"):
            return None
        self.folder.timed("final", lambda: self.final(sampler_path), main)
        summary = self.summary()
        if stop >= PHASES.index("report") and main:
            from swift_scale.report.writer import write_report

            self.folder.timed("report", lambda: write_report(self.dir), main)
            summary["seconds"] = self.folder.seconds
            self.folder.write_json("summary.json", summary)
        self.acc.wait_for_everyone()
        return summary
