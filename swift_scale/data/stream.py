"""Streaming training data: WebDataset shards read per epoch, with rejection sampling before decoding.

For data that does not fit in memory (``data.mode=streaming``). One *pass* over the candidates works as follows
(all pure functions of seed, pass number and global id — no global RNG, no communication between ranks):

1. The shard order is a permutation drawn from (seed, pass). The *kept sequence* is every kept id, in that
   shard order and in stored order inside a shard. Uniform passes keep every id. Sampled passes keep exactly
   K = round(N / oversample) ids ∝ p, by race keys (:func:`swift_scale.selection.keep_set`). That is the
   streaming-rejection rule "take ``oversample``·B candidates, keep B". The kept *set* depends only on
   (seed, pass, p), whatever the world size or worker count.
2. Every rank takes an equal contiguous range of L = ⌊K / (world·b)⌋·b kept positions (b = per-rank batch), so
   every rank runs exactly L / b optimizer steps by construction — uneven shards, fewer shards than
   ranks × workers, nothing can hang DDP. With a global batch B = world·b, the delivered set is the first
   ⌊K / B⌋·B positions of one sequence: the same for every world size.
3. A rank's range is cut into contiguous blocks of whole batches, one per DataLoader worker, so batch j of
   the pass comes from worker j mod W (DataLoader's round-robin order). A worker opens only the shards its block
   touches and skips the other raw samples *before decoding*. It shuffles raw samples in a buffer seeded by
   (seed, pass, rank, worker) and decodes only what it delivers.
4. Resuming at (pass, step) skips the batches each worker already delivered; skipped batches are not decoded.
   With the same world size and worker count the rest of the pass is bit-identical.

The rank-split iterable is never passed through ``accelerator.prepare`` (that would shard it again).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.utils.data

from swift_scale.data.decode import (
    BadSample,
    BadSamplePolicy,
    DataError,
    check_shape,
    decode_sample,
    images_to_input,
)
from swift_scale.data.hf import hf_shard_rows, hf_stream_open
from swift_scale.data.noise import NoisePlan
from swift_scale.data.shards import ShardIndex, local_path, raw_samples, shard_layout, tar_samples
from swift_scale.rng import generator, stream_id
from swift_scale.selection import keep_set

__all__ = ["StreamingSplit", "StreamOptions", "PassPlan", "kept_raw", "shuffled", "batches_after"]

Raw = tuple[int, dict]  # (global id, raw undecoded sample)


@dataclass(frozen=True)
class StreamOptions:
    """How a :class:`StreamingSplit` reads and decodes (the ``data.*`` and ``model.*`` settings it needs).

    Attributes:
        image_key, label_key: sample fields (tar member suffixes, or HF columns).
        in_chans, image_size: decoding as :func:`~swift_scale.data.decode.decode_sample` (0 = stored size).
        num_classes: labels must lie in [0, num_classes).
        seed: the run's seed (shard order, kept sets, shuffle buffers).
        oversample: candidates per kept sample in sampled passes (2 = keep half).
        shuffle_buffer: raw samples held per worker for shuffling (0 = stored order).
        num_workers: DataLoader worker processes per rank.
        on_error: ``fail`` (DataError naming the shard and key) or ``skip``: a bad sample is left out of its
            batch (one sample short; the step still happens on every rank) and recorded with its id; the
            features pass records every bad id, and the pipeline gives them probability 0.
        sample_shape: the [C, H, W] every image must have (from val/test); others are bad samples.
    """

    image_key: str = "png"
    label_key: str = "cls"
    in_chans: int = 1
    image_size: int = 0
    num_classes: int = 0
    seed: int = 0
    oversample: float = 2.0
    shuffle_buffer: int = 0
    num_workers: int = 0
    on_error: str = "fail"
    sample_shape: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.oversample < 1:
            raise ValueError(f"data.oversample must be >= 1 (candidates per kept sample), got {self.oversample}")
        if self.on_error not in ("skip", "fail"):
            raise ValueError(f"on_error must be 'skip' or 'fail', got {self.on_error!r}")


_SHARDS = stream_id("shard-order")
_SHUFFLE = stream_id("shuffle-buffer")


@dataclass
class PassPlan:
    """Which ids one pass keeps and in which order they are dealt to ranks and workers."""

    order: np.ndarray  # shard ordinals in reading order
    mask: np.ndarray | None  # bool [N] kept ids (None = every id)
    kept_per_shard: np.ndarray  # kept count of each shard ordinal
    total_kept: int

    def segments(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        """Kept positions [start, stop) of the kept sequence as (shard ordinal, first, last) local kept indices."""
        out, pos = [], 0
        for s in self.order:
            n = int(self.kept_per_shard[s])
            lo, hi = max(start, pos), min(stop, pos + n)
            if lo < hi:
                out.append((int(s), lo - pos, hi - pos))
            pos += n
            if pos >= stop:
                break
        return out


class StreamingSplit:
    """A training split read from its shards every pass (global id = shard offset + position).

    Shards may be WebDataset tars (local ones read header by header) or the files of a Hugging Face dataset
    (urls ``hf:BUILDER:FILE`` for parquet, arrow, json or csv, see :func:`~swift_scale.data.hf.hf_stream_index`),
    streamed as a ``datasets.IterableDataset``; a row's global id is the file's offset + its row number.
    Implements the :class:`~swift_scale.data.splits.TrainingSource` protocol.

    Args:
        index: the split's shard table.
        options: reading and decoding settings.
        noise: label noise by id (the same ids and classes as the indexed mode); None for clean labels.
        hf_dataset: the already opened :func:`~swift_scale.data.hf.hf_stream_open` of an ``hf:`` source (else
            opened on first use).
    """

    def __init__(self, index: ShardIndex, options: StreamOptions | None = None, noise: NoisePlan | None = None,
                 hf_dataset=None):
        if index.total == 0:
            raise DataError("data.train: the split is empty")
        self.index, self.urls = index, list(index.urls)
        self.opts = options or StreamOptions()
        self.offsets = np.asarray(index.offsets, dtype=np.int64)
        self.counts = np.asarray(index.counts, dtype=np.int64)
        self.noise = noise or NoisePlan.make(index.total, 0.0, self.opts.num_classes, self.opts.seed)
        self._hf = hf_dataset  # the datasets.IterableDataset of an hf: source (see hf_stream)
        self.bad = BadSamplePolicy(self.opts.on_error)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.index.total

    @property
    def oversample(self) -> float:
        return self.opts.oversample

    def to_input(self, x: torch.Tensor, device) -> torch.Tensor:
        return images_to_input(x, device)

    # -- planning -------------------------------------------------------------------------------------------
    def plan(self, probs: np.ndarray | None, pass_: int) -> PassPlan:
        """The pass's shard order and kept set, from (seed, pass, p) alone."""
        order = generator(self.opts.seed, _SHARDS, pass_).permutation(len(self.urls))
        if probs is None:
            return PassPlan(order, None, self.counts.copy(), len(self))
        _, mask = keep_set(np.asarray(probs, dtype=np.float64), 1.0 / self.opts.oversample, self.opts.seed, pass_)
        cum = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
        kept = cum[self.offsets + self.counts] - cum[self.offsets]  # per shard, empty shards included
        return PassPlan(order, mask, kept, int(mask.sum()))

    @staticmethod
    def steps(plan: PassPlan, world: int, per_rank: int) -> int:
        """Optimizer steps of the pass, the same on every rank."""
        return plan.total_kept // (world * per_rank)

    def passes(self, epochs: int, sampled: bool) -> int:
        """Passes that give a sampled run about the optimizer steps of ``epochs`` uniform passes."""
        return max(1, round(epochs * self.opts.oversample)) if sampled else epochs

    def epoch(self, probs, epoch, *, seed, rank, world, per_rank, start_step, device, online=None):
        """This rank's batches of pass ``epoch`` (the run's seed is :attr:`opts.seed`). With ``online`` (the
        ``data.online`` mode) and a sampler, windows of ``oversample``·b uniform candidates are decoded and the
        selector keeps b of each."""
        if online is None or probs is None:
            plan = self.plan(probs, epoch)
            loader = self.loader(plan, epoch, rank, world, per_rank, start_step)
            return self.steps(plan, world, per_rank), ((self.to_input(x, device), y.to(device), g.numpy())
                                                       for x, y, g in loader)
        window = max(per_rank, round(per_rank * self.opts.oversample))
        plan = self.plan(None, epoch)

        def kept():
            for images, labels, gids in self.loader(plan, epoch, rank, world, window, start_step):
                x, y = self.to_input(images, device), labels.to(device)
                keep = online(x, y, gids.numpy(), epoch, per_rank).to(device)
                yield x[keep], y[keep], gids.numpy()[keep.cpu().numpy()]

        return self.steps(plan, world, window), kept()

    # -- reading --------------------------------------------------------------------------------------------
    def raw(self, shard: int, first: int, last: int, mask: np.ndarray | None) -> Iterator[Raw]:
        """Raw (undecoded) samples with kept local index in [first, last) of one shard, with their global ids.
        Other samples are passed over before their payload is read (local tars) or decoded (all sources)."""
        url, offset = self.urls[shard], int(self.offsets[shard])
        kept = -1

        def want(pos: int):
            nonlocal kept
            if mask is not None and not mask[offset + pos]:
                return False
            kept += 1
            return None if kept >= last else kept >= first

        try:
            for pos, sample in self._samples(shard, want):
                yield offset + pos, sample
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{url}: unreadable shard ({type(e).__name__}: {e})") from None

    def _samples(self, shard: int, want):
        """(position, raw sample) of one shard in stored order for the positions ``want`` accepts (see
        :func:`~swift_scale.data.shards.tar_samples`): a local tar read header by header, a remote WebDataset
        tar, or the rows of one file of an HF dataset (an ``Image`` column stays {"bytes", "path"}: rows are
        decoded only when kept)."""
        url = self.urls[shard]
        if not url.startswith("hf:") and (local := local_path(url)) is not None:
            yield from tar_samples(local, want)
            return
        if url.startswith("hf:"):
            rows = hf_shard_rows(self.hf_stream(), shard, [self.opts.image_key, self.opts.label_key], url)
        else:
            rows = raw_samples(url)
        for pos, sample in enumerate(rows):
            take = want(pos)
            if take is None:
                return
            if take:
                yield pos, sample

    def hf_stream(self):
        """The ``datasets.IterableDataset`` of an ``hf:`` source, opened on first use."""
        if self._hf is None:
            self._hf = hf_stream_open(self.urls)
        return self._hf

    def decode(self, gid: int, sample: dict) -> tuple[np.ndarray, int] | None:
        """(image uint8 [C, H, W], noisy label), or None for a bad sample with ``on_error=skip`` (recorded by
        :attr:`bad` with its global id)."""
        o = self.opts
        try:
            img, label = decode_sample(sample, o.image_key, o.label_key, o.in_chans, o.image_size)
            check_shape(img, o.sample_shape, "val/test")
        except BadSample as e:
            self.bad(sample.get("__url__"), sample.get("__key__"), str(e), gid)
            return None
        if label >= o.num_classes:
            raise DataError(f"{sample.get('__url__')}: sample {sample.get('__key__')!r} has label {label} outside "
                            f"[0, {o.num_classes}); set data.num_classes")
        return img, int(self.noise.apply(np.array([label]), np.array([gid]))[0])

    def collate(self, raw: list[Raw], fill: bool = False):
        """Decode a raw batch into (images uint8 [b, C, H, W], labels, global ids); bad samples are left out
        (None when none is left), or with ``fill`` (the features pass, which writes a row for every id) replaced
        by a zero image with label 0 — their ids are recorded by :attr:`bad` and never sampled."""
        decoded = [(gid, self.decode(gid, s)) for gid, s in raw]
        if fill and any(d is None for _, d in decoded):
            shape = self.opts.sample_shape or next((d[0].shape for _, d in decoded if d is not None), None)
            if shape is None:
                raise DataError(f"{raw[0][1].get('__url__')}: no sample of a batch could be decoded and the image "
                                "shape is unknown; set model.image_size")
            decoded = [(g, d if d is not None else (np.zeros(shape, np.uint8), 0)) for g, d in decoded]
        out = [(gid, d) for gid, d in decoded if d is not None]
        if not out:
            return None
        gids = torch.tensor([g for g, _ in out], dtype=torch.int64)
        images = torch.from_numpy(np.stack([img for _, (img, _) in out]))
        labels = torch.tensor([label for _, (_, label) in out], dtype=torch.int64)
        return images, labels, gids

    def empty_batch(self):
        """A batch whose every sample was skipped as undecodable: still one (zero-weight) step for DDP."""
        return torch.zeros((0, self.opts.in_chans, 1, 1), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), \
            torch.zeros(0, dtype=torch.int64)

    def feature_batches(self, shard, offset=0, count=0, batch_size=512):
        """Every sample of one shard in stored order, decoded: (images uint8, labels, global ids) batches with
        every id of the shard (bad samples filled in, see :meth:`collate`)."""
        for raw in batches_after(self.raw(shard, 0, int(self.counts[shard]), None), batch_size, 0, partial=True):
            yield self.collate(raw, fill=True)

    def take_skipped(self) -> list[dict]:
        """The bad samples met so far in this process (id, url, key, reason), each id once, cleared."""
        seen: dict[int, dict] = {}
        for e in self.bad.take():
            seen.setdefault(e["id"], e)
        return [seen[k] for k in sorted(seen)]

    def loader(self, plan: PassPlan, pass_: int, rank: int, world: int, per_rank: int, start_step: int = 0):
        """This rank's batches of the pass from ``start_step`` on: exactly ``steps - start_step`` batches of
        (images uint8 [b, C, H, W], labels, global ids), from a DataLoader with ``num_workers`` workers."""
        steps = self.steps(plan, world, per_rank)
        ds = _RankPass(self, plan, pass_, rank, steps, per_rank, start_step)
        for shard, _, _ in plan.segments(rank * steps * per_rank, (rank + 1) * steps * per_rank):
            if not self.urls[shard].startswith("hf:") and (local := local_path(self.urls[shard])) is not None:
                shard_layout(local)  # once per process; forked workers inherit it and seek past rejected samples
        workers = self.opts.num_workers if steps - start_step > 0 else 0
        if workers:
            _stop_tqdm_monitor()
            if self.urls[0].startswith("hf:"):
                self.hf_stream()  # opened once here, not in every forked worker every pass
        return _worker_errors_as_one_line(torch.utils.data.DataLoader(
            ds, batch_size=None, num_workers=workers, persistent_workers=False,
            prefetch_factor=4 if workers else None))


# -- the stages of one worker's share of a pass (iterator → iterator, as webdataset's) --------------------------
def kept_raw(split: StreamingSplit, plan: PassPlan, first: int, last: int) -> Iterator[Raw]:
    """Source stage: the raw samples at kept positions [first, last) of the pass, undecoded, in shard order."""
    for shard, lo, hi in plan.segments(first, last):
        yield from split.raw(shard, lo, hi, plan.mask)


def shuffled(items: Iterable[Raw], size: int, rng: np.random.Generator) -> Iterator[Raw]:
    """A shuffle buffer of ``size`` raw samples (≤ 1: stored order), drawn from the explicit ``rng``."""
    if size <= 1:
        yield from items
        return
    buf: list[Raw] = []
    for item in items:
        buf.append(item)
        if len(buf) >= size:
            j = int(rng.integers(len(buf)))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()
    while buf:
        j = int(rng.integers(len(buf)))
        buf[j], buf[-1] = buf[-1], buf[j]
        yield buf.pop()


def batches_after(items: Iterable[Raw], size: int, done: int, partial: bool = False) -> Iterator[list[Raw]]:
    """Raw batches of ``size``, the first ``done`` passed over undecoded (what a resumed worker had already
    delivered); a last short batch only with ``partial``."""
    batch: list[Raw] = []
    emitted = 0
    for item in items:
        batch.append(item)
        if len(batch) == size:
            if emitted >= done:
                yield batch
            emitted += 1
            batch = []
    if batch and partial and emitted >= done:
        yield batch


def _worker_errors_as_one_line(loader):
    """Iterate ``loader``; a DataError raised in a DataLoader worker (which torch re-raises with the worker's
    whole traceback as its message) comes out with its own one-line message again."""
    try:
        yield from loader
    except DataError as e:
        lines = [line for line in str(e).splitlines() if line.startswith(f"{DataError.__module__}.DataError: ")]
        if not lines:
            raise
        raise DataError(lines[-1].split("DataError: ", 1)[1]) from None


def _stop_tqdm_monitor() -> None:
    """Stop (and never restart) tqdm's monitor thread before DataLoader forks its workers.

    ``datasets`` shows tqdm bars while resolving files, which starts tqdm's background monitor thread; forking
    with it alive deadlocked a worker inside ``PyOS_AfterFork_Child`` (seen under torchrun with 2 ranks × 2
    workers), hanging the rank and DDP with it. The monitor only refreshes stalled bars."""
    import threading

    from tqdm import std
    from tqdm._monitor import TMonitor

    std.tqdm.monitor_interval = 0  # inherited by tqdm.auto and datasets' subclasses, which hold their own monitor
    for thread in threading.enumerate():
        if isinstance(thread, TMonitor):
            thread.exit()


def _blocks(num_batches: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous batch blocks [a, b) per worker; the first num_batches % workers get one more."""
    base, extra = divmod(num_batches, workers)
    out, a = [], 0
    for w in range(workers):
        n = base + (w < extra)
        out.append((a, a + n))
        a += n
    return out


class _RankPass(torch.utils.data.IterableDataset):
    """One rank's share of one pass, split over DataLoader workers (see the module docstring):
    :func:`kept_raw` → :func:`shuffled` → :func:`batches_after` → :meth:`StreamingSplit.collate`."""

    def __init__(self, split: StreamingSplit, plan: PassPlan, pass_: int, rank: int, steps: int, per_rank: int,
                 start_step: int):
        self.split, self.plan, self.pass_, self.rank = split, plan, pass_, rank
        self.steps, self.per_rank, self.start_step = steps, per_rank, start_step

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        loader_worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # DataLoader deals round-robin from its worker 0, so in a pass started at step 0 the j-th batch of
        # worker w is step j·W + w. A resumed loader starts at start_step, so its worker k plays the role of
        # worker (k + start_step) mod W, which had delivered ⌈(start_step − role) / W⌉ batches before.
        worker = (loader_worker + self.start_step) % workers
        a, b = _blocks(self.steps, workers)[worker]
        done = max(0, math.ceil((self.start_step - worker) / workers))
        first = self.rank * self.steps * self.per_rank + a * self.per_rank
        last = self.rank * self.steps * self.per_rank + b * self.per_rank
        rng = generator(self.split.opts.seed, _SHUFFLE, self.pass_ * 1_000_003 + self.rank * 1009 + worker)
        raw = shuffled(kept_raw(self.split, self.plan, first, last), self.split.opts.shuffle_buffer, rng)
        for batch in batches_after(raw, self.per_rank, done):
            out = self.split.collate(batch)
            yield out if out is not None else self.split.empty_batch()
