"""Text for language modelling: sources, a byte-level BPE tokenizer, packed sequences with stable ids, noise.

A split is named by ``data.train`` etc. as

- plain-text files: a path, a glob or a brace pattern (``corpus/train-*.txt``; several joined by ``::``), read
  as UTF-8 in sorted order;
- a Hugging Face dataset: ``hf:DIR[#SPLIT]`` / ``hf:BUILDER:FILES`` (see :mod:`swift_scale.data.hf`), whose
  ``data.text_key`` column (default ``text``) is joined with newlines.

The text is tokenized and packed into fixed-length sequences of ``seq_len`` tokens (the tail that does not fill a
sequence is dropped); the global id of a sequence is its index, stable for a given corpus and tokenizer.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np

from swift_scale.data.decode import read_npy
from swift_scale.data.hf import is_hf, open_hf
from swift_scale.data.shards import DataError, raw_samples
from swift_scale.rng import stream_id, uniform01

__all__ = ["is_token_shards", "load_token_shards", "read_text", "text_files", "read_file_text", "train_tokenizer",
           "save_tokenizer", "tokenizer_json", "tokenizer_from_json", "load_tokenizer", "encode", "encode_lines",
           "line_documents", "document_counter", "encode_documents", "pack", "corrupt_sequences", "unigram_rarity",
           "rarity_of_counts"]


def is_token_shards(ref: str) -> bool:
    """A WebDataset pattern of ``.tar`` shards (``tokens.npy`` samples written by ``write_token_shards``)."""
    from webdataset.shardlists import expand_urls

    urls = [] if is_hf(ref) else expand_urls(ref)
    return bool(urls) and all(u.endswith(".tar") for u in urls)


def load_token_shards(index, seq_len: int, field: str = "data") -> np.ndarray:
    """Packed sequences int64 [N, seq_len] from token shards, in shard-table order (row = global id)."""
    rows = []
    for url, count in zip(index.urls, index.counts):
        n = 0
        for sample in raw_samples(url):
            if "tokens.npy" not in sample:
                raise DataError(f"{url}: sample {sample.get('__key__')!r} has no tokens.npy; write token shards "
                                "with swift_scale.data.writers.write_token_shards")
            seq = read_npy(sample["tokens.npy"])
            if seq.shape != (seq_len,):
                raise DataError(f"{url}: sample {sample.get('__key__')!r} has {seq.shape[0]} tokens, "
                                f"data.seq_len={seq_len}; set data.seq_len to the shards' length")
            rows.append(seq.astype(np.int64))
            n += 1
        if n != count:
            raise DataError(f"{url}: {n} samples read but {count} indexed; delete the run's index.json")
    if not rows:
        raise DataError(f"{field}: no token sequences")
    return np.stack(rows)


def text_files(ref: str, field: str = "data") -> list[str]:
    """The text files a path, glob or brace pattern names, in order; DataError when one does not exist."""
    from webdataset.shardlists import expand_urls

    paths: list[str] = []
    for pattern in expand_urls(ref):
        found = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        paths += [p for p in found if os.path.isfile(p)]
        if not found or not all(os.path.isfile(p) for p in found):
            raise DataError(f"{field}: {pattern} does not exist; give text files (a path, glob or brace pattern)")
    return paths


def read_file_text(path: str) -> str:
    return Path(path).read_text(encoding="utf-8", errors="replace")


def read_text(ref: str, *, text_key: str = "text", field: str = "data") -> str:
    """All text of one split (files or an HF text column); DataError naming ``field`` if there is none."""
    if is_hf(ref):
        ds = open_hf(ref, field)
        if text_key not in ds.column_names:
            raise DataError(f"{field}: no column {text_key!r} in {ref} (columns: {ds.column_names}); "
                            "set data.text_key")
        text = "\n".join(t for t in ds[text_key] if t)
    else:
        text = "\n".join(read_file_text(p) for p in text_files(ref, field))
    if not text.strip():
        raise DataError(f"{field}: {ref} holds no text")
    return text


def train_tokenizer(text: str, vocab_size: int, out_dir: str | os.PathLike | None = None):
    """Train a byte-level BPE (``tokenizers``) on ``text``, as a transformers tokenizer; saved in ``out_dir``
    (atomically) when given."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    chunks = (text[i:i + 1 << 20] for i in range(0, len(text), 1 << 20))
    bpe.train_from_iterator(chunks, vocab_size=vocab_size, min_frequency=2, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")
    if out_dir is not None:
        save_tokenizer(tok, out_dir)
    return tok


def save_tokenizer(tok, out_dir: str | os.PathLike) -> None:
    """``save_pretrained`` into a temp folder swapped into place."""
    tmp = Path(f"{out_dir}.tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tok.save_pretrained(str(tmp))
    if Path(out_dir).exists():
        import shutil

        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def tokenizer_json(tok) -> str:
    """The whole tokenizer (vocabulary, merges, specials) as one JSON string."""
    return tok.backend_tokenizer.to_str()


def tokenizer_from_json(payload: str):
    """Inverse of :func:`tokenizer_json` for the tokenizers :func:`train_tokenizer` makes."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(payload), eos_token="<|endoftext|>")


def load_tokenizer(path: str | os.PathLike):
    """A local tokenizer directory (``save_pretrained`` layout), never the network."""
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise DataError(f"data.tokenizer: {path} is not a tokenizer directory (save_pretrained layout)")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise DataError(f"data.tokenizer: cannot load {path} ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def encode(tokenizer, text: str) -> np.ndarray:
    """Token ids of ``text`` (int32), encoded in line batches so large corpora stay fast."""
    out = encode_lines(tokenizer, text.splitlines(keepends=True))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int32)


def encode_lines(tokenizer, lines: list[str]) -> list[np.ndarray]:
    """Token ids (int32) of each line, encoded in batches of 4096 lines."""
    out = []
    for i in range(0, len(lines), 4096):
        out += [np.asarray(ids, dtype=np.int32) for ids in tokenizer(lines[i:i + 4096])["input_ids"]]
    return out


def line_documents(lines: list[str]) -> np.ndarray:
    """The document of each line (int64 [len(lines)]): documents are blocks separated by blank lines (as
    tools/prepare_text_corpus.py writes them); a blank line belongs to the document before it."""
    return np.maximum(document_counter(lines), 0)


def document_counter(lines: list[str], after_blank: bool = True, last: int = -1) -> np.ndarray:
    """``last`` + the number of documents begun up to each line (int64 [len(lines)]; −1 on blank lines before
    the first document): :func:`line_documents` before its clamp at 0. A text read in chunks continues with
    ``after_blank`` (whether the line before the chunk was blank) and ``last`` (the counter there)."""
    blank = np.array([not ln.strip() for ln in lines], dtype=bool)
    starts = ~blank & np.concatenate([[after_blank], blank[:-1]]) if len(lines) else blank
    return last + np.cumsum(starts, dtype=np.int64)


def encode_documents(tokenizer, lines: list[str], line_doc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(token ids int32 [n], the document of each token int64 [n]) of ``lines`` — the same ids as
    :func:`encode` of the joined lines."""
    per_line = encode_lines(tokenizer, lines)
    if not per_line:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    return np.concatenate(per_line), np.repeat(line_doc, [len(x) for x in per_line])


def pack(ids: np.ndarray, seq_len: int) -> np.ndarray:
    """Fixed-length sequences [N, seq_len] (int64); sequence i = tokens [i·L, (i+1)·L)."""
    n = len(ids) // seq_len
    return np.asarray(ids[:n * seq_len], dtype=np.int64).reshape(n, seq_len)


def corrupt_sequences(tokens: np.ndarray, rate: float, vocab_size: int, seed: int, mode: str = "replace"):
    """Corrupt exactly round(rate·N) sequences, chosen by id from (seed, id): ``replace`` every token by a random
    token, or ``shuffle`` the tokens of the sequence. Returns (noisy tokens, corrupted ids sorted)."""
    if mode not in ("replace", "shuffle"):
        raise ValueError(f"data.noise_mode must be replace or shuffle, got {mode!r}")
    n, length = tokens.shape
    k = int(round(rate * n))
    noisy = tokens.copy()
    if k == 0:
        return noisy, np.zeros(0, dtype=np.int64)
    order = np.argsort(uniform01(seed, stream_id("text-noise-pick"), 0, np.arange(n)), kind="stable")
    flipped = np.sort(order[:k])
    cells = (flipped[:, None] * length + np.arange(length)[None, :]).ravel()
    u = uniform01(seed, stream_id("text-noise-token"), 0, cells).reshape(k, length)
    if mode == "replace":
        noisy[flipped] = np.minimum((u * vocab_size).astype(np.int64), vocab_size - 1)
    else:
        noisy[flipped] = np.take_along_axis(tokens[flipped], np.argsort(u, axis=1), axis=1)
    return noisy, flipped


def unigram_rarity(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """−log of each token's add-one-smoothed unigram frequency on ``tokens`` (float32 [vocab_size])."""
    return rarity_of_counts(np.bincount(np.asarray(tokens).ravel(), minlength=vocab_size))


def rarity_of_counts(counts: np.ndarray) -> np.ndarray:
    """:func:`unigram_rarity` from unigram counts (int [vocab_size]), e.g. summed over the shards of a stream."""
    smoothed = np.asarray(counts, dtype=np.float64) + 1.0
    return (-np.log(smoothed / smoothed.sum())).astype(np.float32)
