"""Hand-written sampling rules users reach for instead of a learned sampler (the benchmark's comparisons).

Each rule maps the θ0 features of the training set to sampling probabilities over it (float64 [N], sum 1),
so it trains through exactly the same indexed path as a Swift sampler:

- ``drop_top_loss:F`` — never sample the fraction F of examples with the highest θ0 loss (the small-loss
  trick behind co-teaching; with F = the true noise rate it is an oracle-ish upper bar).
- ``loss_proportional`` — importance sampling ∝ θ0 loss (hard-example mining; knows nothing about noise).
- ``uniform`` — every example equally.
- ``clean`` — the oracle of noisy-label benchmarks: only the examples whose labels were not flipped (needs the
  recorded noisy ids; the upper bar a sampler could reach).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["rule_probs", "RULES"]

RULES = ("uniform", "drop_top_loss", "loss_proportional", "clean")


def _normalise(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    total = w.sum()
    return w / total if total > 0 and np.isfinite(total) else np.full(len(w), 1.0 / len(w))


def rule_probs(rule: str, features: Mapping[str, np.ndarray], noisy_ids: np.ndarray | None = None) -> np.ndarray:
    """Probabilities of the rule spelled ``name`` or ``name:arg`` (e.g. ``drop_top_loss:0.4``); ``clean`` needs
    ``noisy_ids``."""
    name, _, arg = rule.partition(":")
    loss = np.asarray(features["loss"], dtype=np.float64)
    if name == "uniform":
        return np.full(len(loss), 1.0 / len(loss))
    if name == "clean":
        if noisy_ids is None:
            raise ValueError("rule 'clean' needs the noisy ids (a run with data.noise_rate > 0)")
        w = np.ones(len(loss))
        w[np.asarray(noisy_ids, dtype=np.int64)] = 0.0
        return _normalise(w)
    if name == "loss_proportional":
        return _normalise(np.maximum(loss, 0.0) + 1e-8)
    if name == "drop_top_loss":
        try:
            frac = float(arg)
        except ValueError:
            raise ValueError(f"rule {rule!r}: give the dropped fraction, e.g. drop_top_loss:0.2") from None
        if not 0 <= frac < 1:
            raise ValueError(f"rule {rule!r}: the dropped fraction must be in [0, 1)")
        keep = len(loss) - int(round(frac * len(loss)))
        order = np.argsort(loss, kind="stable")  # ties broken by id: deterministic
        w = np.zeros(len(loss))
        w[order[:keep]] = 1.0
        return _normalise(w)
    raise ValueError(f"unknown rule {rule!r}; one of {', '.join(RULES)} (drop_top_loss takes :FRACTION)")
