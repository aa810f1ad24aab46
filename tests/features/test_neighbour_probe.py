"""The embedding probe of tools/bench/feature_auroc.py (kNN label disagreement, prototype margin)."""

import importlib.util
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location(
    "feature_auroc", Path(__file__).resolve().parents[2] / "tools" / "bench" / "feature_auroc.py")
feature_auroc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(feature_auroc)


def _clusters(seed=0, per_class=60, classes=3, dim=8, flipped=10):
    """Well-separated class clusters; ``flipped`` examples per class relabelled as the next class."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 10
    true = np.repeat(np.arange(classes), per_class)
    emb = centres[true] + rng.normal(size=(len(true), dim))
    given = true.copy()
    flip = np.concatenate([np.flatnonzero(true == c)[:flipped] for c in range(classes)])
    given[flip] = (true[flip] + 1) % classes
    logits = np.eye(classes)[true] * 3.0  # a model that predicts the true class
    return emb.astype(np.float32), logits.astype(np.float32), given, np.isin(np.arange(len(true)), flip)


def test_neighbours_and_prototypes_find_flipped_labels():
    emb, logits, given, noisy = _clusters()
    out = feature_auroc.neighbour_features(emb, logits, given, k_values=(5, 20), block=37)  # blocks split rows
    assert set(out) == {"knn5", "knn20", "proto", "loss"}
    # a flipped example's neighbours carry its true class: most disagree with its given label; a clean one's
    # mostly agree (1/6 of its cluster is flipped away, and flips from the previous class land among them)
    assert out["knn20"][noisy].min() > 0.6 and out["knn20"][~noisy].max() < 0.4
    # the nearest prototype of a flipped example is its true class's, not its given label's
    assert (out["proto"][noisy] > 0).all() and np.allclose(out["proto"][~noisy], 0.0)
    assert out["loss"][noisy].min() > out["loss"][~noisy].max()


def test_neighbours_exclude_the_example_itself():
    emb = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]], np.float32)
    labels = np.array([0, 1, 1, 1])
    out = feature_auroc.neighbour_features(emb, np.zeros((4, 2), np.float32), labels, k_values=(1,))
    # example 0's only neighbour is example 1 (label 1): full disagreement; example 1's is example 0
    np.testing.assert_array_equal(out["knn1"], [1.0, 1.0, 0.0, 0.0])


def test_mean_rank_combines_orderings():
    a, b = np.array([0.1, 0.5, 0.9]), np.array([3.0, 2.0, 1.0])
    np.testing.assert_array_equal(feature_auroc.mean_rank(a, b), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(feature_auroc.mean_rank(a, a * 2), [0.0, 1.0, 2.0])
