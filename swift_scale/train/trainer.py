"""Model building and the training wrapper of one run: every training (pretrain, trials, final, rules) goes
through :meth:`Trainer.fit` on the run's :class:`~swift_scale.data.splits.Data`."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from swift_scale.config import Config
from swift_scale.data.splits import Data, OnlineSelect
from swift_scale.train.loop import BatchRecorder, Checkpoints, TrainSpec, evaluate, train_model
from swift_scale.train.models import create_lm, create_model
from swift_scale.train.tasks import Task

__all__ = ["Trainer"]

Log = Callable[[str, dict, int], None]


class Trainer:
    """Builds models for ``data`` as ``cfg.model`` says and trains them with ``cfg.train``'s settings.

    Args:
        cfg: the run's config.
        accelerator: the run's accelerate ``Accelerator``.
        data: the run's data (it fixes the output width and, for LMs, the eos id).
        task: classification or LM.
        log: ``log(prefix, values, step)`` sends numbers to the trackers (default: nowhere).
    """

    def __init__(self, cfg: Config, accelerator, data: Data, task: Task, log: Log | None = None):
        self.cfg, self.acc, self.data, self.task = cfg, accelerator, data, task
        self.log = log or (lambda prefix, values, step: None)

    def on(self, accelerator) -> Trainer:
        """This trainer over another accelerator, e.g. a :class:`~swift_scale.train.groups.GroupAccelerator`
        (a trial trained by a group of the run's processes)."""
        return Trainer(self.cfg, accelerator, self.data, self.task, self.log)

    def new_model(self, state: dict | None = None) -> torch.nn.Module:
        """A fresh model initialised from ``seed`` (the same on every rank and rerun), then ``state`` if given."""
        m = self.cfg.model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            if self.cfg.data.task == "lm":
                eos = {"bos_token_id": self.data.eos_id, "eos_token_id": self.data.eos_id}
                model = create_lm(m.name, self.data.num_outputs, self.cfg.data.seq_len, m.checkpoint,
                                  **(eos | m.kwargs))
            else:
                model = create_model(m.name, self.data.num_outputs, m.in_chans, m.checkpoint, **m.kwargs)
        if state is not None:
            model.load_state_dict(state)
        return model

    def check_model(self) -> None:
        """Build the model on the meta device (no memory, no initialisation) with ``model.checkpoint`` loaded, so
        a checkpoint that does not fit is named before any phase runs."""
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "copying from a non-meta parameter … is a no-op": intended here
            self.new_model()

    def online_selector(self, sampler, state0: dict) -> OnlineSelect:
        """``data.online``: the frozen θ0 (``state0``) scores each window of candidates, ``sampler`` keeps b."""
        from swift_scale.sampler.stages import online_keep

        model0 = self.new_model(state0).to(self.acc.device).eval()
        seed = self.cfg.seed
        return lambda x, y, gids, pass_, keep: online_keep(sampler, model0, x, y, gids, keep, seed=seed, epoch=pass_)

    def state(self, model: torch.nn.Module) -> dict:
        """The model's weights on the CPU, detached (unwrapped from DDP)."""
        return {k: v.detach().cpu().clone() for k, v in self.acc.unwrap_model(model).state_dict().items()}

    def evaluate(self, model: torch.nn.Module, split: str) -> dict:
        """The task's metrics of ``model`` on ``val`` or ``test``."""
        return evaluate(self.acc, model, getattr(self.data, split), task=self.task)

    def fit(self, probs: np.ndarray | None, *, epochs: int, lr: float, ckpt_dir: Path | None = None,
            state: dict | None = None, desc: str = "train", eval_each_epoch: bool = True,
            hook: Callable[[int, torch.nn.Module], None] | None = None, online: OnlineSelect | None = None,
            recorder: BatchRecorder | None = None, keep_best: Path | None = None) -> tuple[torch.nn.Module, list[dict]]:
        """Train a fresh model (from ``state`` if given) for ``epochs`` epochs sampling ∝ ``probs``.

        Bad training rows are never drawn. With ``eval_each_epoch`` every epoch is scored on val and test and
        logged as ``desc/...``; ``hook(epoch, model)`` runs first (the pretrain phase saves θ0 there). With
        ``keep_best`` the weights of the epoch with the best val score are kept in that file (and its epoch and
        score in ``best.json`` beside it), surviving a resume.
        """
        t = self.cfg.train
        model = self.new_model(state)
        probs = self.data.sampling_weights(probs)

        def on_epoch(epoch: int, m: torch.nn.Module) -> dict:
            if hook is not None:
                hook(epoch, m)
            if not eval_each_epoch:
                return {}
            v, s = self.evaluate(m, "val"), self.evaluate(m, "test")
            m.train()
            row = {"val_accuracy": v["accuracy"], "val_loss": v["loss"], "test_accuracy": s["accuracy"],
                   "test_loss": s["loss"]}
            if "perplexity" in v:
                row.update(val_perplexity=v["perplexity"], test_perplexity=s["perplexity"])
            if keep_best is not None:
                self._keep_if_best(keep_best, epoch, self.task.score(v), m)
            self.log(desc, row, epoch)
            return row

        spec = TrainSpec(epochs, t.batch_size, lr, t.weight_decay, t.schedule, self.cfg.seed)  # type: ignore[arg-type]
        checkpoints = Checkpoints(ckpt_dir, t.checkpoint_steps) if ckpt_dir is not None else None
        curve = train_model(self.acc, model, self.data.train, probs=probs, spec=spec, task=self.task,
                            checkpoints=checkpoints, on_epoch=on_epoch, recorder=recorder, online=online,
                            desc=desc, progress=t.progress, epoch_bar=eval_each_epoch)
        return model, curve

    def _keep_if_best(self, path: Path, epoch: int, score: float, model: torch.nn.Module) -> None:
        """Save ``model`` to ``path`` when its val ``score`` beats the kept one (main process)."""
        from swift_scale.io import atomic_write_json, read_json, save_state_dict

        record = path.with_suffix(".json")
        kept = read_json(record, f"delete {path.parent}") if record.exists() else None
        if self.acc.is_main_process and (kept is None or score > kept["score"]):
            save_state_dict(path, self.state(model))
            atomic_write_json(record, {"epoch": epoch, "score": score})
        self.acc.wait_for_everyone()

    def metrics(self, model: torch.nn.Module, curve: list[dict]) -> dict:
        """What a finished training records: val and test metrics of its last epoch, the curve, and (when every
        epoch was scored) ``best``: the epoch with the best val score and its val and test metrics."""
        out = {"val": self.evaluate(model, "val"), "test": self.evaluate(model, "test"), "curve": curve}
        if curve and "val_loss" in curve[0]:
            out["best"] = best_epoch(curve, self.task)
        return out

    def train_to(self, out: Path, probs: np.ndarray | None, *, state: dict | None = None, desc: str = "train",
                 hook: Callable[[int, torch.nn.Module], None] | None = None, online: OnlineSelect | None = None,
                 recorder: BatchRecorder | None = None, epochs: int | None = None, lr: float | None = None,
                 keep_last: bool = False, before_commit: Callable[[dict], None] | None = None) -> dict:
        """A training (``train.epochs`` at ``train.lr`` unless given) with its checkpoints in ``out/ckpt``, its
        best-val weights in ``out/best.pt`` (``keep_last``: the last epoch's in ``out/last.pt`` too) and its
        metrics in ``out/metrics.json``, written last by the main process after ``before_commit(metrics)`` (on
        every rank): the file marks the training as done."""
        from swift_scale.io import atomic_write_json, save_state_dict

        t = self.cfg.train
        model, curve = self.fit(probs, epochs=epochs or t.epochs, lr=lr or t.lr, ckpt_dir=out / "ckpt",
                                state=state, desc=desc, hook=hook, online=online, recorder=recorder,
                                keep_best=out / "best.pt")
        metrics = self.metrics(model, curve)
        if keep_last and self.acc.is_main_process:
            save_state_dict(out / "last.pt", self.state(model))
        self.acc.wait_for_everyone()
        if before_commit is not None:
            before_commit(metrics)
        if self.acc.is_main_process:
            atomic_write_json(out / "metrics.json", metrics)
        self.acc.wait_for_everyone()
        self.acc.free_memory()
        return metrics


def best_epoch(curve: list[dict], task: Task) -> dict:
    """The curve's epoch with the best val score (the first of ties) as {"epoch", "val": {...}, "test": {...}}."""

    def split(row: dict, name: str) -> dict:
        out = {"accuracy": row[f"{name}_accuracy"], "loss": row.get(f"{name}_loss")}
        if f"{name}_perplexity" in row:
            out["perplexity"] = row[f"{name}_perplexity"]
        return out

    row = max(curve, key=lambda r: (task.score(split(r, "val")), -r["epoch"]))
    return {"epoch": row["epoch"], "val": split(row, "val"), "test": split(row, "test")}
