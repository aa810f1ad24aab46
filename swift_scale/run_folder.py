"""The run folder's bookkeeping: where it may be, the saved config, phase timings, weights and JSON records.

Contract (docs/design.md §4): ``runs/<run.name>/`` (or ``run.out_dir``) holds ``config.yaml`` (the resolved
config, written first), ``seconds.json`` (wall time per phase) and one file or folder per phase. Everything here
is checked *before* any phase runs, so a wrong folder or config is a one-line error that leaves the folder as it
was. Methods that write are called on the main process only; the pipeline places the barriers.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from swift_scale.config import Config, ConfigError, config_to_dict
from swift_scale.io import atomic_write_json, atomic_write_text, load_state_dict, read_json, save_state_dict

__all__ = ["RunFolder"]

logger = logging.getLogger("swift_scale")

T = TypeVar("T")


COSMETIC = {("train", "progress")}  # settings that change what is shown, never what is computed


def _without_cosmetic(cfg: dict) -> dict:
    return {k: ({f: x for f, x in v.items() if (k, f) not in COSMETIC} if isinstance(v, dict) else v)
            for k, v in cfg.items()}


class RunFolder:
    """One run's folder (``cfg.run_dir()``)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.root = cfg.run_dir()
        self.seconds: dict[str, float] = {}

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    # -- before anything runs -------------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse a folder that cannot be this run's: a file, someone else's folder, an unwritable place, or a
        run folder made with a different config (unless ``run.allow_changed_config``). Changes nothing."""
        key = "run.out_dir" if self.cfg.run.out_dir else "run.name"
        root = self.root
        if root.exists() and not root.is_dir():
            raise ConfigError(f"{key}: {root} is a file, not a folder; choose another {key}")
        if root.is_dir():
            if not (root / "config.yaml").is_file() and any(root.iterdir()):
                raise ConfigError(f"{key}: {root} holds files but is not a swift_scale run folder (no config.yaml); "
                                  "choose an empty or new folder so nothing of yours is overwritten")
            self._check_saved_config()
        parent = next((p for p in (root, *root.parents) if p.exists()), Path("."))
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"{key}: {parent} is not writable; choose a folder you can write to")

    def check_records(self) -> None:
        """Read every record a resumed run would read (phase metrics, θ0, checkpoints' commit points, the
        feature store, the search history, the sampler), so a damaged one is named before any phase runs rather
        than half way through. Changes nothing."""
        from swift_scale.features.store import FeatureStore
        from swift_scale.io import read_jsonl
        from swift_scale.sampler.swift import SwiftSampler

        for rel in ("pretrain/metrics.json", "final/metrics.json", "pretrain/ckpt/state.json",
                    "final/ckpt/state.json", *(str(p.relative_to(self.root)) for p in self.root.glob("rules/*/metrics.json"))):
            if self.has(rel):
                self.read_json(rel)
        if self.has("pretrain/theta0.pt"):
            self.load_weights("pretrain/theta0.pt")
        if self.has("features/meta.json"):
            FeatureStore(self.path("features"))
        if self.has("search/history.jsonl"):
            read_jsonl(self.path("search", "history.jsonl"))
        if self.has("sampler.json"):
            SwiftSampler.load(self.path("sampler.json"))

    def _check_saved_config(self) -> None:
        saved = self.path("config.yaml")
        if not saved.exists():
            return
        try:
            old = yaml.safe_load(saved.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f"{saved}: unreadable ({type(e).__name__}); move the folder away to start over") from None
        if not isinstance(old, dict):
            raise ConfigError(f"{saved}: not a swift_scale run config (not a mapping); choose another run folder")
        resolved = config_to_dict(self.cfg)
        comparable = _without_cosmetic({k: v for k, v in resolved.items() if k != "run"})
        # keys added to swift_scale after the folder was made compare at their defaults
        defaults = config_to_dict(Config())
        old_cmp = _without_cosmetic({k: ({**defaults[k], **v} if isinstance(v, dict) and isinstance(defaults.get(k), dict)
                                         else v) for k, v in old.items() if k != "run"})
        if comparable != old_cmp and not self.cfg.run.allow_changed_config:
            diff = sorted(f"{s}.{k}" for s in comparable if isinstance(comparable[s], dict)
                          for k in comparable[s] if (old_cmp.get(s) or {}).get(k) != comparable[s][k])
            diff += [s for s in comparable if not isinstance(comparable[s], dict) and old_cmp.get(s) != comparable[s]]
            raise ConfigError(f"{saved}: this run folder was made with a different config ({', '.join(diff[:4])}); "
                              "use another run.name, or run.allow_changed_config=true to continue it anyway")

    # -- writing (main process) -----------------------------------------------------------------------------
    def create(self, records: dict[str, Any] | None = None) -> None:
        """Make the folder, save the resolved config (first), then ``records`` (relative path → a JSON-able
        object, or an object with ``save_pretrained``), and load the timings recorded so far."""
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path("config.yaml"), yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False))
        for rel, obj in (records or {}).items():
            if hasattr(obj, "save_pretrained"):
                from swift_scale.data.text import save_tokenizer

                save_tokenizer(obj, self.path(rel))
            else:
                atomic_write_json(self.path(rel), obj)
        timings = self.path("seconds.json")
        recorded = read_json(timings, "delete it") if timings.exists() else {}
        for phase, seconds in self.seconds.items():  # timed before the folder existed (the index phase)
            recorded[phase] = round(recorded.get(phase, 0.0) + seconds, 2)
        self.seconds = recorded

    def timed(self, phase: str, fn: Callable[[], T], write: bool) -> T:
        """Run ``fn``, adding its wall time to ``seconds.json`` (written when ``write``)."""
        t0 = time.time()
        out = fn()
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + time.time() - t0, 2)
        if write:
            atomic_write_json(self.path("seconds.json"), self.seconds)
        return out

    def write_json(self, rel: str, obj: Any) -> None:
        atomic_write_json(self.path(rel), obj)

    def read_json(self, rel: str) -> Any:
        """A record of a finished phase; a damaged one names the file and what to delete."""
        path = self.path(rel)
        return read_json(path, f"delete {path.parent if path.parent != self.root else path} to redo that phase")

    def record_data_errors(self, split: str, entries: list[dict]) -> None:
        """Replace ``split``'s entries of ``data_errors.json`` by ``entries``."""
        errors = [e for e in self.read_json("data_errors.json")["errors"] if e["split"] != split]
        errors += [{"split": split, **e} for e in entries]
        self.write_json("data_errors.json", {"count": len(errors), "errors": errors})

    def note_skipped(self, data, store, main: bool):
        """Streaming with ``data.on_error=skip``: the features pass finds the bad training samples (their shards'
        done markers list them). From then on they are never sampled and are reported like the indexed mode's."""
        if self.cfg.data.mode == "streaming" and data.train_valid is None and (skipped := store.skipped()):
            data.exclude(skipped)
            logger.warning("skipped %d bad training sample(s) (data.on_error=skip), e.g. %s sample %r: %s; all in %s",
                           len(skipped), skipped[0]["url"], skipped[0]["key"], skipped[0]["reason"],
                           self.root / "data_errors.json")
            if main:
                self.record_data_errors("train", skipped)
        return store

    def has(self, rel: str) -> bool:
        return self.path(rel).exists()

    def save_weights(self, rel: str, state: dict) -> None:
        save_state_dict(self.path(rel), state)

    def load_weights(self, rel: str) -> dict:
        path = self.path(rel)
        return load_state_dict(path, name=rel, fix=f"delete {path.parent} to redo that phase")

    # -- pretraining's checkpoints: θ0 (scores the features) and the trials' start -------------------------------
    def pretrain_epoch(self, choice: str, metrics: dict) -> int:
        """The epoch ``best`` / ``last`` / a number names in a finished pretraining."""
        if self.cfg.search.theta0_epoch:
            return self.cfg.search.theta0_epoch
        return self._named_epoch(choice, metrics)

    def _named_epoch(self, choice: str, metrics: dict) -> int:
        if choice == "best":
            return int(metrics["best"]["epoch"])
        return self.cfg.train.epochs if choice == "last" else int(choice)

    def dynamics_epoch(self, metrics: dict) -> int:
        """The epoch the training dynamics average up to (``features.dynamics_until``) in a finished pretraining
        (``search.theta0_epoch`` does not override it: it picks weights, not the dynamics)."""
        return self._named_epoch(self.cfg.features.dynamics_until, metrics)

    def dynamics_keep(self) -> list[int]:
        """The epochs whose dynamics a running pretraining keeps: its best-val epoch so far (read from
        ``pretrain/best.json``, which the epoch's scoring writes before its checkpoint; kept whatever
        ``features.dynamics_until`` says, so the choice can change on a finished pretraining) and a fixed epoch."""
        until = self.cfg.features.dynamics_until
        keep = [int(until)] if until.isdigit() else []
        record = self.path("pretrain/best.json")
        if record.exists():
            keep.append(int(read_json(record, f"delete {record.parent} to redo the pretraining")["epoch"]))
        return keep

    def fixed_pretrain_epochs(self) -> set[int]:
        """Epochs whose weights the pretraining must keep as it goes (besides its best-val and last)."""
        choices = (str(self.cfg.search.theta0_epoch),) if self.cfg.search.theta0_epoch else (
            self.cfg.features.epoch, self.cfg.search.start_epoch)
        return {int(c) for c in choices if c.isdigit()}

    def publish_pretrain_weights(self, metrics: dict) -> None:
        """Copy the chosen epochs' weights to ``pretrain/theta0.pt`` (features) and ``pretrain/start.pt``
        (trials) and note the epochs in ``metrics`` (main process, before metrics.json is written)."""
        for name, choice in (("theta0", self.cfg.features.epoch), ("start", self.cfg.search.start_epoch)):
            epoch = self.pretrain_epoch(choice, metrics)
            best = metrics.get("best", {}).get("epoch")
            src = ("last.pt" if epoch == self.cfg.train.epochs else "best.pt" if epoch == best else f"epoch{epoch}.pt")
            self.save_weights(f"pretrain/{name}.pt", self.load_weights(f"pretrain/{src}"))
            metrics[f"{name}_epoch"] = epoch

    def load_timings(self) -> None:
        """The timings written by the main process (other ranks read them for the summary)."""
        timings = self.path("seconds.json")
        if timings.exists():
            self.seconds = json.loads(timings.read_text())
