"""``load_data(cfg, accelerator, run_dir) -> Data``: the shard tables, the splits and the noise of one run.

Every process calls it once. The index pass is split over ranks (shard ordinal mod world size) and its counts
all-gathered; val and test are always decoded into memory; the training split is decoded too (indexed mode) or
opened as a :class:`~swift_scale.data.stream.StreamingSplit` (streaming mode), or tokenized and packed into
sequences (language modelling). Nothing is written: ``index.json``, ``noise.json``, ``data_errors.json`` (and an
LM's trained tokenizer) are returned in :attr:`Data.records` for the pipeline to publish once the run folder
exists, so a data error leaves no folder behind. A cached ``index.json`` in ``run_dir`` is reused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from swift_scale.config import Config, ConfigError
from swift_scale.data.decode import DataError, LoadedSplit
from swift_scale.data.hf import (
    HFStreamCounter,
    hf_index,
    hf_stream_columns,
    hf_stream_files,
    hf_stream_open,
    is_hf,
    load_hf_split,
    open_hf,
    pick_column,
)
from swift_scale.data.noise import NoisePlan
from swift_scale.data.shards import ShardIndex, build_index, expand_shards, load_split
from swift_scale.data.splits import Data, Split, TokenSplit

__all__ = ["load_data", "build_shard_table", "MIN_VAL_EXAMPLES"]

logger = logging.getLogger("swift_scale")
SPLITS = ("train", "val", "test")
#: Below this many validation examples the search's scores are mostly noise; the run warns.
MIN_VAL_EXAMPLES = 100


def load_data(cfg: Config, accelerator, run_dir: Path) -> Data:
    """Open every split of ``cfg.data`` for this process (see the module docstring)."""
    if cfg.data.task == "lm":
        data = _load_text(cfg, accelerator, run_dir)
    else:
        index = _shard_tables(cfg, accelerator, run_dir)
        loaded = _decode_in_memory(cfg, index, run_dir)
        data = _streaming(cfg, index, loaded) if cfg.data.mode == "streaming" else _indexed(cfg, index, loaded)
        errors = [{"split": s, **e} for s, ld in loaded.items() for e in ld.errors]
        data.records["index.json"] = {s: i.to_dict() for s, i in index.items()}
        data.records["data_errors.json"] = {"count": len(errors), "errors": errors}
    if isinstance(data.train, Split) and cfg.data.draw == "passes":  # sampled epochs drawn as streaming passes
        data.train.cap = cfg.data.oversample
    scored = len(data.val) * (cfg.data.seq_len - 1 if cfg.data.task == "lm" else 1)  # examples or tokens
    least = MIN_VAL_EXAMPLES * (40 if cfg.data.task == "lm" else 1)
    if scored < least:
        unit = "token" if cfg.data.task == "lm" else "example"
        logger.warning("data.val: only %d %s(s); the search scores samplers on val, so its choices will be mostly "
                       "noise (%d+ recommended)", scored, unit, least * 5)
    return data


# -- shard tables -------------------------------------------------------------------------------------------
def _shard_tables(cfg: Config, acc, run_dir: Path) -> dict[str, ShardIndex]:
    """The shard table of each split, cached in ``index.json`` (rebuilt when the shards it names changed)."""
    d = cfg.data
    refs = {s: getattr(d, s) for s in SPLITS}
    stream_hf = d.mode == "streaming" and is_hf(refs["train"])  # data files, streamed one per shard
    urls: dict[str, Any] = {s: None if is_hf(r) else expand_shards(r, allow_pipe=d.allow_pipe, field=f"data.{s}")
            for s, r in refs.items()}
    hf_rows = {s: len(open_hf(r, f"data.{s}")) for s, r in refs.items()
               if is_hf(r) and not (s == "train" and stream_hf)}
    if stream_hf:
        urls["train"] = hf_stream_files(refs["train"])
    for s, n in hf_rows.items():
        urls[s] = hf_index(refs[s], n).urls
    path = run_dir / "index.json"
    cached = _read_index(path)
    if all(s in cached and cached[s].urls == urls[s] for s in urls):
        return cached
    index = {s: hf_index(refs[s], hf_rows[s]) if s in hf_rows
             else build_shard_table(urls[s], acc, HFStreamCounter(urls[s]) if s == "train" and stream_hf else None)
             for s in SPLITS}
    for s, idx in index.items():
        if idx.total == 0:
            raise DataError(f"data.{s}: the split is empty ({len(idx.urls)} shard(s) with no samples)")
    return index


def _read_index(path: Path) -> dict[str, ShardIndex]:
    """The cached tables, or {} when there are none or they are unreadable (they are rebuilt)."""
    try:
        return {k: ShardIndex.from_dict(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def build_shard_table(urls: list[str], acc, count: Callable[[int], int] | None = None) -> ShardIndex:
    """Count every shard's samples, shards split over ranks (ordinal mod world) and the counts all-gathered.

    Each rank reads only its shards (tar headers; parquet footers; one column of other HF files); a bad
    shard is reported by every rank (no hang). ``count(ordinal)`` overrides the tar counter.
    """
    count = count or (lambda i: build_index([urls[i]]).counts[0])
    if acc.num_processes == 1:
        return ShardIndex(urls, [count(i) for i in range(len(urls))])
    from accelerate.utils import gather_object

    mine: list[tuple[int, int, str | None]] = []
    for i in range(acc.process_index, len(urls), acc.num_processes):
        try:
            mine.append((i, count(i), None))
        except DataError as e:
            mine.append((i, 0, str(e)))
    found = sorted(gather_object(mine))
    errors = [e for _, _, e in found if e]
    if errors:
        raise DataError(errors[0])
    return ShardIndex(urls, [c for _, c, _ in found])


# -- images -------------------------------------------------------------------------------------------------
def _decode_in_memory(cfg: Config, index: dict[str, ShardIndex], run_dir: Path) -> dict[str, LoadedSplit]:
    """Decode val, test and (indexed mode) train; check that their image shapes agree; report bad samples."""
    d, m = cfg.data, cfg.model
    opts: dict[str, Any] = dict(image_key=d.image_key, label_key=d.label_key, in_chans=m.in_chans, image_size=m.image_size,
                on_error=d.on_error)
    splits = [s for s in SPLITS if s != "train" or d.mode == "indexed"]
    loaded = {s: load_hf_split(getattr(d, s), field=f"data.{s}", **opts) if is_hf(getattr(d, s))
              else load_split(index[s], field=f"data.{s}", **opts) for s in splits}
    first = splits[0]
    for s in splits[1:]:
        if loaded[s].shape != loaded[first].shape:
            raise DataError(f"data.{s}: images are {loaded[s].shape} (C, H, W) but data.{first}'s are "
                            f"{loaded[first].shape}; set model.image_size (and model.in_chans) to make them agree")
    for s, ld in loaded.items():
        if (~ld.valid).sum() * 2 > len(ld.valid):
            e = ld.errors[0]
            raise DataError(f"data.{s}: {(~ld.valid).sum()} of {len(ld.valid)} samples cannot be used (first: "
                            f"{e['url']} sample {e['key']!r} {e['reason']}); fix the data or its data.* keys")
    errors = [{"split": s, **e} for s, ld in loaded.items() for e in ld.errors]
    if errors:
        logger.warning("skipped %d bad sample(s) (data.on_error=skip), e.g. %s sample %r: %s; all in %s",
                       len(errors), errors[0]["url"], errors[0]["key"], errors[0]["reason"],
                       run_dir / "data_errors.json")
    return loaded


def _num_classes(cfg: Config, loaded: dict[str, LoadedSplit]) -> int:
    """``data.num_classes``, or max label + 1 of the training labels (of val/test when train is streamed);
    every label must lie below it, and an inferred head with mostly absent classes is a config error."""
    source = "train" if "train" in loaded else "val"
    labels = {s: ld.labels[ld.valid] for s, ld in loaded.items()}
    n = cfg.data.num_classes
    if not n:
        ref = labels[source] if source == "train" else np.concatenate([labels["val"], labels["test"]])
        n = int(ref.max()) + 1
        present = len(np.unique(ref))
        if present * 2 < n:
            raise ConfigError(f"data.num_classes: inferred {n} classes from the largest data.{source} label, but "
                              f"only {present} distinct labels occur; set data.num_classes")
    for s, y in labels.items():
        if len(y) and y.max() >= n:
            hint = "set data.num_classes" if cfg.data.num_classes else f"classes are inferred from data.{source}"
            raise DataError(f"data.{s}: label {int(y.max())} >= {n} classes ({hint}); fix the labels")
    return n


def _eval_split(ld: LoadedSplit) -> Split:
    """Evaluation needs no global ids: bad rows are dropped."""
    return Split(torch.from_numpy(ld.images[ld.valid]), torch.from_numpy(ld.labels[ld.valid]))


def _noise(cfg: Config, num_examples: int, num_classes: int) -> NoisePlan:
    d = cfg.data
    return NoisePlan.make(num_examples, d.noise_rate, num_classes, d.noise_seed or cfg.seed, d.noise_kind)  # type: ignore[arg-type]


def _indexed(cfg: Config, index, loaded: dict[str, LoadedSplit]) -> Data:
    num_classes = _num_classes(cfg, loaded)
    train = loaded["train"]
    noise = _noise(cfg, len(train.labels), num_classes)
    num_errors = sum(len(ld.errors) for ld in loaded.values())
    valid = None if train.valid.all() else train.valid
    data = Data(index, Split(torch.from_numpy(train.images), torch.from_numpy(noise.apply(train.labels)),
                             valid=valid),
                _eval_split(loaded["val"]), _eval_split(loaded["test"]), num_classes, noise.ids, num_errors,
                valid)
    if cfg.data.noise_rate > 0:
        data.records["noise.json"] = noise.record(train.labels)
    return data


def _streaming(cfg: Config, index, loaded: dict[str, LoadedSplit]) -> Data:
    from swift_scale.data.stream import StreamingSplit, StreamOptions

    d, m = cfg.data, cfg.model
    num_classes = _num_classes(cfg, loaded)
    image_key, label_key, stream = d.image_key, d.label_key, None
    if is_hf(index["train"].urls[0]):  # HF columns, with the usual fallbacks
        stream = hf_stream_open(index["train"].urls)
        names = hf_stream_columns(stream)
        image_key = pick_column(names, d.image_key, ("image", "img", "pixel_values"), "data.train", "image_key")
        label_key = pick_column(names, d.label_key, ("label", "labels", "cls"), "data.train", "label_key")
    opts = StreamOptions(image_key=image_key, label_key=label_key, in_chans=m.in_chans, image_size=m.image_size,
                         num_classes=num_classes, seed=cfg.seed, oversample=d.oversample,
                         shuffle_buffer=d.shuffle_buffer, num_workers=d.num_workers, on_error=d.on_error,
                         sample_shape=loaded["val"].shape)
    noise = _noise(cfg, index["train"].total, num_classes)
    train = StreamingSplit(index["train"], opts, noise, hf_dataset=stream)
    data = Data(index, train, _eval_split(loaded["val"]), _eval_split(loaded["test"]), num_classes, noise.ids,
                sum(len(ld.errors) for ld in loaded.values()))
    if d.noise_rate > 0:  # labels are only read while streaming: ids + shifts
        data.records["noise.json"] = noise.record()
    return data


# -- text ---------------------------------------------------------------------------------------------------
def _load_text(cfg: Config, acc, run_dir: Path) -> Data:
    """Text → tokenizer (given, or trained on the training split) → packed sequences; noise by sequence or
    document id. Streaming mode reads the training sequences from token shards every pass (text is tokenized
    once into a shard cache beside the run, see :mod:`swift_scale.data.tokens`); val and test stay in memory."""
    from swift_scale.data.text import is_token_shards, load_tokenizer, rarity_of_counts, unigram_rarity
    from swift_scale.data.tokens import SequenceNoise

    d = cfg.data
    refs = {s: getattr(d, s) for s in SPLITS}
    stream = d.mode == "streaming"
    shards = {s: is_token_shards(r) for s, r in refs.items()}
    if any(shards.values()) and not d.tokenizer:
        raise ConfigError("data.tokenizer: token shards need the tokenizer directory that wrote them")
    in_memory = [s for s in SPLITS if not (stream and s == "train")]
    text_src = None if shards["train"] or not stream else _text_sources(refs["train"], d.text_key)
    tok_dir = run_dir / "tokenizer"
    trained = None
    if d.tokenizer or (tok_dir / "tokenizer.json").exists():
        tok = load_tokenizer(d.tokenizer or tok_dir)
    else:  # trained on the main process and sent to the others: saved with the run folder's other records
        sample = _text_sample(text_src[0], text_src[1], d.tokenizer_sample_mb << 20) if text_src else None
        tok = trained = shared_tokenizer(acc, sample if sample is not None else _read_split(cfg, "train"),
                                         d.vocab_size)
    vocab = len(tok)
    index: dict[str, ShardIndex] = {}
    seqs, doc_of = {}, None
    for s in in_memory:
        index[s], seqs[s], docs = _packed(cfg, acc, s, tok, shards[s])
        if s == "train":
            doc_of = docs
    if stream:
        train, index["train"], doc_of, unigram = _text_stream(cfg, acc, run_dir, tok, text_src)
        rarity = rarity_of_counts(unigram)
        n = index["train"].total
    else:
        rarity, n = unigram_rarity(seqs["train"], vocab), len(seqs["train"])
    if d.noise_rate > 0 and d.noise_unit == "document" and doc_of is None:
        raise ConfigError("data.noise_unit: document noise needs documents, and these token shards carry none "
                          "(give text, or shards from the cache); use data.noise_unit=sequence")
    noise = SequenceNoise.make(n, d.noise_rate, vocab, d.noise_seed or cfg.seed, d.noise_mode, d.noise_unit,
                               doc_of, d.dup_repeats)
    if stream:
        train.seq_noise = noise.attach(train.tokens_of)
    else:
        noise.attach(lambda ids: {int(i): seqs["train"][i] for i in ids})
        train = TokenSplit(torch.from_numpy(noise.apply_rows(seqs["train"], np.arange(n))))
    eos = tok.eos_token_id if tok.eos_token_id is not None else 0
    data = Data(index, train, TokenSplit(torch.from_numpy(seqs["val"])), TokenSplit(torch.from_numpy(seqs["test"])),
                vocab, noise.ids, 0, None, eos_id=eos, rarity=rarity, doc_of=doc_of)
    data.records["index.json"] = {s: i.to_dict() for s, i in index.items()}
    data.records["data_errors.json"] = {"count": 0, "errors": []}
    if d.noise_rate > 0:
        data.records["noise.json"] = noise.record()
    if trained is not None:
        data.records["tokenizer"] = trained
    return data


def _read_split(cfg: Config, split: str) -> str:
    from swift_scale.data.text import read_text

    return read_text(getattr(cfg.data, split), text_key=cfg.data.text_key, field=f"data.{split}")


def _packed(cfg: Config, acc, split: str, tok, token_shards: bool):
    """(shard table, sequences int64 [n, seq_len], the document of each sequence or None) of an in-memory split."""
    from swift_scale.data.text import encode_documents, line_documents, load_token_shards
    from swift_scale.data.tokens import pack_documents

    d, ref = cfg.data, getattr(cfg.data, split)
    docs = None
    if token_shards:  # large corpora: tokenized once into shards; the real shard table gives the ids
        index = build_shard_table(expand_shards(ref, allow_pipe=d.allow_pipe, field=f"data.{split}"), acc)
        seqs = load_token_shards(index, d.seq_len, field=f"data.{split}")
    else:
        lines = _read_split(cfg, split).splitlines(keepends=True)
        ids, token_doc = encode_documents(tok, lines, line_documents(lines))
        seqs, docs, _ = pack_documents(ids, token_doc, d.seq_len, len(tok))
        index = hf_index(f"text:{split}", len(seqs), 1024)
    if len(seqs) == 0:
        raise DataError(f"data.{split}: fewer than data.seq_len={d.seq_len} tokens; give more text")
    if seqs.max() >= len(tok):
        raise DataError(f"data.{split}: token id {seqs.max()} >= the tokenizer's {len(tok)}; wrong data.tokenizer")
    return index, seqs, docs


def _text_sources(ref: str, text_key: str):
    """(source shard names, read_chunks(i) → chunks of (lines, document of each line)) of a streamed text split:
    one shard per text file (documents: blank-line blocks) or per file of an ``hf:BUILDER:FILES`` source (one
    row, one document)."""
    from swift_scale.data.text import text_files
    from swift_scale.data.tokens import file_chunks, row_chunks

    if is_hf(ref):
        urls = hf_stream_files(ref)
        ds = hf_stream_open(urls)
        if text_key not in hf_stream_columns(ds):
            raise DataError(f"data.train: no column {text_key!r} in {ref} (columns: {hf_stream_columns(ds)}); "
                            "set data.text_key")

        def read_hf(i: int):
            from swift_scale.data.hf import hf_shard_rows

            return row_chunks(row[text_key] for row in hf_shard_rows(ds, i, [text_key], urls[i]))

        return urls, read_hf
    files = text_files(ref, "data.train")
    return files, lambda i: file_chunks(files[i])


def _text_sample(sources: list[str], read_chunks, limit: int) -> str:
    """The first ``limit`` bytes of a streamed text split (whole lines, shards in order): what the tokenizer is
    trained on when none is given."""
    out, size = [], 0
    for i in range(len(sources)):
        for lines, _ in read_chunks(i):
            for line in lines:
                out.append(line)
                size += len(line)
                if size >= limit:
                    return "".join(out)
    text = "".join(out)
    if not text.strip():
        raise DataError(f"data.train: {sources[0]} … holds no text")
    return text


def _text_stream(cfg: Config, acc, run_dir: Path, tok, text_src):
    """(TokenStreamingSplit, its shard table, the document of each sequence or None, unigram counts int64
    [vocab]) of the streamed training split."""
    from swift_scale.data.stream import StreamOptions
    from swift_scale.data.tokens import (
        TokenStreamingSplit,
        build_token_cache,
        count_unigrams,
        read_cache_meta,
        token_shard_files,
    )

    d, vocab = cfg.data, len(tok)
    opts = StreamOptions(image_key="tokens.npy", seed=cfg.seed, oversample=d.oversample,
                         shuffle_buffer=d.shuffle_buffer, num_workers=d.num_workers, on_error=d.on_error)
    if text_src is None:  # pre-tokenized shards: read directly; their unigram counts in one parallel pass
        index = build_shard_table(expand_shards(d.train, allow_pipe=d.allow_pipe, field="data.train"), acc)
        train = TokenStreamingSplit(index, opts, d.seq_len, vocab)
        mine = list(range(acc.process_index, len(index.urls), acc.num_processes))
        counts = np.sum(_on_every_rank(acc, lambda: count_unigrams(train, vocab, mine)), axis=0)
        return train, index, None, counts
    sources, read_chunks = text_src
    cache = cache_dir(run_dir)
    _on_every_rank(acc, lambda: build_token_cache(sources, read_chunks, tok, d.seq_len, cache, acc.process_index,
                                                  acc.num_processes, reader=f"text_key={d.text_key}"))
    metas = [read_cache_meta(cache, i) for i in range(len(sources))]
    index = ShardIndex(token_shard_files(cache, len(sources)), [m["sequences"] for m in metas])  # type: ignore[index]
    if index.total == 0:
        raise DataError(f"data.train: fewer than data.seq_len={d.seq_len} tokens in every shard; give more text")
    doc_of = np.concatenate([np.load(cache / f"train-{i:06d}.docs.npy") for i in range(len(sources))])
    counts = np.sum([np.asarray(m["unigram"], np.int64) for m in metas], axis=0)  # type: ignore[index]
    return TokenStreamingSplit(index, opts, d.seq_len, vocab), index, doc_of, counts


def _on_every_rank(acc, fn) -> list:
    """``fn()`` on this rank, its results gathered from every rank (in rank order). When it fails on any rank,
    every rank still reaches the gather and then raises that rank's error as a DataError — no rank is left
    waiting for one that died."""
    got: list[tuple[Any, str | None]]
    try:
        got = [(fn(), None)]
    except Exception as e:  # noqa: BLE001 - reported on every rank below
        got = [(None, str(e) if isinstance(e, DataError) else f"data.train: {type(e).__name__}: {e}")]
    if acc.num_processes > 1:
        from accelerate.utils import gather_object

        got = gather_object(got)
    if failed := next((f for _, f in got if f), None):
        raise DataError(failed)
    return [out for out, _ in got]


def cache_dir(run_dir: Path) -> Path:
    """Where a streamed text split's token shards are cached: beside the run folder (``runs/<name>.tokens``)."""
    return run_dir.parent / f"{run_dir.name}.tokens"


def shared_tokenizer(acc, text: str, vocab_size: int):
    """A byte-level BPE trained on ``text`` by the main process and broadcast to every rank (as its JSON), so
    all ranks tokenize identically without a file."""
    from swift_scale.data.text import tokenizer_from_json, tokenizer_json, train_tokenizer

    payload = [tokenizer_json(train_tokenizer(text, vocab_size)) if acc.is_main_process else None]
    if acc.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(payload)
    return tokenizer_from_json(payload[0])  # type: ignore[arg-type]
