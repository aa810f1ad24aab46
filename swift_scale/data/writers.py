"""Write real datasets to WebDataset shards with ``webdataset.ShardWriter`` (png image + cls label)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import webdataset as wds

__all__ = ["write_shards", "write_token_shards", "write_digits", "write_fashion_mnist", "split_indices"]


def write_shards(out_dir: str | os.PathLike, split: str, images: np.ndarray, labels: np.ndarray,
                 maxcount: int = 1000) -> str:
    """Write ``images`` (uint8 [N, H, W] or [N, H, W, 3]) and ``labels`` to ``{split}-%06d.tar``.

    Returns the brace pattern of the written shards. Shards are written under a temp folder and moved into
    place, so a crash never leaves a half-written split that looks complete.
    """
    return _write(out_dir, split, ({"png": np.ascontiguousarray(img), "cls": int(label)}
                                   for img, label in zip(images, labels)), maxcount)


def write_token_shards(out_dir: str | os.PathLike, split: str, sequences: np.ndarray, maxcount: int = 10000) -> str:
    """Write packed token sequences (int [N, T]) as ``tokens.npy`` samples to ``{split}-%06d.tar`` (for
    corpora too large to tokenize at every run; read back with ``data.task=lm`` and ``data.tokenizer``)."""
    dtype = np.uint16 if sequences.max(initial=0) < 1 << 16 else np.int32
    return _write(out_dir, split, ({"tokens.npy": np.ascontiguousarray(seq, dtype=dtype)} for seq in sequences),
                  maxcount)


def _write(out_dir: str | os.PathLike, split: str, samples, maxcount: int) -> str:
    out = Path(out_dir)
    tmp = out / f".tmp-{split}"
    tmp.mkdir(parents=True, exist_ok=True)
    for old in tmp.glob("*.tar"):
        old.unlink()
    with wds.ShardWriter(str(tmp / f"{split}-%06d.tar"), maxcount=maxcount, verbose=0) as sink:
        for i, sample in enumerate(samples):
            sink.write({"__key__": f"{i:08d}", **sample})
    written = sorted(tmp.glob("*.tar"))
    for old in out.glob(f"{split}-*.tar"):
        old.unlink()
    for f in written:
        os.replace(f, out / f.name)
    tmp.rmdir()
    return str(out / f"{split}-{{000000..{len(written) - 1:06d}}}.tar")


def split_indices(n: int, fractions: tuple[float, float], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded (train, val, test) partition of range(n) with the given val and test fractions."""
    perm = np.random.Generator(np.random.Philox(seed)).permutation(n)
    n_val, n_test = int(round(fractions[0] * n)), int(round(fractions[1] * n))
    return np.sort(perm[n_val + n_test:]), np.sort(perm[:n_val]), np.sort(perm[n_val:n_val + n_test])


def write_digits(out_dir: str | os.PathLike, seed: int = 0, maxcount: int = 300) -> dict[str, str]:
    """scikit-learn's bundled digits (1,797 real 8×8 images, 10 classes) as train/val/test shards (60/20/20)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - optional extra
        raise ImportError("the digits demo needs scikit-learn: pip install 'swift_scale[demo]'") from e
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    labels = d.target.astype(np.int64)
    tr, va, te = split_indices(len(labels), (0.2, 0.2), seed)
    return {split: write_shards(out_dir, split, images[idx], labels[idx], maxcount)
            for split, idx in (("train", tr), ("val", va), ("test", te))}


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def write_fashion_mnist(out_dir: str | os.PathLike, source: str = "/usr/share/datasets/fashion-mnist",
                        val_size: int = 5000, seed: int = 0, maxcount: int = 10000) -> dict[str, str]:
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` idx files: train (60k − val), val, test (10k)."""
    src = Path(source)
    names = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    for a, b in names.values():
        for f in (a, b):
            if not (src / f).exists():
                raise FileNotFoundError(f"{src / f} not found; `apt-get install dataset-fashion-mnist`")
    x, y = (_read_idx(src / f) for f in names["train"])
    xt, yt = (_read_idx(src / f) for f in names["test"])
    perm = np.random.Generator(np.random.Philox(seed)).permutation(len(y))
    va, tr = np.sort(perm[:val_size]), np.sort(perm[val_size:])
    return {"train": write_shards(out_dir, "train", x[tr], y[tr], maxcount),
            "val": write_shards(out_dir, "val", x[va], y[va], maxcount),
            "test": write_shards(out_dir, "test", xt, yt.astype(np.int64), maxcount)}
