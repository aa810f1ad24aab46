"""Experiment tracking through accelerate's trackers (``train.log_with``: tensorboard, wandb, mlflow, …)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from swift_scale.config import Config, config_to_dict

__all__ = ["Tracking", "trackers_of", "accelerator_for"]


def accelerator_for(cfg: Config, logs_dir: Path):
    """The run's Accelerator: device, precision, trackers (logging under ``logs_dir``) and the collective timeout
    (``train.collective_timeout_min``; trials of one search round wait for each other at the gather)."""
    from accelerate import Accelerator, InitProcessGroupKwargs

    wait = InitProcessGroupKwargs(timeout=timedelta(minutes=cfg.train.collective_timeout_min))
    return Accelerator(cpu=cfg.train.cpu, mixed_precision=cfg.train.mixed_precision,
                       log_with=trackers_of(cfg) or None, project_dir=str(logs_dir), kwargs_handlers=[wait])


def trackers_of(cfg: Config) -> list[str]:
    """The tracker names of ``train.log_with`` (comma-separated; empty: none)."""
    return [t.strip() for t in cfg.train.log_with.split(",") if t.strip()]


class Tracking:
    """Logs numbers as ``prefix/key`` to the accelerator's trackers; a no-op when none is configured."""

    def __init__(self, cfg: Config, accelerator):
        self.cfg, self.acc, self.enabled = cfg, accelerator, bool(trackers_of(cfg))

    def start(self) -> None:
        """Open the trackers with the run's flattened config (once the run folder exists)."""
        if self.enabled:
            flat = {f"{sec}.{k}": v for sec, d in config_to_dict(self.cfg).items() if isinstance(d, dict)
                    for k, v in d.items() if isinstance(v, (int, float, str, bool))}
            self.acc.init_trackers(self.cfg.run.name, config=flat)

    def log(self, prefix: str, values: dict, step: int) -> None:
        """Send the numeric ``values`` as ``prefix/key`` at ``step``."""
        if self.enabled:
            self.acc.log({f"{prefix}/{k}": v for k, v in values.items() if isinstance(v, (int, float))}, step=step)

    def log_summary(self, summary: dict) -> None:
        """The baseline's and the swift sampler's headline test figures (the kept round's, with its number)."""
        metric = summary["baseline"]["metric"]
        self.log("summary", {f"baseline_{metric}": summary["baseline"]["value"],
                             f"swift_{metric}": summary["swift"]["value"],
                             "swift_round": summary.get("chosen_round", 1)}, 0)
