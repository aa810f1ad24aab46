"""The feature store: one row of float32 features per training example, addressed by global id.

Layout of a store directory::

    features.npy   [N, F] float32, memory-mapped (``np.lib.format.open_memmap``)
    mask.npy       [N] uint8, 1 where the row has been written (unwritten memmap rows read back as 0)
    done/          one empty marker file per completed shard, so a killed pass resumes per shard
    meta.json      feature names, N, quantile tables, format version; ``"complete": true`` once finalised

The arrays are created once, by one process, under a temp name and ``os.replace``d into place; every other
open is read-only or ``r+`` (never ``w+``, which would truncate). Any process may write rows by id.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import numpy as np

from swift_scale.io import FileError, atomic_write_json, fsync_dir, read_json

__all__ = ["FeatureStore", "quantile_table", "FORMAT_VERSION"]

FORMAT_VERSION = 1
#: Columns up to this many rows get exact quantiles; longer ones a bounded-memory histogram estimate.
EXACT_QUANTILE_LIMIT = 1 << 24


def quantile_table(
    column: np.ndarray, num_points: int = 1025, exact_limit: int = EXACT_QUANTILE_LIMIT, chunk: int = 1 << 22
) -> np.ndarray:
    """Empirical quantiles of ``column`` at ``linspace(0, 1, num_points)``, float64 [num_points].

    Exact (``np.quantile``) when ``len(column) <= exact_limit``. Otherwise two chunked passes (min/max, then a
    2^16-bin histogram) bound memory to O(chunk) whatever N is — the column may be a memmap view; each
    quantile is then within one bin width ((max − min) / 65536) of the exact value.
    """
    n = len(column)
    if n == 0:
        raise ValueError("cannot compute quantiles of an empty column")
    probs = np.linspace(0.0, 1.0, num_points)
    if n <= exact_limit:
        return np.quantile(np.asarray(column, dtype=np.float64), probs)
    lo, hi = np.inf, -np.inf
    for s in range(0, n, chunk):
        c = np.asarray(column[s : s + chunk], dtype=np.float64)
        lo, hi = min(lo, float(c.min())), max(hi, float(c.max()))
    if hi <= lo:
        return np.full(num_points, lo)
    bins = 1 << 16
    counts = np.zeros(bins, dtype=np.int64)
    for s in range(0, n, chunk):
        c = np.asarray(column[s : s + chunk], dtype=np.float64)
        idx = np.minimum(((c - lo) * (bins / (hi - lo))).astype(np.int64), bins - 1)
        counts += np.bincount(idx, minlength=bins)
    cdf = np.concatenate([[0.0], np.cumsum(counts) / n])
    edges = np.linspace(lo, hi, bins + 1)
    table = np.interp(probs, cdf, edges)
    table[0], table[-1] = lo, hi
    return np.maximum.accumulate(table)


class FeatureStore:
    """Memory-mapped per-example features. Create with :meth:`create`, open anywhere with :meth:`open`."""

    def __init__(self, root: Path, mode: Literal["r", "r+"] = "r"):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path}: no feature store here; run the features phase first")
        fix = f"delete {self.root} to rebuild the store"
        self.meta = read_json(meta_path, fix)
        if not isinstance(self.meta, dict) or self.meta.get("version") != FORMAT_VERSION:
            version = self.meta.get("version") if isinstance(self.meta, dict) else None
            raise ValueError(f"{meta_path}: store format {version} != {FORMAT_VERSION}; {fix}")
        self.features = self._open(self.root / "features.npy", mode, fix)
        self.mask = self._open(self.root / "mask.npy", mode, fix)
        n, f = self.meta["num_examples"], len(self.meta["feature_names"])
        if self.features.shape != (n, f) or self.mask.shape != (n,):
            raise ValueError(f"{self.root}: array shapes disagree with meta.json; delete the store to rebuild it")

    @staticmethod
    def _open(path: Path, mode: str, fix: str) -> np.memmap:
        try:
            return np.load(path, mmap_mode=mode)  # type: ignore[arg-type]
        except (OSError, ValueError, EOFError) as e:  # missing, truncated ("mmap length is greater ..."), garbage
            raise FileError(f"{path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0]}); {fix}") from None

    # -- creation -------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | os.PathLike, num_examples: int, feature_names: list[str] | tuple[str, ...],
               info: dict | None = None) -> FeatureStore:
        """Create the arrays (once, by one process) and return the store opened ``r+``.

        If a store with the same N and feature names exists, it is reopened (so a killed pass resumes).
        """
        root = Path(root)
        if num_examples <= 0:
            raise ValueError("a feature store needs at least one example (the training split is empty)")
        if (root / "meta.json").exists():
            store = cls(root, mode="r+")
            if store.num_examples == num_examples and tuple(store.feature_names) == tuple(feature_names):
                return store
            raise ValueError(f"{root}: an existing store has a different shape or features; delete it to rebuild")
        root.mkdir(parents=True, exist_ok=True)
        (root / "done").mkdir(exist_ok=True)
        for name, shape, dtype in (("features", (num_examples, len(feature_names)), np.float32),
                                   ("mask", (num_examples,), np.uint8)):
            tmp = root / f".{name}.tmp.npy"
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            arr.flush()
            del arr
            os.replace(tmp, root / f"{name}.npy")
        meta = {"version": FORMAT_VERSION, "num_examples": int(num_examples), "feature_names": list(feature_names),
                "complete": False, "quantiles": {}, "info": info or {}}
        atomic_write_json(root / "meta.json", meta)
        fsync_dir(root)
        return cls(root, mode="r+")

    # -- properties -----------------------------------------------------------------------------------------
    @property
    def num_examples(self) -> int:
        return int(self.meta["num_examples"])

    @property
    def feature_names(self) -> list[str]:
        return list(self.meta["feature_names"])

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    def column(self, name: str) -> np.ndarray:
        """A [N] view (memmap-backed) of one feature."""
        return self.features[:, self.feature_names.index(name)]

    def iter_chunks(self, rows: int = 1 << 20):
        """Yield (start, {name: float32 [n]}) over the store in row chunks, read with plain file reads.

        Unlike slicing the memmap, this leaves no file pages mapped into the process, so peak RSS stays at a
        few chunks whatever N is (scoring 10^8+ examples).
        """
        path = self.root / "features.npy"
        width = len(self.feature_names)
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            read_header(f)  # leaves f at the first data byte
            for start in range(0, self.num_examples, rows):
                n = min(rows, self.num_examples - start)
                block = np.fromfile(f, dtype=np.float32, count=n * width).reshape(n, width)
                yield start, {name: np.ascontiguousarray(block[:, i]) for i, name in enumerate(self.feature_names)}

    def quantiles(self, name: str) -> np.ndarray:
        if name not in self.meta["quantiles"]:
            raise KeyError(f"no quantile table for {name!r}; finalise the store first")
        return np.asarray(self.meta["quantiles"][name], dtype=np.float64)

    # -- writing --------------------------------------------------------------------------------------------
    def write(self, ids: np.ndarray, values: np.ndarray) -> None:
        """Write rows ``values`` [B, F] at global ``ids`` [B] and mark them written."""
        ids = np.asarray(ids, dtype=np.int64)
        values = np.asarray(values, dtype=np.float32)
        if values.shape != (len(ids), self.features.shape[1]):
            raise ValueError(f"values shape {values.shape} != ({len(ids)}, {self.features.shape[1]})")
        if len(ids) and (ids.min() < 0 or ids.max() >= self.num_examples):
            raise IndexError(f"global ids out of range [0, {self.num_examples})")
        self.features[ids] = values
        self.mask[ids] = 1

    def flush(self) -> None:
        self.features.flush()
        self.mask.flush()

    def mark_done(self, unit: str, info: dict | None = None) -> None:
        """Record that a unit of work (a shard) is written: flush rows first, then an atomic marker holding
        ``info`` (e.g. the shard's bad samples)."""
        self.flush()
        atomic_write_json(self.root / "done" / unit, {"unit": unit, **(info or {})})

    def done_info(self) -> dict[str, dict]:
        """Each done unit's marker (with the ``info`` given to :meth:`mark_done`)."""
        return {u: json.loads((self.root / "done" / u).read_text()) for u in sorted(self.done_units())}

    def skipped(self) -> list[dict]:
        """The bad samples the done markers record (``{"skipped": [...]}``), each id once, sorted by id."""
        by_id = {e["id"]: e for info in self.done_info().values() for e in info.get("skipped", [])}
        return [by_id[k] for k in sorted(by_id)]

    def done_units(self) -> set[str]:
        d = self.root / "done"
        return {p.name for p in d.iterdir() if not p.name.startswith(".")} if d.exists() else set()

    def finalize(self, num_points: int = 1025, exact_limit: int = EXACT_QUANTILE_LIMIT) -> None:
        """Check every row is written, compute quantile tables, publish ``meta.json`` with complete=true."""
        self.flush()
        missing = self.num_examples - int(np.count_nonzero(self.mask))
        if missing:
            raise RuntimeError(f"{self.root}: {missing} of {self.num_examples} rows were never written")
        quantiles = {n: quantile_table(self.column(n), num_points, exact_limit).tolist() for n in self.feature_names}
        self.meta = {**self.meta, "quantiles": quantiles, "complete": True}
        atomic_write_json(self.root / "meta.json", self.meta)
