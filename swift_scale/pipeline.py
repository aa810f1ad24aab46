"""The whole run (DESIGN §1): index → pretrain → features → search → final → report, resumable per phase.

Each phase records its completion in the run folder; rerunning the same command skips finished phases and
continues unfinished ones (epoch checkpoints, finished shards, finished trials).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator

from swift_scale.config import Config, ConfigError, config_to_dict
from swift_scale.data import (
    DataError,
    ShardIndex,
    build_index,
    expand_shards,
    load_split,
    symmetric_label_noise,
)
from swift_scale.data.hf import hf_index, is_hf, load_hf_split, open_hf
from swift_scale.features.store import FeatureStore
from swift_scale.io import atomic_write_json, atomic_write_text
from swift_scale.sampler.swift import SwiftSampler, num_params, uniform_theta
from swift_scale.search.engine import SearchEngine
from swift_scale.train.loop import Split, evaluate, extract_features, train_model
from swift_scale.train.models import create_lm, create_model
from swift_scale.train.tasks import CLASSIFICATION, ClassificationTask, LMTask

__all__ = ["Pipeline", "PHASES"]

logger = logging.getLogger("swift_scale")
PHASES = ("index", "pretrain", "features", "search", "final", "report")


@dataclass
class Data:
    index: dict[str, ShardIndex]
    train: Split
    val: Split
    test: Split
    num_classes: int
    flipped: np.ndarray
    num_errors: int = 0
    train_valid: np.ndarray | None = None  # False for skipped training rows (never sampled)
    task: object = CLASSIFICATION


class Pipeline:
    """Runs the phases of one run folder. Build once per process; ``run(until=...)``."""

    def __init__(self, cfg: Config, accelerator: Accelerator | None = None):
        self.cfg = cfg
        self.dir = cfg.run_dir()
        trackers = [t.strip() for t in cfg.train.log_with.split(",") if t.strip()]
        self.acc = accelerator or Accelerator(cpu=cfg.train.cpu, mixed_precision=cfg.train.mixed_precision,
                                              log_with=trackers or None, project_dir=str(self.dir / "logs"))
        self.tracking = bool(trackers)
        self._data: Data | None = None
        self.seconds: dict[str, float] = {}

    # -- run folder -----------------------------------------------------------------------------------------
    def prepare_dir(self) -> None:
        """Create the run folder and save the resolved config; refuse a folder made by a different config."""
        saved = self.dir / "config.yaml"
        resolved = config_to_dict(self.cfg)
        if saved.exists():
            old = yaml.safe_load(saved.read_text()) or {}
            comparable = {k: v for k, v in resolved.items() if k != "run"}
            # keys added to swift_scale after the folder was made compare at their defaults
            defaults = config_to_dict(Config())
            old_cmp = {k: ({**defaults[k], **v} if isinstance(v, dict) and isinstance(defaults.get(k), dict) else v)
                       for k, v in old.items() if k != "run"}
            if comparable != old_cmp and not self.cfg.run.allow_changed_config:
                diff = sorted(f"{s}.{k}" for s in comparable if isinstance(comparable[s], dict)
                              for k in comparable[s] if old_cmp.get(s, {}).get(k) != comparable[s][k])
                diff += [s for s in comparable if not isinstance(comparable[s], dict) and old_cmp.get(s) != comparable[s]]
                raise ConfigError(f"{saved}: this run folder was made with a different config ({', '.join(diff[:4])}); "
                                  "use another run.name, or run.allow_changed_config=true to continue it anyway")
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(saved, yaml.safe_dump(resolved, sort_keys=False))
            timings = self.dir / "seconds.json"
            self.seconds = json.loads(timings.read_text()) if timings.exists() else {}
        self.acc.wait_for_everyone()
        if self.tracking:
            flat = {f"{sec}.{k}": v for sec, d in resolved.items() if isinstance(d, dict) for k, v in d.items()
                    if isinstance(v, (int, float, str, bool))}
            self.acc.init_trackers(self.cfg.run.name, config=flat)

    def log(self, prefix: str, values: dict, step: int) -> None:
        """Send numeric values to the configured accelerate trackers as ``prefix/key``."""
        if self.tracking:
            self.acc.log({f"{prefix}/{k}": v for k, v in values.items() if isinstance(v, (int, float))}, step=step)

    def _timed(self, phase: str, fn):
        t0 = time.time()
        out = fn()
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + time.time() - t0, 2)
        if self.acc.is_main_process:
            atomic_write_json(self.dir / "seconds.json", self.seconds)
        return out

    # -- data -----------------------------------------------------------------------------------------------
    def index(self) -> dict[str, ShardIndex]:
        path = self.dir / "index.json"
        d = self.cfg.data
        refs = {s: getattr(d, s) for s in ("train", "val", "test")}
        urls = {s: None if is_hf(r) else expand_shards(r, allow_pipe=d.allow_pipe, field=f"data.{s}")
                for s, r in refs.items()}
        stream_hf = d.mode == "streaming" and is_hf(refs["train"])  # data files, streamed one per shard
        hf_rows = {s: len(open_hf(r, f"data.{s}")) for s, r in refs.items()
                   if is_hf(r) and not (s == "train" and stream_hf)}
        if stream_hf:
            from swift_scale.data.stream import HFStreamCounter, hf_stream_files

            urls["train"] = hf_stream_files(refs["train"])
        for s, n in hf_rows.items():
            urls[s] = hf_index(refs[s], n).urls
        if path.exists():
            try:
                cached = {k: ShardIndex.from_dict(v) for k, v in json.loads(path.read_text()).items()}
            except (json.JSONDecodeError, KeyError, TypeError):
                cached = {}
            if all(s in cached and cached[s].urls == urls[s] for s in urls):
                return cached
        index = {s: hf_index(refs[s], hf_rows[s]) if s in hf_rows
                 else self._build_index(u, HFStreamCounter(u) if s == "train" and stream_hf else None)
                 for s, u in urls.items()}
        for s, idx in index.items():
            if idx.total == 0:
                raise DataError(f"data.{s}: the split is empty ({len(idx.urls)} shard(s) with no samples)")
        if self.acc.is_main_process:
            atomic_write_json(path, {s: i.to_dict() for s, i in index.items()})
        return index

    def _build_index(self, urls: list[str], count=None) -> ShardIndex:
        """Count every shard's samples, shards split over ranks (ordinal mod world) and the counts all-gathered.

        Each rank reads only its shards (tar headers; parquet footers; one column of other HF files); a bad
        shard is reported by every rank (no hang). ``count(ordinal)`` overrides the tar counter.
        """
        count = count or (lambda i: build_index([urls[i]]).counts[0])
        if self.acc.num_processes == 1:
            return ShardIndex(urls, [count(i) for i in range(len(urls))])
        from accelerate.utils import gather_object

        mine = []
        for i in range(self.acc.process_index, len(urls), self.acc.num_processes):
            try:
                mine.append((i, count(i), None))
            except DataError as e:
                mine.append((i, 0, str(e)))
        found = sorted(gather_object(mine))
        errors = [e for _, _, e in found if e]
        if errors:
            raise DataError(errors[0])
        return ShardIndex(urls, [c for _, c, _ in found])

    @property
    def data(self) -> Data:
        if self._data is None:
            self._data = self._load_data()
        return self._data

    def _load_data(self) -> Data:
        if self.cfg.data.task == "lm":
            return self._lm_data()
        index = self.index()
        d, m = self.cfg.data, self.cfg.model
        opts = dict(image_key=d.image_key, label_key=d.label_key, in_chans=m.in_chans, image_size=m.image_size,
                    on_error=d.on_error)
        splits = [s for s in index if s != "train" or d.mode == "indexed"]
        loaded = {s: load_hf_split(getattr(d, s), field=f"data.{s}", **opts) if is_hf(getattr(d, s))
                  else load_split(index[s], field=f"data.{s}", **opts) for s in splits}
        errors = [{"split": s, **e} for s, ld in loaded.items() for e in ld.errors]
        if errors:
            logger.warning("skipped %d bad sample(s) (data.on_error=skip), e.g. %s sample %r: %s; all in %s",
                           len(errors), errors[0]["url"], errors[0]["key"], errors[0]["reason"],
                           self.dir / "data_errors.json")
        if self.acc.is_main_process:
            atomic_write_json(self.dir / "data_errors.json", {"count": len(errors), "errors": errors})
        if d.mode == "streaming":
            return self._streaming_data(index, loaded)
        num_classes = d.num_classes or int(max(ld.labels[ld.valid].max() for ld in loaded.values())) + 1
        for s, ld in loaded.items():
            if ld.labels[ld.valid].max() >= num_classes:
                raise DataError(f"data.{s}: label {ld.labels[ld.valid].max()} >= data.num_classes={num_classes}")
        train = loaded["train"]
        noisy, flipped = symmetric_label_noise(train.labels, d.noise_rate, num_classes, d.noise_seed or self.cfg.seed)
        if self.acc.is_main_process and d.noise_rate > 0:
            atomic_write_json(self.dir / "noise.json", {"rate": d.noise_rate, "num_flipped": len(flipped),
                                                        "flipped_ids": flipped.tolist(),
                                                        "clean_labels": train.labels[flipped].tolist(),
                                                        "noisy_labels": noisy[flipped].tolist()})

        def split(x, y):
            return Split(torch.from_numpy(x), torch.from_numpy(y))

        def eval_split(ld):  # evaluation needs no global ids: drop skipped rows
            return split(ld.images[ld.valid], ld.labels[ld.valid])

        return Data(index, split(train.images, noisy), eval_split(loaded["val"]), eval_split(loaded["test"]),
                    num_classes, flipped, len(errors), None if train.valid.all() else train.valid)

    def _lm_data(self) -> Data:
        """Text → tokenizer (trained on the training split unless given) → packed sequences; noise by id."""
        from swift_scale.data.text import (
            corrupt_sequences,
            encode,
            is_token_shards,
            load_token_shards,
            load_tokenizer,
            pack,
            read_text,
            train_tokenizer,
            unigram_rarity,
        )
        from swift_scale.train.loop import TextSplit

        d = self.cfg.data
        refs = {s: getattr(d, s) for s in ("train", "val", "test")}
        shards = {s: is_token_shards(r) for s, r in refs.items()}
        if any(shards.values()) and not d.tokenizer:
            raise ConfigError("data.tokenizer: token shards need the tokenizer directory that wrote them")
        texts = {s: read_text(r, text_key=d.text_key, field=f"data.{s}") for s, r in refs.items() if not shards[s]}
        tok_dir = self.dir / "tokenizer"
        if not d.tokenizer and not (tok_dir / "tokenizer.json").exists() and self.acc.is_main_process:
            train_tokenizer(texts["train"], d.vocab_size, tok_dir)
        self.acc.wait_for_everyone()
        tok = load_tokenizer(d.tokenizer or tok_dir)
        vocab = len(tok)
        self._eos_id = tok.eos_token_id if tok.eos_token_id is not None else 0
        index, seqs = {}, {}
        for s, r in refs.items():
            if shards[s]:  # large corpora: tokenized once into shards; the real shard table gives the ids
                index[s] = self._build_index(expand_shards(r, allow_pipe=d.allow_pipe, field=f"data.{s}"))
                seqs[s] = load_token_shards(index[s], d.seq_len, field=f"data.{s}")
            else:
                seqs[s] = pack(encode(tok, texts[s]), d.seq_len)
                index[s] = hf_index(f"text:{s}", len(seqs[s]), 1024)
            if len(seqs[s]) == 0:
                raise DataError(f"data.{s}: fewer than data.seq_len={d.seq_len} tokens; give more text")
            if seqs[s].max() >= vocab:
                raise DataError(f"data.{s}: token id {seqs[s].max()} >= the tokenizer's {vocab}; wrong data.tokenizer")
        noisy, flipped = corrupt_sequences(seqs["train"], d.noise_rate, vocab, d.noise_seed or self.cfg.seed,
                                           d.noise_mode)
        if self.acc.is_main_process:
            atomic_write_json(self.dir / "index.json", {s: i.to_dict() for s, i in index.items()})
            atomic_write_json(self.dir / "data_errors.json", {"count": 0, "errors": []})
            if d.noise_rate > 0:
                atomic_write_json(self.dir / "noise.json", {"rate": d.noise_rate, "mode": d.noise_mode,
                                                            "num_flipped": len(flipped),
                                                            "flipped_ids": flipped.tolist()})

        def split(x):
            t = torch.from_numpy(x)
            return TextSplit(t, t)

        return Data(index, split(noisy), split(seqs["val"]), split(seqs["test"]), vocab, flipped, 0, None,
                    task=LMTask(unigram_rarity(seqs["train"], vocab)))

    def _streaming_data(self, index: dict[str, ShardIndex], loaded: dict) -> Data:
        from swift_scale.data.stream import StreamingSplit

        d, m = self.cfg.data, self.cfg.model
        num_classes = d.num_classes or int(max(ld.labels[ld.valid].max() for ld in loaded.values())) + 1
        image_key, label_key, stream = d.image_key, d.label_key, None
        if is_hf(index["train"].urls[0]):  # HF columns, with the usual fallbacks
            from swift_scale.data.hf import pick_column
            from swift_scale.data.stream import hf_stream_columns, hf_stream_open

            stream = hf_stream_open(index["train"].urls)
            names = hf_stream_columns(stream)
            image_key = pick_column(names, d.image_key, ("image", "img", "pixel_values"), "data.train", "image_key")
            label_key = pick_column(names, d.label_key, ("label", "labels", "cls"), "data.train", "label_key")
        train = StreamingSplit(index["train"], image_key=image_key, label_key=label_key, in_chans=m.in_chans,
                               image_size=m.image_size, num_classes=num_classes, noise_rate=d.noise_rate,
                               noise_seed=d.noise_seed, seed=self.cfg.seed, oversample=d.oversample,
                               shuffle_buffer=d.shuffle_buffer, num_workers=d.num_workers, on_error=d.on_error,
                               sample_shape=loaded["val"].images.shape[1:], hf_dataset=stream)
        if self.acc.is_main_process and d.noise_rate > 0:  # labels are only read while streaming: ids + shifts
            atomic_write_json(self.dir / "noise.json", {"rate": d.noise_rate, "num_flipped": len(train.flipped),
                                                        "flipped_ids": train.flipped.tolist(),
                                                        "class_shift": train.shift.tolist()})

        def split(ld):
            return Split(torch.from_numpy(ld.images[ld.valid]), torch.from_numpy(ld.labels[ld.valid]))

        return Data(index, train, split(loaded["val"]), split(loaded["test"]), num_classes, train.flipped, 0, None)

    # -- helpers --------------------------------------------------------------------------------------------
    @property
    def task(self):
        return self.data.task

    def new_model(self, state: dict | None = None) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            m = self.cfg.model
            if self.cfg.data.task == "lm":
                eos = {"bos_token_id": self._eos_id, "eos_token_id": self._eos_id}
                model = create_lm(m.name, self.data.num_classes, self.cfg.data.seq_len, m.checkpoint,
                                  **(eos | m.kwargs))
            else:
                model = create_model(m.name, self.data.num_classes, m.in_chans, m.checkpoint, **m.kwargs)
        if state is not None:
            model.load_state_dict(state)
        return model

    def _online(self, sampler: SwiftSampler | None):
        """The online selector (data.online): frozen θ0 scores each candidate window, the sampler keeps b."""
        if sampler is None or not self.cfg.data.online:
            return None
        from swift_scale.sampler.stages import online_keep

        model0 = self.new_model(self.theta0()).to(self.acc.device).eval()
        seed = self.cfg.seed

        def select(x, y, gids, pass_, keep):
            return online_keep(sampler, model0, x, y, gids, keep, seed=seed, epoch=pass_)

        return select

    def _train(self, probs, epochs, lr, ckpt_dir, state=None, desc="train", eval_each_epoch=True, hook=None,
               sampler=None):
        """Train a fresh model (from ``state`` if given) for ``epochs`` epochs sampling ∝ ``probs``.

        With ``eval_each_epoch`` every epoch is scored on val and test, logged to the trackers as ``desc/...``;
        ``hook(epoch, model)`` runs first (the pretrain phase saves θ0 there).
        """
        t = self.cfg.train
        model = self.new_model(state)
        valid = self.data.train_valid
        if valid is not None and (probs is not None or self.cfg.data.mode == "indexed"):
            # skipped (bad) samples keep their row and id but are never drawn (a uniform streaming pass reads
            # every id and leaves the bad ones out of their batches)
            probs = (np.full(len(valid), 1.0) if probs is None else np.asarray(probs, dtype=np.float64)) * valid
            probs = probs / probs.sum() if probs.sum() > 0 else valid / valid.sum()

        def on_epoch(epoch, m):
            if hook is not None:
                hook(epoch, m)
            if not eval_each_epoch:
                return {}
            v = evaluate(self.acc, m, self.data.val, task=self.task)
            s = evaluate(self.acc, m, self.data.test, task=self.task)
            m.train()
            row = {"val_accuracy": v["accuracy"], "val_loss": v["loss"], "test_accuracy": s["accuracy"]}
            if "perplexity" in v:
                row.update(val_perplexity=v["perplexity"], test_perplexity=s["perplexity"])
            self.log(desc, row, epoch)
            return row

        curve = train_model(self.acc, model, self.data.train, probs=probs, epochs=epochs, batch_size=t.batch_size,
                            lr=lr, weight_decay=t.weight_decay, seed=self.cfg.seed, ckpt_dir=ckpt_dir,
                            on_epoch=on_epoch, desc=desc, progress=t.progress, schedule=t.schedule,
                            checkpoint_steps=t.checkpoint_steps, task=self.task, online=self._online(sampler))
        return model, curve

    def _unwrapped_state(self, model) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.acc.unwrap_model(model).state_dict().items()}

    def _finish_training(self, model, curve, out: Path) -> dict:
        metrics = {"val": evaluate(self.acc, model, self.data.val, task=self.task),
                   "test": evaluate(self.acc, model, self.data.test, task=self.task),
                   "curve": curve}
        if self.acc.is_main_process:
            atomic_write_json(out / "metrics.json", metrics)
        self.acc.wait_for_everyone()
        return metrics

    # -- phases ---------------------------------------------------------------------------------------------
    def pretrain(self) -> dict:
        out = self.dir / "pretrain"
        if (out / "metrics.json").exists():
            return json.loads((out / "metrics.json").read_text())
        theta0_epoch = self.cfg.search.theta0_epoch or self.cfg.train.epochs

        def save_theta0(epoch, m):
            if epoch == theta0_epoch and self.acc.is_main_process:
                tmp = out / ".theta0.pt.tmp"
                torch.save(self._unwrapped_state(m), tmp)
                tmp.replace(out / "theta0.pt")

        out.mkdir(parents=True, exist_ok=True)
        model, curve = self._train(None, self.cfg.train.epochs, self.cfg.train.lr, out / "ckpt", desc="pretrain",
                                   hook=save_theta0)
        metrics = self._finish_training(model, curve, out)
        self.acc.free_memory()
        return metrics

    def theta0(self) -> dict:
        return torch.load(self.dir / "pretrain" / "theta0.pt", map_location="cpu", weights_only=True)

    def features(self) -> FeatureStore:
        store_dir = self.dir / "features"
        if (store_dir / "meta.json").exists():
            store = FeatureStore(store_dir)
            if store.complete:
                return self._note_streaming_skips(store)
        model = self.acc.prepare(self.new_model(self.theta0()))
        idx = self.data.index["train"]
        store = extract_features(self.acc, model, self.data.train, store_dir, idx.offsets, idx.counts,
                                 self.cfg.features.batch_size, self.cfg.features.quantile_points,
                                 self.cfg.train.progress, task=self.task)
        self.acc.free_memory()
        return self._note_streaming_skips(store)

    def _note_streaming_skips(self, store: FeatureStore) -> FeatureStore:
        """Streaming with ``data.on_error=skip``: the features pass is where bad training samples are found (their
        shards' done markers list them). From then on they are never sampled, and they are reported in
        data_errors.json and summary.json like the indexed mode's."""
        if self.cfg.data.mode != "streaming" or self.data.train_valid is not None:
            return store
        by_id = {e["id"]: e for info in store.done_info().values() for e in info.get("skipped", [])}
        skipped = [by_id[k] for k in sorted(by_id)]
        if not skipped:
            return store
        valid = np.ones(len(self.data.train), dtype=bool)
        valid[[e["id"] for e in skipped]] = False
        self.data.train_valid, self.data.num_errors = valid, self.data.num_errors + len(skipped)
        logger.warning("skipped %d bad training sample(s) (data.on_error=skip), e.g. %s sample %r: %s; all in %s",
                       len(skipped), skipped[0]["url"], skipped[0]["key"], skipped[0]["reason"],
                       self.dir / "data_errors.json")
        if self.acc.is_main_process:
            errors = json.loads((self.dir / "data_errors.json").read_text())["errors"]
            errors = [e for e in errors if e["split"] != "train"] + [{"split": "train", **e} for e in skipped]
            atomic_write_json(self.dir / "data_errors.json", {"count": len(errors), "errors": errors})
        return store

    def _train_features(self, store: FeatureStore) -> dict[str, np.ndarray]:
        return {n: np.ascontiguousarray(store.column(n)) for n in store.feature_names}

    def make_sampler(self, theta, store: FeatureStore, feats: dict[str, np.ndarray]) -> SwiftSampler:
        names = self.cfg.sampler.features
        if self.task.name != "classification" and tuple(names) == ClassificationTask.default_sampler_features:
            names = list(self.task.default_sampler_features)  # the default pair, for this task's features
        for n in names:
            if n not in store.feature_names:
                raise ConfigError(f"sampler.features: {n!r} is not a stored feature ({store.feature_names})")
        q = {n: store.quantiles(n) for n in names}
        return SwiftSampler.from_theta(theta, names, q, self.cfg.sampler.transform).fit(feats)

    def search(self) -> dict:
        s = self.cfg.search
        store = self.features()
        feats = self._train_features(store)
        segments = self.cfg.sampler.segments
        engine = SearchEngine(self.dir / "search" / "history.jsonl", dim=num_params(segments), strategy=s.strategy,
                              seed=self.cfg.seed, n_init=s.n_init, beta=s.beta, num_restarts=s.num_restarts,
                              raw_samples=s.raw_samples, first=uniform_theta(segments))
        state0 = self.theta0()
        lr = s.lr or self.cfg.train.lr
        while engine.num_trials < s.trials:
            # every rank proposes the same θ: the engine is deterministic given the shared history file
            trial = engine.ask()
            score, error = None, None
            try:
                sampler = self.make_sampler(trial.theta, store, feats)
                model, _ = self._train(sampler.probs(feats), s.finetune_epochs, lr, None, state=state0,
                                       desc=f"trial {trial.index}", eval_each_epoch=False, sampler=sampler)
                score = self.task.score(evaluate(self.acc, model, self.data.val, task=self.task))
            except Exception as e:  # noqa: BLE001 - any failure inside a trial is recorded, never fatal
                error = f"{type(e).__name__}: {e}"
            self.acc.free_memory()
            self.acc.wait_for_everyone()
            rec = engine.tell(trial, score, error=error, persist=self.acc.is_main_process)
            self.acc.wait_for_everyone()
            best = engine.best()
            self.log("search", {"score": rec["score"] if rec["score"] is not None else float("nan"),
                                "best_so_far": best["score"] if best else float("nan")}, trial.index)
            if self.acc.is_main_process:
                logger.info("trial %d score %s (best %.4f)", trial.index, rec["score"], best["score"] if best else float("nan"))
        best = engine.best()
        if best is None:
            first = next((r.get("error") for r in engine.history if r.get("error")), "unknown")
            raise RuntimeError(f"every search trial failed (first: {first}); see {engine.path}")
        sampler = self.make_sampler(np.asarray(best["params"]), store, feats)
        sampler.info = {"trial": best["trial"], "val_score": best["score"], "model": self.cfg.model.name,
                        "run": str(self.dir)}
        if self.acc.is_main_process:
            sampler.save(self.dir / "sampler.json")
        self.acc.wait_for_everyone()  # other ranks read sampler.json next
        return best

    def _train_phase(self, out: Path, probs: np.ndarray, desc: str, sampler: SwiftSampler | None = None) -> dict:
        """Train with ``probs`` for the full budget (from scratch unless train.final_from_scratch=false)."""
        out.mkdir(parents=True, exist_ok=True)
        state = None if self.cfg.train.final_from_scratch else self.theta0()
        model, curve = self._train(probs, self.cfg.train.epochs, self.cfg.train.lr, out / "ckpt", state=state,
                                   desc=desc, sampler=sampler)
        metrics = self._finish_training(model, curve, out)
        self.acc.free_memory()
        return metrics

    def final(self, sampler_path: str | Path | None = None) -> dict:
        out = self.dir / "final"
        if (out / "metrics.json").exists() and sampler_path is None:
            return json.loads((out / "metrics.json").read_text())
        sampler = SwiftSampler.load(sampler_path or self.dir / "sampler.json")
        if sampler_path is not None and self.acc.is_main_process:
            sampler.info = {**sampler.info, "source": str(sampler_path)}
            sampler.save(self.dir / "sampler.json")
        self.acc.wait_for_everyone()
        store = self.features()
        return self._train_phase(out, sampler.probs(self._train_features(store)), "final", sampler)

    def rule(self, rule: str) -> dict:
        """Train with a hand rule (:mod:`swift_scale.sampler.rules`, e.g. ``drop_top_loss:0.2``) at the final
        budget, into ``rules/<rule>/``; the comparison the benchmarks report next to uniform and SS."""
        from swift_scale.sampler.rules import rule_probs

        out = self.dir / "rules" / rule.replace(":", "_")
        if (out / "metrics.json").exists():
            return json.loads((out / "metrics.json").read_text())
        probs = rule_probs(rule, self._train_features(self.features()))
        return self._train_phase(out, probs, f"rule {rule}")

    def summary(self) -> dict:
        pre = json.loads((self.dir / "pretrain" / "metrics.json").read_text())
        fin = json.loads((self.dir / "final" / "metrics.json").read_text())
        hist_path = self.dir / "search" / "history.jsonl"
        engine = SearchEngine(hist_path, dim=num_params(self.cfg.sampler.segments)) if hist_path.exists() else None
        best = engine.best() if engine else None
        metric = self.task.metric
        summary = {
            "task": self.task.name,
            "dataset": self.cfg.data.train,
            "model": self.cfg.model.name,
            "noise_rate": self.cfg.data.noise_rate,
            "num_train": len(self.data.train),
            "baseline": {"metric": f"test_{metric}", "value": pre["test"][metric],
                         f"val_{metric}": pre["val"][metric]},
            "swift": {"metric": f"test_{metric}", "value": fin["test"][metric], f"val_{metric}": fin["val"][metric]},
            "search": {"trials": engine.num_trials, "failed": sum(r["status"] != "ok" for r in engine.history),
                       "best_score": best["score"], "best_trial": best["trial"], "strategy": self.cfg.search.strategy,
                       "uniform_score": engine.history[0]["score"]} if best else
                      {"trials": 0, "best_score": None, "sampler": "transferred"},
            "seconds": self.seconds,
            "world_size": self.acc.num_processes,
            "data_errors": self.data.num_errors,
            "device": str(self.acc.device),
            "mixed_precision": self.cfg.train.mixed_precision,
            "seed": self.cfg.seed,
        }
        if len(self.data.flipped):
            from swift_scale.report.metrics import noise_auroc

            store = FeatureStore(self.dir / "features")
            sampler = SwiftSampler.load(self.dir / "sampler.json")
            probs = sampler.probs(self._train_features(store))
            summary["noise_detection_auroc"] = noise_auroc(probs, self.data.flipped)
        if self.acc.is_main_process:
            atomic_write_json(self.dir / "summary.json", summary)
        self.log("summary", {f"baseline_test_{metric}": summary["baseline"]["value"],
                             f"swift_test_{metric}": summary["swift"]["value"]}, 0)
        return summary

    def run(self, until: str = "report", sampler_path: str | Path | None = None) -> dict | None:
        """Run every phase up to ``until`` (inclusive), skipping finished ones."""
        if until not in PHASES:
            raise ValueError(f"unknown phase {until!r}; one of {PHASES}")
        stop = PHASES.index(until)
        self.prepare_dir()
        self._timed("index", lambda: self.data)
        if stop >= 1:
            self._timed("pretrain", self.pretrain)
        if stop >= 2:
            self._timed("features", self.features)
        if stop >= 3 and sampler_path is None:
            self._timed("search", self.search)
        if stop >= 4:
            self._timed("final", lambda: self.final(sampler_path))
            summary = self.summary()
        else:
            return None
        if stop >= 5 and self.acc.is_main_process:
            from swift_scale.report.writer import write_report

            self._timed("report", lambda: write_report(self.dir))
            summary["seconds"] = self.seconds
            atomic_write_json(self.dir / "summary.json", summary)
        self.acc.wait_for_everyone()
        return summary
