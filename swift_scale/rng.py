"""Counter-based randomness: every random number is a pure function of (seed, stream, epoch, global id).

Nothing here touches a global RNG. The same example gets the same number on every rank, in every DataLoader
worker, after any restart — which is what makes selections identical for any world size and worker count.
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["hash_u64", "uniform01", "stream_id", "generator"]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (a bijection on uint64), vectorised."""
    z = z ^ (z >> np.uint64(30))
    z = z * _M1
    z = z ^ (z >> np.uint64(27))
    z = z * _M2
    return z ^ (z >> np.uint64(31))


def stream_id(name: str) -> int:
    """A stable 32-bit number for a named random stream ("noise", "keep", "epoch", ...)."""
    return zlib.crc32(name.encode())


def hash_u64(seed: int, stream: int, epoch: int, ids: np.ndarray) -> np.ndarray:
    """uint64 hash of (seed, stream, epoch, id) for every id; shape of ``ids``."""
    ids = np.asarray(ids).astype(np.uint64, copy=False)
    with np.errstate(over="ignore"):
        k = _mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) + _GOLDEN)
        k = _mix(k ^ np.uint64(stream & 0xFFFFFFFFFFFFFFFF))
        k = _mix(k ^ np.uint64(epoch & 0xFFFFFFFFFFFFFFFF))
        return _mix((ids * _GOLDEN) ^ k)


def uniform01(seed: int, stream: int, epoch: int, ids: np.ndarray) -> np.ndarray:
    """Uniform numbers in the open interval (0, 1), float64, one per id, pure in (seed, stream, epoch, id)."""
    h = hash_u64(seed, stream, epoch, ids)
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def generator(seed: int, stream: int, epoch: int = 0) -> np.random.Generator:
    """A fresh Philox generator keyed by (seed, stream, epoch): explicit, never global."""
    key = hash_u64(seed, stream, epoch, np.array([0, 1], dtype=np.uint64))
    return np.random.Generator(np.random.Philox(key=key))
