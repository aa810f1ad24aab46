"""Configuration: one dataclass per concern. Defaults → YAML (``yaml.safe_load``) → dotted CLI overrides.

Every field's docstring (the string under it) is the user-facing help. Validation raises :class:`ConfigError`
with one line naming the field and the fix; the CLI turns it into exit status 2.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

HF_STREAM_BUILDERS = ("parquet", "arrow", "json", "csv")  # hf:BUILDER:FILES that data.mode=streaming reads
# sanity bounds: a value beyond these is a typo (train.epochs=10**12), refused before anything runs
MAX_EPOCHS, MAX_TRIALS, MAX_BATCH = 100_000, 100_000, 1 << 24

__all__ = ["Config", "ConfigError", "load_config", "apply_overrides", "config_to_dict", "config_hash",
           "DYNAMICS_FEATURES", "later_round_features"]

#: The training-dynamics features (:mod:`swift_scale.features.dynamics`), named here so configs can be checked.
DYNAMICS_FEATURES: tuple[str, ...] = ("dyn_loss", "aum", "wrong_frac")


def later_round_features(names: list[str]) -> list[str]:
    """``sampler.features`` in the rounds after the first (``search.rounds``): their features are scored by the
    previous round's final model, which has no training dynamics, so each dynamics feature becomes its ``loss``."""
    return ["loss" if n in DYNAMICS_FEATURES else n for n in names]


class ConfigError(ValueError):
    """A user-fixable configuration error (one line: the field, what is wrong, how to fix it)."""


@dataclass
class RunConfig:
    name: str = "swift"
    """Run folder name under ``runs/`` (ignored when ``out_dir`` is set)."""
    out_dir: str | None = None
    """Explicit run folder; default ``runs/<name>``."""
    allow_changed_config: bool = False
    """Reuse a run folder whose saved config differs (otherwise refused, to protect earlier results)."""


@dataclass
class DataConfig:
    train: str = ""
    """Training data: a WebDataset pattern such as ``data/digits/train-{000000..000003}.tar``, or a Hugging Face
    dataset: ``hf:DIR`` / ``hf:DIR#SPLIT`` (``save_to_disk``) or ``hf:BUILDER:FILES`` (``hf:parquet:/d/*.parquet``).
    With ``mode=streaming``, ``hf:BUILDER:FILES`` (parquet, arrow, json, csv) is streamed as a
    ``datasets.IterableDataset``, one shard per file (``hf:arrow:DIR`` reads a ``save_to_disk`` folder's files),
    and so is a Hub dataset, ``hf:hub:ORG/NAME[@REVISION][:CONFIG][#SPLIT]`` (its data files resolved once)."""
    val: str = ""
    """Validation shards (scored by the search; keep them clean)."""
    test: str = ""
    """Test shards (only reported, never used to choose anything)."""
    image_key: str = "png"
    """Sample field holding the image (decoded with PIL, grayscale or RGB per ``model.in_chans``); for ``hf:``
    sources a missing key falls back to the ``image`` column."""
    label_key: str = "cls"
    """Sample field holding the integer class label (``hf:`` sources fall back to ``label``)."""
    num_classes: int = 0
    """Number of classes; 0 = infer as max label + 1 over train/val/test."""
    noise_rate: float = 0.0
    """Fraction of training labels flipped (see ``noise_kind``), in [0, 1); the flipped ids are recorded."""
    noise_kind: str = "symmetric"
    """Label noise: ``symmetric`` (a flipped label moves to a uniformly chosen other class) or ``pair``
    (class-conditional pair flips c → c + 1 mod C)."""
    noise_seed: int = 0
    """Seed of the noise (0 = use the top-level ``seed``); the flipped ids are saved in ``noise.json``."""
    on_error: str = "skip"
    """A bad sample (undecodable image, missing field or label, wrong shape): ``skip`` it — counted per
    (shard, key) in ``data_errors.json`` and summary.json, never sampled — or ``fail`` at once. In streaming
    mode bad samples are left out of their batches and found by the features pass, after which they are never
    sampled."""
    allow_pipe: bool = False
    """Allow ``pipe:`` shard URLs (they run shell commands; off unless you trust the config)."""
    task: str = "classification"
    """``classification`` (images + class labels) or ``lm`` (language modelling on text; see ``seq_len``,
    ``tokenizer``, ``text_key``; ``model.name: gpt2``)."""
    text_key: str = "text"
    """LM: the text column of an ``hf:`` source."""
    seq_len: int = 128
    """LM: tokens per packed training sequence (one example = one sequence)."""
    tokenizer: str = ""
    """LM: a local tokenizer directory; empty = train a byte-level BPE on the training split (saved in the run)."""
    vocab_size: int = 8192
    """LM: vocabulary of the BPE trained when ``tokenizer`` is empty."""
    noise_mode: str = "replace"
    """LM noise: a ``noise_rate`` fraction of training sequences gets every token ``replace``d by a random token,
    or its tokens ``shuffle``d, or becomes a ``duplicate`` of one of a few other sequences (each copied about
    ``dup_repeats`` times: the near-duplicate boilerplate of real corpora); the noisy ids are in ``noise.json``."""
    noise_unit: str = "sequence"
    """LM noise: choose single ``sequence``s, or whole ``document``s (every sequence starting in a chosen document;
    documents are blank-line-separated blocks of a text file, or rows of an HF text column); with documents
    summary.json also reports the sampler's noise detection per document."""
    dup_repeats: int = 50
    """LM ``noise_mode=duplicate``: about how many copies each duplicated source sequence gets."""
    tokenizer_sample_mb: int = 64
    """LM streaming without ``tokenizer``: the BPE is trained on the first this many MB of the training text."""
    mode: str = "indexed"
    """``indexed``: decode the training split into memory and draw epochs ∝ p. ``streaming``: read the training
    shards every pass (for data that does not fit in memory) and keep 1/``oversample`` of the candidates ∝ p,
    decided from the global id before decoding; val/test are still held in memory. Language models stream token
    shards, or text files / ``hf:BUILDER:FILES`` text tokenized once into a cache beside the run
    (``runs/<name>.tokens``)."""
    oversample: float = 2.0
    """Streaming mode (and indexed with ``draw=passes``): candidates per kept sample (2 = take 2B, keep B); a
    sampled run makes ``epochs × oversample`` passes so its optimizer steps match the uniform run's."""
    draw: str = "replacement"
    """Indexed mode: how a sampled epoch draws ids. ``replacement``: ⌈N / B⌉·B ids ∝ p (a step keeping 25% of
    the data shows each kept id ~4× an epoch). ``passes``: as streaming does, ``oversample`` passes each keeping
    N / ``oversample`` ids ∝ p without replacement, so an id is drawn at most ``oversample``× an epoch (the
    streaming sampler family, in memory)."""
    shuffle_buffer: int = 1000
    """Streaming mode: raw samples each worker holds for shuffling (0 = stored order; shard order is always
    shuffled per pass)."""
    num_workers: int = 0
    """Streaming mode: DataLoader worker processes per rank (decoding in parallel)."""
    online: bool = False
    """Streaming mode: score each window of ``oversample``·B decoded candidates with the frozen θ0 and keep B ∝ the
    sampler (the paper's recipe when augmentation changes the features, e.g. random crops) instead of deciding
    from the feature store before decoding."""


@dataclass
class ModelConfig:
    name: str = "swift_cnn"
    """A timm model name (``timm.list_models()``); ``swift_cnn`` is a small CNN for 8×8–32×32 inputs."""
    checkpoint: str | None = None
    """Optional local weights file (state_dict, loaded with ``weights_only=True``)."""
    in_chans: int = 1
    """Image channels (1 = grayscale, 3 = RGB)."""
    image_size: int = 0
    """Resize images to this size; 0 = keep the stored size."""
    kwargs: dict = field(default_factory=dict)
    """Extra constructor arguments, e.g. ``{drop_rate: 0.1}`` for timm or ``{width: 16, stem_stride: 2}`` for
    swift_cnn; on the command line ``model.kwargs.width=16``."""


@dataclass
class FeaturesConfig:
    batch_size: int = 512
    """Batch size of the features pass (no gradients)."""
    quantile_points: int = 1025
    """Points in each feature's quantile table (the CDF transform)."""
    epoch: str = "best"
    """Pretraining epoch whose weights θ0 score the features: ``best`` (the epoch with the best val score —
    before uniform training has memorised noisy labels, so their loss still stands out), ``last``, or an epoch
    number. ``search.theta0_epoch`` > 0 overrides it (the paper's single θ0)."""
    dynamics: bool = True
    """Record training dynamics as pretraining's batches go by (no extra pass): each example's mean training
    loss (``dyn_loss``), area under the margin (``aum``) and misclassified fraction (``wrong_frac``), stored as
    features beside θ0's."""
    dynamics_until: str = "last"
    """The pretraining epochs the dynamics average over: up to the ``last`` epoch (the whole run), up to the
    ``best`` val epoch (plain early stopping: before uniform training memorises the noisy labels), or up to an
    epoch number."""


@dataclass
class SamplerConfig:
    features: list[str] = field(default_factory=lambda: ["dyn_loss", "renormed_entropy"])
    """The two features aggregated by the sampler: any two of the store's (θ0's ``loss``, ``renormed_entropy``,
    ``grad_proxy``; the training dynamics ``dyn_loss``, ``aum``, ``wrong_frac``). The default's ``dyn_loss``
    becomes ``loss`` with ``features.dynamics=false``; language models default to (``loss``, ``rarity``)."""
    transform: str = "cgf"
    """``cgf`` (gradient-mass CDF, the paper's smoothing) or ``cdf`` (identity, ablation)."""
    segments: int = 4
    """Linear pieces S of φ; θ has 2S + 2 entries (10 for the paper's S = 4)."""


@dataclass
class SearchConfig:
    trials: int = 40
    """Number of sampler candidates evaluated (the first is uniform sampling)."""
    finetune_epochs: int = 5
    """Epochs of fine-tuning θ0 under each candidate before scoring it on val."""
    strategy: str = "bo"
    """``bo`` (BoTorch GP + acquisition) or ``random`` (ablation)."""
    acquisition: str = "logei"
    """BO acquisition: ``logei`` (log expected improvement over the best posterior mean), ``qlognei`` (noisy
    LogEI, slower) or ``ucb`` (upper confidence bound with ``beta``)."""
    init_steps: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5])
    """After uniform sampling, the search tries φ as a step that drops the top q of the first sampler feature
    (with the default features: the drop-top-loss rule) for each q here, then ``n_init`` Sobol points, then BO.
    ``[]`` for the paper's uniform + Sobol start."""
    init_band: float = 0.0
    """Width of the initial steps' edge, as a share of the examples on each side of the cut: with b > 0 the step
    that drops the top q ramps linearly from 1 (the examples below the top q + b) to 0 (those in the top q − b), so
    the examples nearest the cut are drawn at rates ordered by the feature; 0: the 0.02 ramp in T of a plain step."""
    n_init: int = 4
    """Quasi-random points after the initial ones before the GP proposes."""
    beta: float = 2.0
    """UCB exploration weight (``acquisition=ucb``)."""
    num_restarts: int = 8
    """optimize_acqf restarts (fewer = faster proposals)."""
    raw_samples: int = 256
    """optimize_acqf raw samples."""
    start_epoch: str = "last"
    """Pretraining epoch every trial fine-tunes from: ``last`` (a model that has memorised, like the paper's
    "complete training process": a sampler that starves noisy labels then shows on val), ``best``, or an epoch
    number."""
    theta0_epoch: int = 0
    """The paper's single θ0: when > 0, the weights after this pretraining epoch both score the features and
    start every trial (overriding ``features.epoch`` and ``search.start_epoch``); 0 = use those two."""
    select: str = "best"
    """Which trial's sampler is kept: ``best`` (the highest val score) or ``posterior`` (the highest GP posterior
    mean: less optimistic than the best of many noisy scores)."""
    min_kept: float = 0.2
    """Only trials whose sampler draws at least this share of the training examples at ≥ 0.1× the uniform rate
    can be chosen. A 5-epoch fine-tune from a trained model scores samplers that draw from a few percent of the
    data well, and a from-scratch training under them does badly (README, Results). Those trials still run and
    inform the GP. 0 = any trial (the paper)."""
    lr: float = 0.0
    """Fine-tune learning rate; 0 = ``train.lr``."""
    procs_per_trial: int = 1
    """Processes that fine-tune one trial together (DDP within the group, no gradient sync between groups):
    with W processes, W / procs_per_trial trials run at a time, proposed together (batch BO). 0 = every process
    trains each trial (one trial at a time)."""
    rungs: list[int] = field(default_factory=list)
    """Fine-tune epochs after which a trial is scored on val and stopped when it is not in the top 1/``eta`` of
    the earlier trials' scores there (successive halving, ASHA-style; the GP then models the fidelity). [] =
    every trial runs ``finetune_epochs``."""
    eta: float = 3.0
    """Successive-halving rate: at a rung, a trial goes on when it is in the top 1/eta (needs eta earlier scores)."""
    rounds: int = 12
    """Sampler-learning rounds at most (1 = the paper's single round). Round r > 1 scores the features again with
    round r − 1's final model (its best-val checkpoint: a model trained under the learned sampler, which has not
    fitted the examples it starved), searches again on them and trains a new final model, in ``round<r>/`` (a
    run folder of its own); the round whose final model scores highest on val is the run's product
    (summary.json ``rounds``). Those features are θ0-style: ``dyn_loss`` / ``aum`` / ``wrong_frac`` become that
    model's ``loss``. Each round adds a features pass, a search and a final training; the rounds stop early
    once ``round_patience`` + 1 rounds in a row have not raised the best final val."""
    round_patience: int = 2
    """Later rounds that may run after the best final val so far without raising it, before the rounds stop
    (early stopping over rounds). The next round always starts from the last round's final model. 0: stop after
    the first round that does not raise the best final val (the default until 2026-12-07). The kept round is the
    one with the best final val either way, so a higher patience never lowers the kept round's val; it costs up to
    ``round_patience`` rounds where val has stopped rising (docs/design.md §1.6)."""
    round_scoring: str = "auto"
    """What scores the features of a round after the first: ``crossfit`` (``crossfit_folds`` models, each trained
    like the previous round's final model under its sampler but without one fold of the examples; every example is
    scored by the model that never trained on it, so a flipped label the previous sampler let through is not judged
    by a model that memorised it; adds ``crossfit_folds`` trainings to each later round) or ``final`` (the previous
    round's final model). ``auto`` (the default): ``crossfit``, or ``final`` with ``data.online``, which keeps no
    features to cross-fit (docs/design.md §1.6)."""
    crossfit_folds: int = 2
    """Folds of ``round_scoring=crossfit`` (examples are assigned by a hash of the seed and their global id)."""
    overlap: bool = True
    """Compute the next round's proposals in a helper process while the current round trains, with the running
    trials as pending points, so the GP is off the critical path; false = after each round, from its results."""


@dataclass
class TrainConfig:
    epochs: int = 20
    """Epochs of pretraining (the uniform baseline) and of the final retrain; an epoch = ⌈N / batch⌉ steps."""
    batch_size: int = 64
    """Global batch size (split over processes)."""
    lr: float = 1e-3
    """AdamW learning rate."""
    schedule: str = "constant"
    """Learning-rate schedule of every training (pretrain, trials, final, rules): ``constant`` or ``cosine``
    (to 0 over that training's steps)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    cpu: bool = False
    """Force CPU even where a GPU exists (also needed for multi-process CPU runs)."""
    mixed_precision: str = "no"
    """accelerate mixed precision: ``no``, ``fp16`` or ``bf16``."""
    final_mode: str = "scratch"
    """The final training with the chosen sampler: ``scratch`` (``epochs`` epochs from a fresh model, the
    paper's protocol), ``finetune`` (``epochs`` epochs from the trials' start checkpoint) or ``best_trial`` (the
    chosen trial's own fine-tune, ``search.finetune_epochs`` epochs from the start checkpoint)."""
    final_checkpoint: str = "best_val"
    """Which checkpoint of the final training is the result (``swift.value``): ``best_val`` (the epoch with the
    best val score, i.e. early stopping) or ``last``. Every training records both."""
    progress: bool = True
    """Show tqdm progress bars on the main process."""
    checkpoint_steps: int = 0
    """Also checkpoint every this many optimizer steps inside an epoch (0 = at epoch ends only); a restart
    continues at that (epoch, step) — exactly, given the same world size and ``data.num_workers``."""
    log_with: str = ""
    """accelerate experiment trackers, comma-separated (``tensorboard`` works offline; ``wandb``, ``mlflow``,
    … if installed); logs are written under ``<run dir>/logs``. Empty = no tracking."""
    collective_timeout_min: float = 180.0
    """How long a process waits at a collective for the others before the run fails (torch's NCCL default is
    10 min): a search group that finishes its trial early waits for the round's slowest trial."""


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    """Seed of everything (initialisation, epochs, noise unless ``data.noise_seed``, search)."""

    def round_scoring(self) -> str:
        """``search.round_scoring`` resolved: ``auto`` is ``crossfit``, or ``final`` with ``data.online``."""
        if self.search.round_scoring == "auto":
            return "final" if self.data.online else "crossfit"
        return self.search.round_scoring

    def run_dir(self) -> Path:
        return Path(self.run.out_dir) if self.run.out_dir else Path("runs") / self.run.name

    def validate(self) -> Config:
        def need(ok: bool, key: str, msg: str):
            if not ok:
                raise ConfigError(f"{key}: {msg}")

        for split in ("train", "val", "test"):
            need(bool(getattr(self.data, split)), f"data.{split}", "is empty; give a shard pattern or hf:DIR")
        need(0 <= self.data.noise_rate < 1, "data.noise_rate", f"must be in [0, 1), got {self.data.noise_rate}")
        need(self.data.noise_kind in ("symmetric", "pair"), "data.noise_kind",
             f"must be symmetric or pair, got {self.data.noise_kind!r}")
        need(self.data.on_error in ("skip", "fail"), "data.on_error",
             f"must be skip or fail, got {self.data.on_error!r}")
        need(self.data.task in ("classification", "lm"), "data.task",
             f"must be classification or lm, got {self.data.task!r}")
        need(self.data.seq_len >= 2, "data.seq_len", f"must be >= 2, got {self.data.seq_len}")
        need(self.data.vocab_size >= 260, "data.vocab_size", "must be >= 260 (256 bytes + merges)")
        need(self.data.noise_mode in ("replace", "shuffle", "duplicate"), "data.noise_mode",
             f"must be replace, shuffle or duplicate, got {self.data.noise_mode!r}")
        need(self.data.noise_unit in ("sequence", "document"), "data.noise_unit",
             f"must be sequence or document, got {self.data.noise_unit!r}")
        need(self.data.dup_repeats >= 1, "data.dup_repeats", f"must be >= 1, got {self.data.dup_repeats}")
        need(self.data.tokenizer_sample_mb >= 1, "data.tokenizer_sample_mb", "must be >= 1")
        need(self.data.mode in ("indexed", "streaming"), "data.mode",
             f"must be indexed or streaming, got {self.data.mode!r}")
        need(self.data.mode == "indexed" or not self.data.train.startswith("hf:")
             or self.data.train.split(":")[1] in (*HF_STREAM_BUILDERS, "hub"), "data.mode",
             f"streaming reads WebDataset shards, hf:hub:NAME or hf:BUILDER:FILES ({', '.join(HF_STREAM_BUILDERS)}); "
             "use data.mode=indexed for other hf: sources")
        need(not self.data.online or (self.data.mode == "streaming" and self.data.task == "classification"),
             "data.online", "needs data.mode=streaming and data.task=classification")
        need(self.data.oversample >= 1, "data.oversample", f"must be >= 1, got {self.data.oversample}")
        need(self.data.shuffle_buffer >= 0, "data.shuffle_buffer", "must be >= 0")
        need(self.data.num_workers >= 0, "data.num_workers", "must be >= 0")
        need(self.train.checkpoint_steps >= 0, "train.checkpoint_steps", "must be >= 0")
        need(0 < self.train.collective_timeout_min < 1e6, "train.collective_timeout_min", "must be in (0, 1e6)")
        need(self.data.num_classes >= 0, "data.num_classes", "must be >= 0 (0 = infer)")
        need(self.model.in_chans in (1, 3), "model.in_chans", f"must be 1 or 3, got {self.model.in_chans}")
        need(self.model.image_size >= 0, "model.image_size", "must be >= 0")
        need(self.train.epochs >= 1, "train.epochs", f"must be >= 1, got {self.train.epochs}")
        need(self.train.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.train.batch_size}")
        need(self.train.lr > 0, "train.lr", f"must be > 0, got {self.train.lr}")
        need(self.train.schedule in ("constant", "cosine"), "train.schedule",
             f"must be constant or cosine, got {self.train.schedule!r}")
        need(self.train.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        need(self.train.mixed_precision in ("no", "fp16", "bf16"), "train.mixed_precision",
             f"must be no, fp16 or bf16, got {self.train.mixed_precision!r}")
        need(self.features.batch_size >= 1, "features.batch_size", "must be >= 1")
        need(self.features.quantile_points >= 2, "features.quantile_points", "must be >= 2")
        need(len(self.sampler.features) == 2, "sampler.features", "must name exactly 2 features")
        need(self.sampler.transform in ("cgf", "cdf"), "sampler.transform",
             f"must be cgf or cdf, got {self.sampler.transform!r}")
        need(1 <= self.sampler.segments <= 16, "sampler.segments", f"must be in [1, 16], got {self.sampler.segments}")
        need(self.search.trials >= 1, "search.trials", f"must be >= 1, got {self.search.trials}")
        need(self.search.finetune_epochs >= 1, "search.finetune_epochs", "must be >= 1")
        need(self.search.strategy in ("bo", "random"), "search.strategy",
             f"must be bo or random, got {self.search.strategy!r}")
        need(self.search.n_init >= 0, "search.n_init", "must be >= 0")
        need(self.search.beta >= 0, "search.beta", "must be >= 0")
        need(self.search.num_restarts >= 1 and self.search.raw_samples >= 1, "search.num_restarts",
             "num_restarts and raw_samples must be >= 1")
        need(0 <= self.search.theta0_epoch <= self.train.epochs, "search.theta0_epoch",
             f"must be in [0, train.epochs={self.train.epochs}]")
        for key, value in (("features.epoch", self.features.epoch), ("search.start_epoch", self.search.start_epoch),
                           ("features.dynamics_until", self.features.dynamics_until)):
            need(value in ("best", "last") or (value.isdigit() and 1 <= int(value) <= self.train.epochs), key,
                 f"must be best, last or an epoch in [1, train.epochs={self.train.epochs}], got {value!r}")
        need(self.search.acquisition in ("logei", "qlognei", "ucb"), "search.acquisition",
             f"must be logei, qlognei or ucb, got {self.search.acquisition!r}")
        need(all(0 < q < 1 for q in self.search.init_steps), "search.init_steps",
             f"each step must drop a fraction in (0, 1), got {self.search.init_steps}")
        need(0 <= self.search.init_band < 0.5, "search.init_band",
             f"must be in [0, 0.5) (a share of the examples each side of the cut), got {self.search.init_band}")
        need(self.search.select in ("best", "posterior"), "search.select",
             f"must be best or posterior, got {self.search.select!r}")
        need(0 <= self.search.min_kept < 1, "search.min_kept",
             f"must be in [0, 1) (a share of the training set), got {self.search.min_kept}")
        need(self.search.rounds >= 1, "search.rounds", f"must be >= 1, got {self.search.rounds}")
        need(self.search.round_patience >= 0, "search.round_patience",
             f"must be >= 0 (later rounds without a new best final val), got {self.search.round_patience}")
        need(self.search.rounds == 1 or len(set(later_round_features(self.sampler.features))) == len(
            self.sampler.features), "search.rounds",
             f"rounds after the first read θ0-style features, where {self.sampler.features} both become 'loss'; "
             "give sampler.features at most one of dyn_loss, aum, wrong_frac")
        need(self.data.draw in ("replacement", "passes"), "data.draw",
             f"must be replacement or passes, got {self.data.draw!r}")
        need(self.search.round_scoring in ("auto", "final", "crossfit"), "search.round_scoring",
             f"must be auto, final or crossfit, got {self.search.round_scoring!r}")
        need(self.search.round_scoring != "crossfit" or not self.data.online, "search.round_scoring",
             "crossfit needs the stored features (data.online scores candidates with θ0 online); set "
             "data.online=false or search.round_scoring=final")
        need(self.search.crossfit_folds >= 2, "search.crossfit_folds",
             f"must be >= 2 (each model leaves one fold out), got {self.search.crossfit_folds}")
        need(self.train.final_mode in ("scratch", "finetune", "best_trial"), "train.final_mode",
             f"must be scratch, finetune or best_trial, got {self.train.final_mode!r}")
        need(self.train.final_checkpoint in ("best_val", "last"), "train.final_checkpoint",
             f"must be best_val or last, got {self.train.final_checkpoint!r}")
        need(self.search.lr >= 0, "search.lr", "must be >= 0 (0 = train.lr)")
        need(self.search.procs_per_trial >= 0, "search.procs_per_trial", "must be >= 0 (0 = every process)")
        need(all(1 <= e < self.search.finetune_epochs for e in self.search.rungs)
             and sorted(set(self.search.rungs)) == list(self.search.rungs), "search.rungs",
             f"must be increasing epochs in [1, search.finetune_epochs={self.search.finetune_epochs}), "
             f"got {self.search.rungs}")
        need(self.search.eta > 1, "search.eta", f"must be > 1, got {self.search.eta}")
        need(bool(self.run.name) and self.run.name not in (".", "..")
             and not any(c in self.run.name for c in "/\\\0"), "run.name",
             f"must be a plain folder name under runs/ (no '/', not '.' or '..'), got {self.run.name!r}; "
             "use run.out_dir for a folder elsewhere")
        need(self.run.out_dir is None or bool(str(self.run.out_dir).strip()), "run.out_dir",
             "is empty; give a folder or leave it unset")
        for key, seed in (("seed", self.seed), ("data.noise_seed", self.data.noise_seed)):
            need(0 <= seed < 2**32, key, f"must be in [0, 2^32), got {seed}")
        for key, n, top in (("train.epochs", self.train.epochs, MAX_EPOCHS),
                                ("search.finetune_epochs", self.search.finetune_epochs, MAX_EPOCHS),
                                ("search.trials", self.search.trials, MAX_TRIALS),
                                ("train.batch_size", self.train.batch_size, MAX_BATCH),
                                ("features.batch_size", self.features.batch_size, MAX_BATCH),
                                ("features.quantile_points", self.features.quantile_points, 1 << 20),
                                ("data.seq_len", self.data.seq_len, 1 << 20),
                                ("data.num_workers", self.data.num_workers, 256),
                                ("search.num_restarts", self.search.num_restarts, 4096),
                                ("search.raw_samples", self.search.raw_samples, 1 << 20)):
            need(n <= top, key, f"{n} is beyond any sensible run (at most {top}); check the value")
        need(self.data.oversample <= 1000, "data.oversample", f"must be <= 1000, got {self.data.oversample}")
        return self


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def config_hash(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(config_to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def _field_map(obj) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(obj)}


def _coerce(value: Any, current: Any, key: str, declared: str = "") -> Any:
    """Convert ``value`` (from YAML or a CLI string) to the type of the field's current/default value (a list's
    items: to the item type ``declared`` for the field, e.g. ``list[int]``)."""
    typ = type(current)
    if isinstance(current, bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            parsed = ast.literal_eval(value.strip()) if isinstance(value, str) else value
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, bool) or not isinstance(parsed, (int, float)):
            raise ConfigError(f"{key}: expected {'an integer' if typ is int else 'a number'}, got {value!r}")
        if isinstance(parsed, float) and not math.isfinite(parsed):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        if typ is int and parsed != int(parsed):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return typ(parsed)
    if isinstance(current, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = {"list[int]": 0, "list[float]": 0.0}.get(declared.replace(" ", ""))
        if item is None and current and all(isinstance(v, float) for v in current):  # a list of numbers
            item = 0.0
        if item is not None:
            return [_coerce(v, item, key) for v in value]
        return [str(v) for v in value]
    if isinstance(current, dict):
        if isinstance(value, str):  # a YAML mapping on the command line: model.kwargs='{width: 16}'
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if value is None or isinstance(value, str):
        return None if value in (None, "null", "None", "") and current is None else value
    if current is None:
        return str(value)
    raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}")


def _set(cfg: Config, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    obj = cfg
    for i, part in enumerate(parts):
        fmap = _field_map(obj)
        if part not in fmap:
            prefix = ".".join(parts[:i])
            options = [f"{prefix}.{k}" if prefix else k for k in fmap]
            guess = difflib.get_close_matches(dotted, options, n=1)
            hint = f"; did you mean {guess[0]}?" if guess else f"; known keys: {', '.join(options)}"
            raise ConfigError(f"{dotted}: unknown config key{hint}")
        if isinstance(getattr(obj, part), dict) and i < len(parts) - 1:  # free-form mapping, e.g. model.kwargs
            getattr(obj, part)[".".join(parts[i + 1:])] = yaml.safe_load(value) if isinstance(value, str) else value
            return
        if i == len(parts) - 1:
            current = getattr(obj, part)
            if dataclasses.is_dataclass(current):
                raise ConfigError(f"{dotted}: is a section; set one of its keys, e.g. {dotted}.{fields(current)[0].name}")
            declared = fmap[part].type
            setattr(obj, part, _coerce(value, current, dotted, declared if isinstance(declared, str) else ""))
        else:
            obj = getattr(obj, part)
            if not dataclasses.is_dataclass(obj):
                raise ConfigError(f"{'.'.join(parts[: i + 1])}: is not a section")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def apply_overrides(cfg: Config, overrides: list[str] | dict[str, Any]) -> Config:
    items: Any = overrides.items() if isinstance(overrides, dict) else None
    if items is None:
        pairs = []
        for o in overrides:
            if "=" not in o:
                raise ConfigError(f"{o}: overrides are key=value, e.g. train.epochs=3")
            k, v = o.split("=", 1)
            pairs.append((k.strip(), v))
        items = pairs
    for k, v in items:
        _set(cfg, k, v)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> Config:
    """Defaults → ``base`` dict → YAML file → ``key=value`` overrides, then validate."""
    cfg = Config()
    if base:
        apply_overrides(cfg, _flatten(base))
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        if not path.is_file():
            raise ConfigError(f"{path}: is a directory, not a config file; give a YAML file (see configs/)")
        try:
            data = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
        except PermissionError:
            raise ConfigError(f"{path}: cannot be read (permission denied)") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save the config as UTF-8 YAML") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        apply_overrides(cfg, _flatten(data))
    apply_overrides(cfg, overrides or [])
    return cfg.validate()


def field_docs() -> dict[str, str]:
    """Dotted key → docstring, read from this module's source (used by ``swift-scale run --help-config``)."""
    import inspect

    src = inspect.getsource(__import__(__name__, fromlist=["x"]))
    tree = ast.parse(src)
    docs = {}
    sections = {f.type if isinstance(f.type, str) else f.type.__name__: f.name for f in fields(Config)}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            body = node.body
            for a, b in zip(body, body[1:]):
                if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                        and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
                    name = a.target.id
                    prefix = "" if node.name == "Config" else f"{sections.get(node.name, node.name)}."
                    docs[prefix + name] = b.value.value
    return docs
