"""Streaming training data: WebDataset shards read per epoch, with rejection sampling before decoding.

For data that does not fit in memory (``data.mode=streaming``). One *pass* over the candidates works as follows
(all pure functions of seed, pass number and global id — no global RNG, no communication between ranks):

1. The shard order is a permutation drawn from (seed, pass). The *kept sequence* is every kept id, in that
   shard order and in stored order inside a shard. Uniform passes keep every id. Sampled passes keep exactly
   K = round(N / oversample) ids ∝ p, by race keys (:func:`swift_scale.sampler.select.keep_set`). That is the
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
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.utils.data

from swift_scale.config import HF_STREAM_BUILDERS
from swift_scale.data.decode import (
    BadSample,
    BadSamplePolicy,
    DataError,
    check_shape,
    decode_sample,
    images_to_input,
)
from swift_scale.data.noise import noise_plan
from swift_scale.data.shards import ShardIndex, local_path, raw_samples, tar_samples
from swift_scale.rng import generator, stream_id

__all__ = ["StreamingSplit", "PassPlan", "hf_stream_index", "hf_stream_open"]


def hf_stream_files(ref: str, field: str = "data.train") -> list[str]:
    """The shard urls ``hf:BUILDER:FILE`` of a streaming HF source, one per data file, sorted."""
    import glob

    _, builder, pattern = ref.split(":", 2)
    if builder not in HF_STREAM_BUILDERS:
        raise DataError(f"{field}: streaming reads hf:BUILDER:FILES with BUILDER one of "
                        f"{', '.join(HF_STREAM_BUILDERS)}, got {builder!r}")
    if os.path.isdir(pattern):  # e.g. a save_to_disk folder: its data files, not state.json
        ext = {"parquet": ".parquet", "arrow": ".arrow", "json": (".json", ".jsonl"), "csv": ".csv"}[builder]
        files = sorted(os.path.join(pattern, f) for f in os.listdir(pattern) if f.endswith(ext))
    elif any(c in pattern for c in "*?["):
        files = sorted(glob.glob(pattern))
    else:
        files = [pattern]
    files = [f for f in files if os.path.isfile(f)]
    if not files:
        raise DataError(f"{field}: {pattern} names no {builder} files")
    return [f"hf:{builder}:{f}" for f in files]


def hf_stream_open(urls: list[str], field: str = "data.train"):
    """The ``datasets.IterableDataset`` (``load_dataset(BUILDER, data_files=..., streaming=True)``) over a split's
    files, one HF shard per file; ``Image`` columns are cast to ``decode=False`` so rows stay raw until kept."""
    import datasets

    builder = urls[0].split(":")[1]
    files = [u.split(":", 2)[2] for u in urls]
    try:
        ds = datasets.load_dataset(builder, data_files=files, split="train", streaming=True)
    except Exception as e:  # datasets raises many types; name the source and the reason
        raise DataError(f"{field}: cannot stream {builder} files {files[0]}… "
                        f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if ds.num_shards != len(files):
        raise DataError(f"{field}: datasets made {ds.num_shards} shards of {len(files)} {builder} files; "
                        f"streaming needs one per file")
    for name, feature in (ds.features or {}).items():
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
    return ds


def hf_stream_columns(ds) -> list[str]:
    """Column names of a streaming dataset (from its features, else from its first row)."""
    return list(ds.features) if ds.features else list(next(iter(ds)).keys())


def hf_shard_rows(ds, shard: int, columns: list[str], url: str):
    """The rows of HF shard ``shard`` (= one data file) in stored order: ``split_dataset_by_node`` with one "node"
    per shard, iterated with ``IterableDataset.iter`` — which, unlike ``iter(ds)``, does not re-shard itself over
    DataLoader workers, so the rank/worker ranges computed by :class:`StreamingSplit` hold."""
    from datasets.distributed import split_dataset_by_node

    part = split_dataset_by_node(ds.select_columns(columns), rank=shard, world_size=ds.num_shards)
    pos = 0
    for table in part.with_format("arrow").iter(batch_size=256):
        for row in table.to_pylist():
            row["__url__"], row["__key__"] = url, str(pos)
            pos += 1
            yield row


class HFStreamCounter:
    """Rows per file of a streaming HF source: parquet from the footers (no data read), other builders by
    reading one column of the shard. Callable on a shard ordinal, for the parallel index pass."""

    def __init__(self, urls: list[str], field: str = "data.train"):
        self.urls, self.field, self._ds = urls, field, None

    def __call__(self, i: int) -> int:
        url = self.urls[i]
        path = url.split(":", 2)[2]
        try:
            if url.startswith("hf:parquet:"):
                import pyarrow.parquet as pq

                return pq.ParquetFile(path).metadata.num_rows
            if self._ds is None:
                self._ds = hf_stream_open(self.urls, self.field)
            return sum(1 for _ in hf_shard_rows(self._ds, i, hf_stream_columns(self._ds)[:1], url))
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{path}: not a readable {url.split(':')[1]} file ({type(e).__name__}: {e})") from None


def hf_stream_index(ref: str, field: str = "data.train") -> ShardIndex:
    """The shard table of ``hf:BUILDER:FILES`` for streaming (one process; the pipeline counts in parallel)."""
    urls = hf_stream_files(ref, field)
    count = HFStreamCounter(urls, field)
    return ShardIndex(urls, [count(i) for i in range(len(urls))])


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
    """A training split read from WebDataset shards every pass (global id = shard offset + position).

    Shards may also be the files of a Hugging Face dataset (urls ``hf:BUILDER:FILE`` for parquet, arrow, json or
    csv, see :func:`hf_stream_index`), streamed as a ``datasets.IterableDataset``; a row's global id is the
    file's offset + its row number.

    Args:
        index: the split's shard table.
        image_key, label_key, in_chans, image_size: as for :func:`~swift_scale.data.shards.load_split`.
        num_classes: needed for label noise.
        noise_rate, noise_seed: symmetric noise decided by id (the same ids and classes as the indexed mode).
        seed: the run's seed (shard order, kept sets, shuffle buffers).
        oversample: candidates per kept sample in sampled passes (2 = keep half).
        shuffle_buffer: raw samples held per worker for shuffling (0 = stored order).
        num_workers: DataLoader worker processes per rank.
        on_error: ``fail`` (DataError naming the shard and key) or ``skip``: a bad sample is left out of its
            batch (one sample short; the step still happens on every rank) and recorded by :attr:`bad`; the
            features pass records every bad id, and the pipeline gives them probability 0.
        sample_shape: the [C, H, W] every image must have (from val/test); others are bad samples.
        hf_dataset: the already opened :func:`hf_stream_open` of an ``hf:`` source (else opened on first use).
    """

    def __init__(self, index: ShardIndex, *, image_key: str = "png", label_key: str = "cls", in_chans: int = 1,
                 image_size: int = 0, num_classes: int = 0, noise_rate: float = 0.0, noise_seed: int = 0,
                 seed: int = 0, oversample: float = 2.0, shuffle_buffer: int = 0, num_workers: int = 0,
                 on_error: str = "fail", sample_shape: tuple[int, ...] | None = None, hf_dataset=None):
        if index.total == 0:
            raise DataError("data.train: the split is empty")
        if oversample < 1:
            raise ValueError(f"data.oversample must be >= 1 (candidates per kept sample), got {oversample}")
        self.index, self.urls = index, list(index.urls)
        self.offsets = np.asarray(index.offsets, dtype=np.int64)
        self.counts = np.asarray(index.counts, dtype=np.int64)
        self.image_key, self.label_key, self.in_chans, self.image_size = image_key, label_key, in_chans, image_size
        self.num_classes, self.seed, self.oversample = num_classes, seed, oversample
        self.shuffle_buffer, self.num_workers, self.on_error = shuffle_buffer, num_workers, on_error
        self.flipped, self.shift = noise_plan(index.total, noise_rate, num_classes, noise_seed or seed)
        self._hf = hf_dataset  # the datasets.IterableDataset of an hf: source (see hf_stream)
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else None
        self.bad = BadSamplePolicy(on_error)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.index.total

    def to_input(self, images: torch.Tensor, device) -> torch.Tensor:
        return images_to_input(images, device)

    # -- planning -------------------------------------------------------------------------------------------
    def plan(self, probs: np.ndarray | None, pass_: int) -> PassPlan:
        from swift_scale.sampler.select import keep_set

        order = generator(self.seed, _SHARDS, pass_).permutation(len(self.urls))
        if probs is None:
            return PassPlan(order, None, self.counts.copy(), len(self))
        _, mask = keep_set(np.asarray(probs, dtype=np.float64), 1.0 / self.oversample, self.seed, pass_)
        cum = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
        kept = cum[self.offsets + self.counts] - cum[self.offsets]  # per shard, empty shards included
        return PassPlan(order, mask, kept, int(mask.sum()))

    @staticmethod
    def steps(plan: PassPlan, world: int, per_rank: int) -> int:
        """Optimizer steps of the pass, the same on every rank."""
        return plan.total_kept // (world * per_rank)

    def passes(self, epochs: int, sampled: bool) -> int:
        """Passes that give a sampled run about the optimizer steps of ``epochs`` uniform passes."""
        return max(1, round(epochs * self.oversample)) if sampled else epochs

    # -- reading --------------------------------------------------------------------------------------------
    def _raw(self, shard: int, first: int, last: int, mask: np.ndarray | None):
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
        tar, or the rows of one file of an HF dataset (:func:`hf_shard_rows`; an ``Image`` column stays
        {"bytes", "path"}: rows are decoded only when kept)."""
        url = self.urls[shard]
        if not url.startswith("hf:") and (local := local_path(url)) is not None:
            yield from tar_samples(local, want)
            return
        if url.startswith("hf:"):
            rows = hf_shard_rows(self.hf_stream(), shard, [self.image_key, self.label_key], url)
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

    def _decode(self, gid: int, sample: dict):
        """(image uint8 [C, H, W], noisy label), or None for a bad sample with ``on_error=skip`` (recorded by
        :attr:`bad`, with its global id)."""
        try:
            img, label = decode_sample(sample, self.image_key, self.label_key, self.in_chans, self.image_size)
            check_shape(img, self.sample_shape, "val/test")
        except BadSample as e:
            self.bad(sample.get("__url__"), sample.get("__key__"), str(e), gid)
            return None
        if label >= self.num_classes:
            raise DataError(f"{sample.get('__url__')}: sample {sample.get('__key__')!r} has label {label} outside "
                            f"[0, {self.num_classes}); set data.num_classes")
        i = np.searchsorted(self.flipped, gid)
        if i < len(self.flipped) and self.flipped[i] == gid:
            label = (label + int(self.shift[i])) % self.num_classes
        return img, label

    def _collate(self, raw: list[tuple[int, dict]], fill: bool = False):
        """Decode a raw batch; bad samples are left out, or with ``fill`` (the features pass, which writes a row
        for every id) replaced by a zero image with label 0 — their ids are recorded by :attr:`bad` and never
        sampled."""
        decoded = [(gid, self._decode(gid, s)) for gid, s in raw]
        if fill and any(d is None for _, d in decoded):
            shape = self.sample_shape or next((d[0].shape for _, d in decoded if d is not None), None)
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

    def shard_batches(self, shard: int, batch_size: int):
        """Every sample of one shard in stored order, decoded: (images uint8, labels, global ids) batches with
        every id of the shard (bad samples filled in, see :meth:`_collate`)."""
        raw = []
        for item in self._raw(shard, 0, int(self.counts[shard]), None):
            raw.append(item)
            if len(raw) == batch_size:
                yield self._collate(raw, fill=True)
                raw = []
        if raw:
            yield self._collate(raw, fill=True)

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
        workers = self.num_workers if steps - start_step > 0 else 0
        if workers:
            _stop_tqdm_monitor()
            if self.urls[0].startswith("hf:"):
                self.hf_stream()  # opened once here, not in every forked worker every pass
        return _worker_errors_as_one_line(torch.utils.data.DataLoader(
            ds, batch_size=None, num_workers=workers, persistent_workers=False,
            prefetch_factor=4 if workers else None))


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
    """One rank's share of one pass, split over DataLoader workers (see the module docstring)."""

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
        rng = generator(self.split.seed, _SHUFFLE, self.pass_ * 1_000_003 + self.rank * 1009 + worker)
        buf: list = []
        batch: list = []
        emitted = 0

        def stream():
            for shard, lo, hi in self.plan.segments(first, last):
                yield from self.split._raw(shard, lo, hi, self.plan.mask)

        def shuffled():
            size = self.split.shuffle_buffer
            for item in stream():
                if size <= 1:
                    yield item
                    continue
                buf.append(item)
                if len(buf) >= size:
                    j = int(rng.integers(len(buf)))
                    buf[j], buf[-1] = buf[-1], buf[j]
                    yield buf.pop()
            while buf:
                j = int(rng.integers(len(buf)))
                buf[j], buf[-1] = buf[-1], buf[j]
                yield buf.pop()

        for item in shuffled():
            batch.append(item)
            if len(batch) == self.per_rank:
                if emitted >= done:
                    out = self.split._collate(batch)
                    yield out if out is not None else _empty(self.split)
                emitted += 1
                batch = []


def _empty(split: StreamingSplit):
    """A batch whose every sample was skipped as undecodable: still one (zero-weight) step for DDP."""
    return torch.zeros((0, split.in_chans, 1, 1), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), \
        torch.zeros(0, dtype=torch.int64)
