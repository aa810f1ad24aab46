import numpy as np
import pytest

from swift_scale.sampler.rules import rule_probs
from swift_scale.sampler.swift import SwiftSampler, params_to_theta, theta_to_params, uniform_theta


def test_drop_top_loss_drops_exactly_the_highest_losses():
    loss = np.array([0.1, 5.0, 0.3, 4.0, 0.2, 3.0, 0.0, 0.4, 0.5, 0.6])
    p = rule_probs("drop_top_loss:0.3", {"loss": loss})
    assert np.isclose(p.sum(), 1)
    assert set(np.flatnonzero(p == 0)) == {1, 3, 5}
    assert np.allclose(p[p > 0], 1 / 7)


def test_loss_proportional_and_uniform():
    loss = np.array([1.0, 3.0, 0.0])
    p = rule_probs("loss_proportional", {"loss": loss})
    assert p[1] == pytest.approx(3 * p[0], rel=1e-6) and p[2] > 0
    assert np.allclose(rule_probs("uniform", {"loss": loss}), 1 / 3)


@pytest.mark.parametrize("bad", ["drop_top_loss", "drop_top_loss:1.5", "nope"])
def test_bad_rules_name_the_rule(bad):
    with pytest.raises(ValueError, match="rule|unknown"):
        rule_probs(bad, {"loss": np.ones(4)})


@pytest.mark.parametrize("segments", [1, 2, 6, 8])
def test_segments_bijection_and_uniform_point(segments):
    rng = np.random.default_rng(segments)
    for _ in range(50):
        theta = rng.random(2 * segments + 2)
        knots, values, weights = theta_to_params(theta)
        assert len(knots) == segments + 1 and np.all(np.diff(knots) > 0) and knots[0] == 0 and knots[-1] == 1
        np.testing.assert_allclose(params_to_theta(knots, values, weights), theta, atol=1e-6)
    knots, values, _ = theta_to_params(uniform_theta(segments))
    np.testing.assert_allclose(knots, np.linspace(0, 1, segments + 1), atol=1e-3)
    assert np.all(values == 1)


def test_segment_sampler_round_trips_through_json(tmp_path):
    rng = np.random.default_rng(0)
    feats = {"loss": rng.random(500), "renormed_entropy": rng.random(500), "grad_proxy": rng.random(500)}
    q = {k: np.quantile(v, np.linspace(0, 1, 65)) for k, v in feats.items()}
    s = SwiftSampler.from_theta(rng.random(14), ["loss", "renormed_entropy"], q).fit(feats)
    s.save(tmp_path / "s.json")
    again = SwiftSampler.load(tmp_path / "s.json")
    assert len(again.knots) == 7
    np.testing.assert_allclose(again.probs(feats), s.probs(feats), rtol=1e-6)


def test_score_store_matches_in_memory_probs(tmp_path):
    from swift_scale.features.store import FeatureStore

    n = 10_007
    store = FeatureStore.create(tmp_path / "st", n, ["loss", "renormed_entropy", "grad_proxy"])
    rng = np.random.default_rng(1)
    store.write(np.arange(n), rng.gamma(2.0, 1.0, (n, 3)).astype(np.float32))
    store.mark_done("all")
    store.finalize()
    store = FeatureStore(tmp_path / "st")
    feats = {k: np.ascontiguousarray(store.column(k)) for k in store.feature_names}
    theta = rng.random(10)
    q = {k: store.quantiles(k) for k in feats}
    expected = SwiftSampler.from_theta(theta, ["loss", "renormed_entropy"], q).fit(feats).probs(feats)
    chunked = SwiftSampler.from_theta(theta, ["loss", "renormed_entropy"], q)
    chunked.score_store(store, tmp_path / "p.npy", rows=999)  # chunks not aligned to anything
    got = np.load(tmp_path / "p.npy")
    assert got.dtype == np.float32 and got.shape == (n,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-12)
    assert not (tmp_path / "p.npy.tmp").exists()
