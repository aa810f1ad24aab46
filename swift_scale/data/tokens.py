"""Language-model data at scale: token shards streamed like images, text tokenized once into a shard cache, and
noise by sequence or by document.

- :class:`TokenStreamingSplit` is a :class:`~swift_scale.data.stream.StreamingSplit` whose samples are packed
  token sequences (``tokens.npy``, written by :func:`~swift_scale.data.writers.write_token_shards` or by the
  cache below): the same kept sets, rank ranges, worker blocks, resume and bad-sample policy as images; a
  sequence's global id is its shard's offset + its position in the shard.
- :func:`build_token_cache` tokenizes every text shard (a text file, or one file of an HF dataset with a text
  column) *once* into a token shard of the same ordinal — documents are packed back to back into ``seq_len``
  sequences, each remembering the document its first token came from — with the shard's unigram counts beside
  it. Shards are split over ranks (ordinal mod world size) and written atomically, so a killed index pass redoes
  only the unfinished ones.
- :class:`SequenceNoise` corrupts (``replace`` / ``shuffle``) or duplicates a fraction of the training
  sequences, chosen by sequence or by document from (seed, id) alone, one sequence at a time: the same noise in
  memory and streaming.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from swift_scale.data.decode import BadSample, DataError, read_npy
from swift_scale.data.hf import is_local
from swift_scale.data.shards import ShardIndex
from swift_scale.data.stream import StreamingSplit, StreamOptions, batches_after
from swift_scale.rng import stream_id, uniform01

__all__ = ["SequenceNoise", "TokenStreamingSplit", "build_token_cache", "read_cache_meta", "file_chunks", "row_chunks",
           "pack_documents", "decode_tokens", "count_unigrams", "token_shard_files", "CACHE_VERSION"]

CACHE_VERSION = 1
_PICK = stream_id("text-noise-pick")
_PICK_DOC = stream_id("text-noise-pick-doc")
_TOKEN = stream_id("text-noise-token")


# -- noise --------------------------------------------------------------------------------------------------
@dataclass
class SequenceNoise:
    """Which training sequences are noise and what each becomes, decided from (seed, id) alone.

    ``replace``: every token of a chosen sequence is replaced by a random token; ``shuffle``: its tokens are
    permuted; ``duplicate``: it becomes a copy of one of a few *source* sequences (``sources``: id → tokens),
    each repeated about ``repeats`` times (the near-duplicate boilerplate of real corpora). ``unit=document``
    chooses whole documents (every sequence that starts in a chosen document) instead of single sequences.

    Attributes:
        ids: the noisy sequence ids, sorted (int64).
        docs: the chosen document ids, sorted (``unit=document``), else empty.
    """

    ids: np.ndarray
    mode: str = "replace"
    vocab_size: int = 0
    seed: int = 0
    rate: float = 0.0
    unit: str = "sequence"
    docs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    source_of: dict[int, int] = field(default_factory=dict)  # duplicate id → its source id
    sources: dict[int, np.ndarray] = field(default_factory=dict)  # source id → its clean tokens

    @classmethod
    def make(cls, num_sequences: int, rate: float, vocab_size: int, seed: int, mode: str = "replace",
             unit: str = "sequence", doc_of: np.ndarray | None = None, repeats: int = 50) -> SequenceNoise:
        """Choose round(rate·N) sequences (``unit=sequence``) or round(rate·D) of the D documents
        (``unit=document``, ``doc_of``: the document of each sequence). For ``duplicate``, the sources are the
        next ⌈k / repeats⌉ sequences of the same random order; their tokens are filled in by :meth:`attach`."""
        if mode not in ("replace", "shuffle", "duplicate"):
            raise ValueError(f"data.noise_mode must be replace, shuffle or duplicate, got {mode!r}")
        if unit not in ("sequence", "document"):
            raise ValueError(f"data.noise_unit must be sequence or document, got {unit!r}")
        empty = np.zeros(0, np.int64)
        if rate <= 0 or num_sequences == 0:
            return cls(empty, mode, vocab_size, seed, rate, unit)
        docs = empty
        order = np.argsort(uniform01(seed, _PICK, 0, np.arange(num_sequences)), kind="stable")
        if unit == "document":
            if doc_of is None:
                raise ValueError("noise by document needs each sequence's document (doc_of)")
            doc_ids = np.unique(doc_of)
            doc_order = doc_ids[np.argsort(uniform01(seed, _PICK_DOC, 0, doc_ids), kind="stable")]
            docs = np.sort(doc_order[:int(round(rate * len(doc_ids)))]).astype(np.int64)
            ids = np.flatnonzero(np.isin(doc_of, docs)).astype(np.int64)
        else:
            ids = np.sort(order[:int(round(rate * num_sequences))]).astype(np.int64)
        source_of: dict[int, int] = {}
        if mode == "duplicate" and len(ids):
            noisy = np.zeros(num_sequences, bool)
            noisy[ids] = True
            free = order[~noisy[order]]
            m = max(1, -(-len(ids) // max(1, repeats)))
            if len(free) < m:
                raise ValueError(f"data.noise_rate={rate}: too few clean sequences left to copy")
            source_of = {int(i): int(free[j % m]) for j, i in enumerate(ids)}
        return cls(ids, mode, vocab_size, seed, rate, unit, docs, source_of)

    @property
    def source_ids(self) -> list[int]:
        return sorted(set(self.source_of.values()))

    def attach(self, tokens_of: Callable[[Sequence[int]], dict[int, np.ndarray]]) -> SequenceNoise:
        """``duplicate``: read the sources' clean tokens (``tokens_of(ids) → {id: tokens}``) once."""
        if self.source_of and not self.sources:
            self.sources = {int(k): np.asarray(v, np.int64) for k, v in tokens_of(self.source_ids).items()}
        return self

    def apply_rows(self, tokens: np.ndarray, gids: np.ndarray) -> np.ndarray:
        """The (noisy) tokens of the sequences ``gids`` (int64 [b, T] from clean [b, T])."""
        out = np.array(tokens, dtype=np.int64, copy=True)
        if len(self.ids) == 0:
            return out
        hit = np.flatnonzero(np.isin(gids, self.ids))
        if len(hit) == 0:
            return out
        length = out.shape[1]
        if self.mode == "duplicate":
            for r in hit:
                out[r] = self.sources[self.source_of[int(gids[r])]]
            return out
        cells = (np.asarray(gids)[hit, None].astype(np.int64) * length + np.arange(length)[None, :]).ravel()
        u = uniform01(self.seed, _TOKEN, 0, cells).reshape(len(hit), length)
        if self.mode == "replace":
            out[hit] = np.minimum((u * self.vocab_size).astype(np.int64), self.vocab_size - 1)
        else:
            out[hit] = np.take_along_axis(out[hit], np.argsort(u, axis=1), axis=1)
        return out

    def record(self) -> dict:
        """``noise.json``: the rate, mode and unit, the noisy sequence ids (and documents, and duplicate sources)."""
        rec = {"rate": self.rate, "mode": self.mode, "unit": self.unit, "num_flipped": int(len(self.ids)),
               "flipped_ids": self.ids.tolist()}
        if self.unit == "document":
            rec["flipped_documents"] = self.docs.tolist()
        if self.source_of:
            rec["sources"] = self.source_ids
        return rec


# -- documents and packing ----------------------------------------------------------------------------------
#: lines per chunk when a shard is tokenized: memory stays bounded whatever the shard's size
CHUNK_LINES = 16384


def file_chunks(path: str) -> Iterator[tuple[list[str], np.ndarray]]:
    """The lines (keepends, split as ``str.splitlines`` splits the whole text) of a text file, read line by line
    in chunks of about :data:`CHUNK_LINES`, with the document of each line (blank-line blocks: the rule of
    :func:`~swift_scale.data.text.line_documents`, carried across chunks)."""
    from swift_scale.data.text import document_counter

    doc, after_blank = -1, True

    def chunk(lines: list[str]) -> tuple[list[str], np.ndarray]:
        nonlocal doc, after_blank
        counter = document_counter(lines, after_blank, doc)
        doc, after_blank = int(counter[-1]), not lines[-1].strip()
        return lines, np.maximum(counter, 0)

    lines: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:  # universal newlines, as Path.read_text reads
        for raw in f:
            lines += raw.splitlines(keepends=True)
            if len(lines) >= CHUNK_LINES:
                yield chunk(lines)
                lines = []
    if lines:
        yield chunk(lines)


def row_chunks(rows: Iterable[str | None]) -> Iterator[tuple[list[str], np.ndarray]]:
    """Text rows (documents) as lines joined by newlines (as :func:`~swift_scale.data.text.read_text` joins
    them), in chunks of about :data:`CHUNK_LINES`, with the row of each line; empty rows are left out."""
    lines: list[str] = []
    docs: list[int] = []
    doc = -1
    for row in rows:
        if not row:
            continue
        if doc >= 0:  # the newline joining the previous row to this one: its own line after a line break
            last = lines[-1]
            if last.endswith("\r") or last == last.splitlines()[0]:  # "\r" + "\n" is one break
                lines[-1] += "\n"
            else:
                lines.append("\n")
                docs.append(doc)
        doc += 1
        for piece in row.splitlines(keepends=True):
            lines.append(piece)
            docs.append(doc)
        if len(lines) >= CHUNK_LINES:  # keep the last line: the next row's joining newline goes there
            yield lines[:-1], np.asarray(docs[:-1], np.int64)
            lines, docs = lines[-1:], docs[-1:]
    if lines:
        yield lines, np.asarray(docs, np.int64)


def pack_documents(ids: np.ndarray, token_doc: np.ndarray, seq_len: int,
                   vocab_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids → (sequences int64 [n, seq_len] as :func:`~swift_scale.data.text.pack` cuts them, the document
    of each sequence's first token int64 [n], unigram counts of the packed tokens int64 [vocab])."""
    n = len(ids) // seq_len
    seqs = np.asarray(ids[:n * seq_len], dtype=np.int64).reshape(n, seq_len)
    counts = np.bincount(seqs.ravel(), minlength=vocab_size).astype(np.int64)
    return seqs, np.asarray(token_doc[:n * seq_len:seq_len], dtype=np.int64), counts


# -- the cache ----------------------------------------------------------------------------------------------
def _meta_path(out: Path, i: int) -> Path:
    return out / f"train-{i:06d}.json"


def read_cache_meta(out: Path, i: int) -> dict | None:
    """The finished shard ``i``'s record (sequences, documents, unigram counts), or None when not written."""
    path = _meta_path(out, i)
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("version") == CACHE_VERSION else None


def _identity(source: str, seq_len: int, tokenizer_sha: str, reader: str) -> dict:
    """What a cached shard was made from: the source file (path, size, mtime), how it is read (``reader``: e.g.
    the text column), seq_len and the tokenizer (its sha)."""
    path = source.split(":", 2)[2] if source.startswith("hf:") else source
    stamp: str | int | None  # a remote store's etag (or blob id, mtime) as a string; a local file's mtime_ns
    if not is_local(path):  # a remote file (hf:// URLs carry the commit): its size and etag where the store has one
        import fsspec

        fs, inner = fsspec.core.url_to_fs(path)
        info = fs.info(inner)
        stamp = next((str(info[k]) for k in ("etag", "blob_id", "mtime") if info.get(k) is not None), None)
        size = info.get("size")
    else:
        st = os.stat(path)
        size, stamp = st.st_size, st.st_mtime_ns
    return {"source": source, "size": size, "mtime_ns": stamp, "reader": reader, "seq_len": seq_len,
            "tokenizer": tokenizer_sha}


def _write_shard(out: Path, i: int, ident: dict, chunks: Iterable[tuple[list[str], np.ndarray]], tokenizer,
                 seq_len: int) -> None:
    """Tokenize the chunks of shard ``i`` and write its sequences as they fill (a fixed tar mtime: the same bytes
    on every rebuild), then the document of each sequence and the shard's record."""
    import webdataset as wds

    from swift_scale.data.text import encode_documents
    from swift_scale.io import atomic_save_npy, atomic_write_json, fsync_dir

    vocab = len(tokenizer)
    path = out / f"train-{i:06d}.tar"
    tmp = path.with_name(f".{path.name}.tmp")
    _meta_path(out, i).unlink(missing_ok=True)  # the old record goes first: a kill below leaves no valid record
    fsync_dir(out)
    dtype = np.uint16 if vocab <= 1 << 16 else np.int32
    carry_ids, carry_doc = np.zeros(0, np.int32), np.zeros(0, np.int64)
    owners, counts, num_docs, n = [], np.zeros(vocab, np.int64), 0, 0
    with wds.TarWriter(str(tmp), mtime=0.0) as sink:
        for lines, line_doc in chunks:
            ids, token_doc = encode_documents(tokenizer, lines, line_doc + (i << 32))
            ids, token_doc = np.concatenate([carry_ids, ids]), np.concatenate([carry_doc, token_doc])
            seqs, owner, c = pack_documents(ids, token_doc, seq_len, vocab)
            for seq in seqs:
                sink.write({"__key__": f"{n:09d}", "tokens.npy": np.ascontiguousarray(seq, dtype=dtype)})
                n += 1
            carry_ids, carry_doc = ids[len(seqs) * seq_len:], token_doc[len(seqs) * seq_len:]
            owners.append(owner)
            counts += c
            num_docs = max(num_docs, int(line_doc.max(initial=-1)) + 1)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    atomic_save_npy(out / f"train-{i:06d}.docs.npy", np.concatenate(owners) if owners else np.zeros(0, np.int64))
    atomic_write_json(_meta_path(out, i), {"version": CACHE_VERSION, **ident, "sequences": n,
                                           "documents": num_docs, "unigram": counts.tolist()})


def build_token_cache(sources: Sequence[str], read_chunks: Callable[[int], Iterable[tuple[list[str], np.ndarray]]],
                      tokenizer, seq_len: int, out: Path, rank: int = 0, world: int = 1, reader: str = "") -> None:
    """Tokenize and pack source shard ``i`` (for i ≡ rank mod world) into ``out/train-{i:06d}.tar`` (with the
    document of each sequence in ``.docs.npy`` and the counts in ``.json``) unless it is done already for the
    same source file, ``reader`` (how ``read_chunks`` reads it, e.g. the text column), ``seq_len`` and tokenizer. ``read_chunks(i)`` yields the shard's lines (keepends) chunk by
    chunk with the document of each line (:func:`file_chunks`, :func:`row_chunks`), so memory stays bounded; a
    document's global id is i·2^32 + its number in the shard, unique without counting the other shards. The
    sequences are those :func:`~swift_scale.data.text.pack` cuts from the whole shard's tokens."""
    import hashlib

    from swift_scale.data.text import tokenizer_json

    out.mkdir(parents=True, exist_ok=True)
    sha = hashlib.sha256(tokenizer_json(tokenizer).encode()).hexdigest()[:16]
    for i in range(rank, len(sources), world):
        ident = _identity(sources[i], seq_len, sha, reader)
        meta = read_cache_meta(out, i)
        if meta is not None and all(meta.get(k) == v for k, v in ident.items()) \
                and (out / f"train-{i:06d}.tar").exists() and (out / f"train-{i:06d}.docs.npy").exists():
            continue
        _write_shard(out, i, ident, read_chunks(i), tokenizer, seq_len)


# -- streaming ----------------------------------------------------------------------------------------------
class TokenStreamingSplit(StreamingSplit):
    """Packed token sequences read from their shards every pass (``data.task=lm`` with ``data.mode=streaming``).

    Samples hold ``tokens.npy`` (an integer array of ``seq_len`` tokens, as
    :func:`~swift_scale.data.writers.write_token_shards` writes them); a sequence of another length, a
    non-integer dtype or a token outside the vocabulary is a bad sample (``data.on_error``). Input and target are
    the same sequence (the LM task shifts it).

    Args:
        index: the shard table of the token shards.
        options: reading settings (``image_key`` names the tokens field).
        seq_len: tokens per sequence.
        vocab_size: the tokenizer's vocabulary.
        noise: the training noise by sequence id (None: clean).
    """

    def __init__(self, index: ShardIndex, options: StreamOptions, seq_len: int, vocab_size: int,
                 noise: SequenceNoise | None = None):
        super().__init__(index, options)
        self.seq_len, self.vocab_size = seq_len, vocab_size
        self.seq_noise = noise

    def to_input(self, x: torch.Tensor, device) -> torch.Tensor:
        return x.to(device, non_blocking=True)

    def decode(self, gid: int, sample: dict):
        """(clean tokens int64 [T], 0), or None for a bad sample with ``on_error=skip``."""
        try:
            tokens = decode_tokens(sample, self.opts.image_key, self.seq_len, self.vocab_size)
        except BadSample as e:
            self.bad(sample.get("__url__"), sample.get("__key__"), str(e), gid)
            return None
        return tokens, 0

    def collate(self, raw, fill: bool = False):
        """(tokens int64 [b, T], the same tokens as targets, global ids); noise applied by id; bad samples left
        out (``fill``: replaced by zeros, as for images)."""
        decoded = [(gid, self.decode(gid, s)) for gid, s in raw]
        if fill:
            decoded = [(g, d if d is not None else (np.zeros(self.seq_len, np.int64), 0)) for g, d in decoded]
        out = [(gid, d[0]) for gid, d in decoded if d is not None]
        if not out:
            return None
        gids = np.array([g for g, _ in out], dtype=np.int64)
        tokens = np.stack([t for _, t in out])
        if self.seq_noise is not None:
            tokens = self.seq_noise.apply_rows(tokens, gids)
        x = torch.from_numpy(tokens)
        return x, x, torch.from_numpy(gids)

    def empty_batch(self):
        return torch.zeros((0, self.seq_len), dtype=torch.int64), torch.zeros((0, self.seq_len), dtype=torch.int64), \
            torch.zeros(0, dtype=torch.int64)

    def tokens_of(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """The clean tokens of a few sequences by global id (reading only the shards that hold them)."""
        want = set(int(i) for i in ids)
        found: dict[int, np.ndarray] = {}
        offsets = np.asarray(self.offsets)
        for shard in sorted({int(np.searchsorted(offsets, i, side="right") - 1) for i in want}):
            mask = np.zeros(len(self), bool)
            mask[[i for i in want if self.offsets[shard] <= i < self.offsets[shard] + self.counts[shard]]] = True
            for gid, sample in self.raw(shard, 0, int(mask.sum()), mask):
                got = self.decode(gid, sample)
                if got is None:
                    raise DataError(f"{self.urls[shard]}: duplicate-noise source sequence {gid} is a bad sample")
                found[gid] = got[0]
        return found


def decode_tokens(sample: dict, key: str, seq_len: int, vocab_size: int) -> np.ndarray:
    """A sample's token sequence (int64 [seq_len]); BadSample naming what is wrong."""
    if key not in sample:
        have = sorted(k for k in sample if not str(k).startswith("__"))
        raise BadSample(f"lacks field {key!r} (has {have}); write token shards with write_token_shards")
    try:
        arr = read_npy(sample[key])
    except Exception as e:  # noqa: BLE001 - any unreadable payload is a bad sample
        raise BadSample(f"{key} cannot be read as .npy ({type(e).__name__})") from None
    if arr.dtype.kind not in "iu":
        raise BadSample(f"{key} has dtype {arr.dtype}, not integer token ids")
    if arr.shape != (seq_len,):
        raise BadSample(f"{key} has shape {arr.shape}, not ({seq_len},); set data.seq_len to the shards' length")
    if len(arr) and (arr.min() < 0 or arr.max() >= vocab_size):
        raise BadSample(f"{key} has token ids outside [0, {vocab_size}); wrong data.tokenizer")
    return arr.astype(np.int64)


def count_unigrams(split: StreamingSplit, vocab_size: int, shards: Sequence[int]) -> np.ndarray:
    """Unigram counts (int64 [vocab]) of the given shards of a token stream (one read of each)."""
    counts = np.zeros(vocab_size, np.int64)
    for shard in shards:
        for raw in batches_after(split.raw(shard, 0, int(split.counts[shard]), None), 1024, 0, partial=True):
            batch = split.collate(raw)
            if batch is not None:
                counts += np.bincount(batch[0].numpy().ravel(), minlength=vocab_size)
    return counts


def token_shard_files(out: Path, n: int) -> list[str]:
    """The cache's shard paths, in source order."""
    return [str(out / f"train-{i:06d}.tar") for i in range(n)]
