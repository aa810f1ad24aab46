import json

import numpy as np
import pytest

from swift_scale.features import FeatureStore, quantile_table


def test_create_write_finalize_reopen(tmp_path):
    root = tmp_path / "store"
    store = FeatureStore.create(root, 100, ["loss", "renormed_entropy", "grad_proxy"])
    rng = np.random.default_rng(0)
    values = rng.random((100, 3)).astype(np.float32)
    perm = rng.permutation(100)
    store.write(perm[:60], values[perm[:60]])
    store.mark_done("shard-0")
    with pytest.raises(RuntimeError, match="40 of 100 rows were never written"):
        store.finalize()
    # another process opens r+ and writes the rest
    other = FeatureStore(root, mode="r+")
    assert other.done_units() == {"shard-0"}
    other.write(perm[60:], values[perm[60:]])
    other.mark_done("shard-1")
    other.finalize(num_points=11)
    ro = FeatureStore(root)
    assert ro.complete
    np.testing.assert_array_equal(np.asarray(ro.features), values)
    np.testing.assert_allclose(ro.quantiles("loss"), np.quantile(values[:, 0].astype(np.float64),
                                                                 np.linspace(0, 1, 11)))
    # create again with the same shape reopens (resume) and keeps the data
    again = FeatureStore.create(root, 100, ["loss", "renormed_entropy", "grad_proxy"])
    np.testing.assert_array_equal(np.asarray(again.features), values)
    with pytest.raises(ValueError, match="different shape"):
        FeatureStore.create(root, 101, ["loss", "renormed_entropy", "grad_proxy"])


def test_corrupt_meta_is_reported(tmp_path):
    root = tmp_path / "s"
    FeatureStore.create(root, 5, ["a"])
    (root / "meta.json").write_text("{trunc")
    with pytest.raises(ValueError, match="corrupt"):
        FeatureStore(root)
    with pytest.raises(FileNotFoundError):
        FeatureStore(tmp_path / "nothing")
    with pytest.raises(ValueError, match="empty"):
        FeatureStore.create(tmp_path / "e", 0, ["a"])


def test_out_of_range_write(tmp_path):
    store = FeatureStore.create(tmp_path / "s", 5, ["a"])
    with pytest.raises(IndexError):
        store.write(np.array([5]), np.zeros((1, 1)))


def test_bounded_memory_quantiles_close_to_exact():
    x = np.random.default_rng(1).lognormal(size=200_000).astype(np.float32)
    exact = quantile_table(x, 101)
    approx = quantile_table(x, 101, exact_limit=1000, chunk=30_000)
    width = (x.max() - x.min()) / 65536
    assert np.all(np.abs(exact - approx) <= 2 * width + 1e-6)
    assert np.all(np.diff(approx) >= 0)


def test_meta_is_plain_json(tmp_path):
    FeatureStore.create(tmp_path / "s", 3, ["a", "b"], info={"split": "train"})
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["num_examples"] == 3 and meta["feature_names"] == ["a", "b"] and meta["complete"] is False
