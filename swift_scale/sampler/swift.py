"""SwiftSampler: τ(x) = φ(T(s(x))), a sampling weight from per-example features with 10 parameters.

- CDF transform: each raw feature f_n → F_n(f_n) ∈ [0, 1] through its empirical quantile table.
- Aggregation: s = Σ_n w_n F_n with w ∈ [−1, 1]², rescaled to [0, 1] by its exact bounds
  (Σ min(w_n, 0), Σ max(w_n, 0)); all-zero w gives a constant s.
- T: ``cgf`` (default) maps s to the fraction of the training set's gradient mass (Σ grad_proxy) at scores
  ≤ s, so equal lengths of T hold equal gradient mass; fitted once per sampler from a 4096-bin histogram, O(N).
  ``cdf`` is the identity (ablation).
- φ: piecewise linear on [0, 1] with knots 0 = e0 < e1 < e2 < e3 < e4 = 1 and values v0..v4 ≥ 0.

θ ∈ [0, 1]^10 ↔ (e1, e2, e3, v0..v4, w1, w2) is a fixed bijection (:func:`theta_to_params`); with S segments
(``sampler.segments``, for the ablation) θ has 2S + 2 entries and the same construction:

- knots by stick-breaking: e1 = 1 − (1 − θ0)^(1/3), e2 = e1 + (1 − e1)(1 − (1 − θ1)^(1/2)),
  e3 = e2 + (1 − e2)θ2 — uniform θ0..2 give the order statistics of 3 uniforms. A gap of δ = 1e-4 is then
  added between knots (e_i ← δ·i + (1 − 4δ)·e_i), so every θ, corners included, gives strictly increasing knots.
  θ0..2 are clamped to [ε, 1 − ε] (ε = 1e-7) first: on the open cube this is exactly invertible, and the
  faces map to their limits (a stick used up entirely would make later coordinates meaningless).
- values v_i = θ_{3+i} ∈ [0, 1] (scale does not matter: probabilities are normalised);
- weights w_n = 2θ_{8+n} − 1 ∈ [−1, 1].

Uniform sampling is the point :data:`UNIFORM_THETA` (all values 1: φ constant).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from swift_scale.io import atomic_write_json

__all__ = ["SwiftSampler", "UNIFORM_THETA", "theta_to_params", "params_to_theta", "NUM_PARAMS", "num_params",
           "uniform_theta", "KEPT_RATE", "kept_mask", "kept_share"]

NUM_PARAMS = 10  # with the default S = 4 segments; in general 2S + 2
_DELTA = 1e-4
_EPS = 1e-7  # knot coordinates are clamped to [ε, 1 − ε] so every stick keeps a length
CGF_BINS = 4096
SAMPLER_FORMAT = "swift_scale.sampler"
SAMPLER_VERSION = 1


#: An example counts as kept when it is drawn at least this many times the uniform rate 1 / N (the reports'
#: "share below 0.1× uniform" is the rest; ``search.min_kept`` bounds the kept share of the chosen sampler).
KEPT_RATE = 0.1


def kept_mask(p: np.ndarray) -> np.ndarray:
    """Which examples sampling ∝ ``p`` (normalised, [N]) draws at ≥ :data:`KEPT_RATE` × the uniform rate (bool [N])."""
    p = np.asarray(p, np.float64)
    return p * len(p) >= KEPT_RATE


def kept_share(p: np.ndarray) -> float:
    """The share of examples that sampling ∝ ``p`` (normalised, [N]) draws at ≥ :data:`KEPT_RATE` × the uniform
    rate: 1 for uniform, k for a step that keeps a fraction k of the examples."""
    return float(np.mean(kept_mask(p)))


def num_params(segments: int = 4) -> int:
    """Length of θ for φ with ``segments`` linear pieces: (S − 1) knots + (S + 1) values + 2 weights."""
    if segments < 1:
        raise ValueError(f"segments must be >= 1, got {segments}")
    return 2 * segments + 2


def _segments_of(n: int) -> int:
    if n < 4 or n % 2:
        raise ValueError(f"theta must have 2S + 2 entries (S >= 1 segments; 10 for S = 4), got {n}")
    return (n - 2) // 2


def uniform_theta(segments: int = 4) -> np.ndarray:
    """The θ of uniform sampling: knots at k/S (before the δ gap), all values 1, zero weights."""
    k = np.arange(1, segments)
    sticks = 1 - (1 - 1 / (segments - k + 1)) ** (segments - k)
    return np.concatenate([sticks, np.ones(segments + 1), [0.5, 0.5]]).astype(np.float64)


UNIFORM_THETA = uniform_theta(4)


def theta_to_params(theta) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """θ [2S+2] in [0,1] → (knots [S+1] with e0=0, eS=1, strictly increasing; values [S+1] ≥ 0; weights [2])."""
    t = np.asarray(theta, dtype=np.float64)
    if t.ndim != 1:
        raise ValueError(f"theta must be a vector, got shape {t.shape}")
    S = _segments_of(len(t))
    if not np.all(np.isfinite(t)) or t.min() < 0 or t.max() > 1:
        raise ValueError(f"theta must lie in [0, 1]^{len(t)}, got {t.tolist()}")
    sticks = np.clip(t[:S - 1], _EPS, 1 - _EPS)
    inner, e = [], 0.0
    for k, a in enumerate(sticks, start=1):  # order statistics of S − 1 uniforms by stick-breaking
        e = e + (1 - e) * (1 - (1 - a) ** (1 / (S - k)))
        inner.append(e)
    gap = np.arange(1, S) * _DELTA
    knots = np.concatenate([[0.0], np.asarray(inner) * (1 - S * _DELTA) + gap, [1.0]])
    return knots, t[S - 1:2 * S].copy(), 2 * t[2 * S:2 * S + 2] - 1


def params_to_theta(knots, values, weights) -> np.ndarray:
    """Inverse of :func:`theta_to_params` (exact up to float rounding)."""
    knots, values, weights = (np.asarray(x, dtype=np.float64) for x in (knots, values, weights))
    S = len(knots) - 1
    e = np.clip((knots[1:S] - np.arange(1, S) * _DELTA) / (1 - S * _DELTA), 0.0, 1.0)
    sticks, prev = [], 0.0
    for k, ek in enumerate(e, start=1):
        sticks.append(1 - (1 - (ek - prev) / (1 - prev)) ** (S - k) if prev < 1 else 0.0)
        prev = ek
    theta = np.concatenate([sticks, values, (weights + 1) / 2])
    theta[:S - 1] = np.where(np.abs(theta[:S - 1] - _EPS) < 1e-12, 0.0, theta[:S - 1])
    theta[:S - 1] = np.where(np.abs(theta[:S - 1] - (1 - _EPS)) < 1e-12, 1.0, theta[:S - 1])
    return np.clip(theta, 0.0, 1.0)


_DENSE = 1 << 16  # resolution of the dense CDF lookup tables


class _DenseLookup:
    """A piecewise-linear function on [lo, hi] resampled onto a uniform grid, evaluated by direct indexing.

    O(1) per element (no binary search), float32 throughout: this is what makes applying a sampler to 10^7+
    examples cost a few passes over memory. Values outside [lo, hi] clamp to the end values.
    """

    def __init__(self, xp: np.ndarray, fp: np.ndarray, size: int = _DENSE):
        self.lo, hi = float(xp[0]), float(xp[-1])
        self.scale = (size - 1) / (hi - self.lo) if hi > self.lo else 0.0
        grid = np.linspace(self.lo, hi, size) if hi > self.lo else np.full(size, self.lo)
        table = np.interp(grid, xp, fp) if hi > self.lo else np.full(size, float(fp[-1]))
        self.table = table.astype(np.float32)
        self.size = size

    def __call__(self, x: np.ndarray) -> np.ndarray:
        pos = np.asarray(x, dtype=np.float32) - np.float32(self.lo)
        pos *= np.float32(self.scale)
        np.clip(pos, 0, self.size - 1, out=pos)
        i = pos.astype(np.int32)
        np.minimum(i, self.size - 2, out=i)
        pos -= i
        lo = self.table[i]
        hi = self.table[i + 1]
        hi -= lo
        hi *= pos
        hi += lo
        return hi


def _cdf_lookup(table: np.ndarray) -> _DenseLookup:
    """Empirical CDF through a quantile table (table[k] = quantile at k/(K-1))."""
    return _DenseLookup(table, np.linspace(0.0, 1.0, len(table)))


@dataclass
class SwiftSampler:
    """A learned sampler. Build with :meth:`from_theta`; :meth:`fit` the cgf table on the training features.

    Args:
        theta: [10] parameters in [0, 1].
        feature_names: the two aggregated features, e.g. ("loss", "renormed_entropy").
        quantiles: per feature name, its quantile table (float64 [K]) on the training set.
        transform: "cgf" (gradient-mass CDF over s) or "cdf" (identity, for the ablation).
        grad_feature: the feature holding the gradient-norm proxy (used only by cgf).
        cgf_table: [CGF_BINS + 1] cumulative gradient mass at uniform s-bin edges; set by :meth:`fit`.
    """

    theta: np.ndarray
    feature_names: tuple[str, ...]
    quantiles: dict[str, np.ndarray]
    transform: Literal["cgf", "cdf"] = "cgf"
    grad_feature: str = "grad_proxy"
    cgf_table: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.theta = np.asarray(self.theta, dtype=np.float64)
        self.knots, self.values, self.weights = theta_to_params(self.theta)
        self.feature_names = tuple(self.feature_names)
        if len(self.feature_names) != len(self.weights):
            raise ValueError(f"need {len(self.weights)} aggregated features, got {self.feature_names}")
        if self.transform not in ("cgf", "cdf"):
            raise ValueError(f"transform must be 'cgf' or 'cdf', got {self.transform!r}")
        missing = [n for n in self.feature_names if n not in self.quantiles]
        if missing:
            raise ValueError(f"no quantile table for features {missing}")
        self.quantiles = {k: np.asarray(v, dtype=np.float64) for k, v in self.quantiles.items()}
        self._cdfs = {n: _cdf_lookup(self.quantiles[n]) for n in self.feature_names}
        if self.cgf_table is not None:
            self.cgf_table = np.asarray(self.cgf_table, dtype=np.float64)
            if self.cgf_table.shape != (CGF_BINS + 1,):
                raise ValueError(f"cgf_table must have {CGF_BINS + 1} entries")

    @classmethod
    def from_theta(cls, theta, feature_names, quantiles, transform: Literal["cgf", "cdf"] = "cgf",
                   grad_feature: str = "grad_proxy") -> SwiftSampler:
        return cls(np.asarray(theta), tuple(feature_names), dict(quantiles), transform, grad_feature)

    @classmethod
    def drop_top(cls, q: float, feature_names, quantiles, features: Mapping[str, np.ndarray],
                 transform: Literal["cgf", "cdf"] = "cgf", segments: int = 4,
                 grad_feature: str = "grad_proxy", sign: float = 1.0, band: float = 0.0) -> SwiftSampler:
        """The sampler of the family whose φ is a step dropping the top ``q`` of the first feature (weights
        (1, 0); values 1 below the step, 0 above it, a ramp of width 0.02 in T between): with ``loss`` first,
        the drop-top-loss rule. ``sign=-1`` puts weight −1 on it instead, so the step drops its *bottom* ``q``
        (for a feature whose low values are suspect, like the margin). With ``band`` b > 0 the ramp spans the
        examples from the top q + b to the top q − b of the feature (a share of the examples, not of T), so those
        nearest the cut are drawn at rates ordered by it. The search's initial points (``search.init_steps``,
        ``search.init_band``); needs ``segments`` ≥ 3."""
        if segments < 3:
            raise ValueError(f"a step needs at least 3 segments, got {segments}")
        if sign not in (1.0, -1.0):
            raise ValueError(f"sign must be +1 or -1, got {sign}")
        if not 0 <= band < 0.5:
            raise ValueError(f"band must be in [0, 0.5), got {band}")
        w0 = 1.0 if sign > 0 else 0.0  # θ of the first weight: w = 2θ − 1
        base = cls.from_theta(np.concatenate([uniform_theta(segments)[:-2], [w0, 0.5]]), feature_names, quantiles,
                              transform, grad_feature).fit(features)

        def t_of(s_cut: float) -> float:  # the T of the score quantile s_cut (s is the feature's percentile)
            s_cut = min(max(s_cut, 0.0), 1.0)
            return s_cut if base.cgf_table is None else float(np.interp(s_cut, np.linspace(0, 1, CGF_BINS + 1),
                                                                        base.cgf_table))

        t = min(max(t_of(1.0 - q), 0.02), 0.97)
        lo, hi = t - 0.01, t + 0.01
        if band > 0:
            lo, hi = min(max(t_of(1.0 - q - band), 0.005), lo), max(min(t_of(1.0 - q + band), 0.985), hi)
        inner = [lo, hi, *np.linspace(hi, 1.0, segments - 1)[1:-1]]
        values = [1.0, 1.0] + [0.0] * (segments - 1)
        theta = params_to_theta([0.0, *inner, 1.0], values, [sign, -0.0])
        return cls.from_theta(theta, feature_names, quantiles, transform, grad_feature).fit(features)

    @property
    def is_uniform(self) -> bool:
        """True when φ is constant (every example gets the same weight)."""
        return bool(np.all(self.values == self.values[0]))

    # -- the function ---------------------------------------------------------------------------------------
    def percentiles(self, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """F_n(f_n) ∈ [0, 1] of each aggregated feature (float32 [N] per name): its percentile on the training
        set through the stored quantile table."""
        return {n: self._cdfs[n](features[n]) for n in self.feature_names}

    def score(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """Aggregated score s ∈ [0, 1] per example (float32 [N])."""
        self._require(features)
        lo = float(np.minimum(self.weights, 0).sum())
        hi = float(np.maximum(self.weights, 0).sum())
        n = len(features[self.feature_names[0]])
        if hi - lo <= 0:
            return np.full(n, 0.5, dtype=np.float32)
        s = np.zeros(n, dtype=np.float32)
        for w, name in zip(self.weights, self.feature_names):
            if w != 0:
                f = self._cdfs[name](features[name])
                f *= np.float32(w)
                s += f
        s -= np.float32(lo)
        s *= np.float32(1.0 / (hi - lo))
        return np.clip(s, 0.0, 1.0, out=s)

    def fit(self, features: Mapping[str, np.ndarray]) -> SwiftSampler:
        """Fit the cgf table on the training set's features (O(N), one histogram). No-op for ``cdf``."""
        if self.transform != "cgf":
            return self
        s = self.score(features)
        g = np.asarray(features[self.grad_feature], dtype=np.float64)
        idx = np.minimum((s * CGF_BINS).astype(np.int64), CGF_BINS - 1)
        mass = np.bincount(idx, weights=np.maximum(g, 0.0), minlength=CGF_BINS)
        if mass.sum() <= 0:  # no gradient anywhere: fall back to the example count
            mass = np.bincount(idx, minlength=CGF_BINS).astype(np.float64)
        cum = np.concatenate([[0.0], np.cumsum(mass)])
        self.cgf_table = cum / cum[-1]
        return self

    def transformed(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """T(s(x)) ∈ [0, 1] per example."""
        s = self.score(features)
        if self.transform == "cdf":
            return s
        if self.cgf_table is None:
            raise RuntimeError("cgf sampler is not fitted: call .fit(train_features) or load a saved sampler")
        x = s
        x *= np.float32(CGF_BINS)
        i = np.minimum(x.astype(np.int32), CGF_BINS - 1)
        x -= i
        table = self.cgf_table.astype(np.float32)
        lo = table[i]
        hi = table[i + 1]
        hi -= lo
        hi *= x
        hi += lo
        return hi

    def _require(self, features: Mapping[str, np.ndarray]) -> None:
        missing = [name for name in self.feature_names if name not in features]
        if missing:
            raise KeyError(f"this sampler reads features {self.feature_names}; missing {missing} "
                           f"(given {sorted(features)})")

    def weights_of(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """Unnormalised sampling weights τ(x) ≥ 0 (float32 [N])."""
        self._require(features)
        if self.is_uniform:
            return np.ones(len(features[self.feature_names[0]]), dtype=np.float32)
        t = self.transformed(features)
        return np.interp(t, self.knots, self.values).astype(np.float32, copy=False)

    def probs(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """Sampling probabilities over the given examples, float64 [N], ≥ 0, summing to 1.

        If every weight is 0 (φ is zero wherever the data lies) the sampler falls back to uniform.
        """
        w = self.weights_of(features).astype(np.float64)
        total = w.sum()
        if not np.isfinite(total) or total <= 0:
            return np.full(len(w), 1.0 / len(w))
        return w / total

    def score_store(self, store, out: str | os.PathLike, rows: int = 1 << 20) -> float:
        """Sampling probabilities of every example in a :class:`FeatureStore`, written to ``out`` (.npy float32
        [N], summing to 1), in chunks: memory stays O(rows) for any N. Fits the cgf table on the store first
        (one more chunked pass) when it is not fitted yet. Returns the total unnormalised weight."""
        if self.transform == "cgf" and self.cgf_table is None:
            mass = np.zeros(CGF_BINS)
            count = np.zeros(CGF_BINS)
            for _, cols in store.iter_chunks(rows):
                idx = np.minimum((self.score(cols) * CGF_BINS).astype(np.int64), CGF_BINS - 1)
                mass += np.bincount(idx, weights=np.maximum(cols[self.grad_feature], 0.0), minlength=CGF_BINS)
                count += np.bincount(idx, minlength=CGF_BINS)
            cum = np.concatenate([[0.0], np.cumsum(mass if mass.sum() > 0 else count)])
            self.cgf_table = cum / cum[-1]
        n = store.num_examples
        tmp = f"{out}.tmp"
        with open(tmp, "w+b") as f:  # plain file I/O: no mapped pages, RSS stays O(rows)
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n,)})
            data_start = f.tell()
            total = 0.0
            for _, cols in store.iter_chunks(rows):
                w = self.weights_of(cols)
                total += float(w.sum(dtype=np.float64))
                f.write(w.astype("<f4", copy=False).tobytes())
            ok = total > 0 and np.isfinite(total)
            for start in range(0, n, rows):
                f.seek(data_start + 4 * start)
                block = np.fromfile(f, dtype="<f4", count=min(rows, n - start))
                block = block * np.float32(1.0 / total) if ok else np.full(len(block), 1.0 / n, dtype="<f4")
                f.seek(data_start + 4 * start)
                f.write(block.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
        return total

    # -- persistence ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": SAMPLER_FORMAT,
            "version": SAMPLER_VERSION,
            "theta": self.theta.tolist(),
            "features": list(self.feature_names),
            "grad_feature": self.grad_feature,
            "transform": self.transform,
            "knots": self.knots.tolist(),
            "values": self.values.tolist(),
            "weights": self.weights.tolist(),
            "quantiles": {k: v.tolist() for k, v in self.quantiles.items() if k in self.feature_names},
            "cgf_bins": CGF_BINS,
            "cgf_table": None if self.cgf_table is None else self.cgf_table.tolist(),
            "info": self.info,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write a self-contained ``sampler.json`` (atomic)."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict, source: str = "sampler") -> SwiftSampler:
        """Build from a parsed sampler.json after validating its schema (ValueError naming the bad field)."""

        def bad(msg):
            return ValueError(f"{source}: {msg}; regenerate it with `swift-scale search`")

        if not isinstance(d, dict) or d.get("format") != SAMPLER_FORMAT:
            raise bad(f"not a swift_scale sampler (format must be {SAMPLER_FORMAT!r})")
        if d.get("version") != SAMPLER_VERSION:
            raise bad(f"unsupported version {d.get('version')!r}")
        for key, typ in (("theta", list), ("features", list), ("transform", str), ("quantiles", dict)):
            if not isinstance(d.get(key), typ):
                raise bad(f"field {key!r} missing or not a {typ.__name__}")
        theta = np.asarray(d["theta"], dtype=np.float64)
        if (theta.ndim != 1 or len(theta) < 4 or len(theta) % 2 or not np.all(np.isfinite(theta))
                or theta.min() < 0 or theta.max() > 1):
            raise bad("field 'theta' must be 2S + 2 numbers in [0, 1] (10 for S = 4 segments)")
        for name in d["features"]:
            table = np.asarray(d["quantiles"].get(name, []), dtype=np.float64)
            if table.ndim != 1 or len(table) < 2 or not np.all(np.isfinite(table)) or np.any(np.diff(table) < 0):
                raise bad(f"quantile table of {name!r} must be a non-decreasing list of ≥ 2 finite numbers")
        if d["transform"] == "cgf":
            cgf = d.get("cgf_table")
            if cgf is None or len(cgf) != CGF_BINS + 1:
                raise bad(f"field 'cgf_table' must hold {CGF_BINS + 1} numbers for a cgf sampler")
            arr = np.asarray(cgf, dtype=np.float64)
            if not np.all(np.isfinite(arr)) or np.any(np.diff(arr) < -1e-12):
                raise bad("field 'cgf_table' must be finite and non-decreasing")
        try:
            return cls(theta, tuple(d["features"]), d["quantiles"], d["transform"], d.get("grad_feature", "grad_proxy"),
                       d.get("cgf_table"), d.get("info", {}))
        except ValueError as e:
            raise bad(str(e)) from e

    @classmethod
    def load(cls, path: str | os.PathLike) -> SwiftSampler:
        """Load a ``sampler.json``; works in any process, without the feature store."""
        from swift_scale.io import read_json

        d = read_json(path, "give a sampler.json written by `swift-scale search`")
        return cls.from_dict(d, source=str(path))

    def describe(self) -> str:
        """The sampler in words (used by ``swift-scale inspect``)."""
        w = ", ".join(f"{n}: {x:+.2f}" for n, x in zip(self.feature_names, self.weights))
        pts = ", ".join(f"({k:.2f}, {v:.2f})" for k, v in zip(self.knots, self.values))
        return (f"transform {self.transform}; weights {w}; "
                f"φ knots (T, value): {pts}{' — uniform' if self.is_uniform else ''}")
