import json

import numpy as np
import pytest

from swift_scale.sampler import UNIFORM_THETA, SwiftSampler, params_to_theta, theta_to_params
from swift_scale.sampler.swift import CGF_BINS

NAMES = ("loss", "renormed_entropy")


def _data(n=20_000, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "loss": rng.exponential(size=n).astype(np.float32),
        "renormed_entropy": rng.random(n).astype(np.float32),
        "grad_proxy": rng.random(n).astype(np.float32),
    }


def _quantiles(feats):
    return {n: np.quantile(feats[n].astype(np.float64), np.linspace(0, 1, 1025)) for n in NAMES}


def test_bijection_valid_and_invertible():
    rng = np.random.default_rng(0)
    thetas = np.concatenate([rng.random((2000, 10)), np.eye(10), 1 - np.eye(10), np.zeros((1, 10)),
                             np.ones((1, 10))])
    for theta in thetas:
        knots, values, weights = theta_to_params(theta)
        assert knots[0] == 0 and knots[-1] == 1 and np.all(np.diff(knots) > 0)
        assert np.all(values >= 0) and np.all(np.abs(weights) <= 1)
        np.testing.assert_allclose(params_to_theta(knots, values, weights), theta, atol=1e-6)


@pytest.mark.parametrize("transform", ["cgf", "cdf"])
def test_probs_finite_nonnegative_sum_to_one(transform):
    feats = _data()
    q = _quantiles(feats)
    rng = np.random.default_rng(1)
    for theta in np.concatenate([rng.random((50, 10)), np.zeros((1, 10)), np.ones((1, 10))]):
        s = SwiftSampler.from_theta(theta, NAMES, q, transform).fit(feats)
        p = s.probs(feats)
        assert p.shape == (len(feats["loss"]),)
        assert np.all(np.isfinite(p)) and np.all(p >= 0)
        assert p.sum() == pytest.approx(1.0, abs=1e-9)


def test_uniform_theta_is_exactly_uniform():
    feats = _data(1000)
    s = SwiftSampler.from_theta(UNIFORM_THETA, NAMES, _quantiles(feats)).fit(feats)
    assert s.is_uniform
    np.testing.assert_array_equal(s.probs(feats), np.full(1000, 1 / 1000))
    np.testing.assert_allclose(s.knots, [0, 0.25, 0.5, 0.75, 1], atol=1e-3)


def test_weights_follow_phi_on_loss_cdf():
    # weight +1 on loss, 0 on entropy, cdf transform, φ increasing: probability increases with loss
    feats = _data()
    theta = params_to_theta([0, 0.25, 0.5, 0.75, 1], [0, 0.25, 0.5, 0.75, 1], [1.0, 0.0])
    s = SwiftSampler.from_theta(theta, NAMES, _quantiles(feats), "cdf")
    p = s.probs(feats)
    order = np.argsort(feats["loss"])
    # with the empirical CDF as T and φ(t) = t, the weight of the k-th smallest loss is ≈ k / N
    ranks = np.empty(len(order))
    ranks[order] = np.arange(len(order)) / (len(order) - 1)
    np.testing.assert_allclose(p / p.max(), ranks, atol=2e-3)


def test_cgf_is_steep_where_gradient_mass_is():
    # g concentrated on high scores: T rises mostly over the top of s, and equal T-lengths hold equal mass
    n = 50_000
    rng = np.random.default_rng(2)
    loss = rng.random(n).astype(np.float32)
    g = np.where(loss > 0.8, 1.0, 0.01).astype(np.float32)
    feats = {"loss": loss, "renormed_entropy": rng.random(n).astype(np.float32), "grad_proxy": g}
    theta = params_to_theta([0, 0.25, 0.5, 0.75, 1], [1, 1, 1, 1, 1], [1.0, 0.0])
    s = SwiftSampler.from_theta(theta, NAMES, _quantiles(feats), "cgf").fit(feats)
    t = s.transformed(feats)
    score = s.score(feats)
    # slope of T on the high part vs the low part
    hi = (score > 0.85) & (score < 0.95)
    lo = (score > 0.2) & (score < 0.7)
    slope_hi = np.polyfit(score[hi], t[hi], 1)[0]
    slope_lo = np.polyfit(score[lo], t[lo], 1)[0]
    assert slope_hi > 20 * slope_lo
    # equal T-intervals hold equal gradient mass
    edges = np.linspace(0, 1, 5)
    mass = [g[(t >= a) & (t < b)].sum() for a, b in zip(edges[:-1], edges[1:])]
    np.testing.assert_allclose(np.array(mass) / g.sum(), 0.25, atol=0.01)


def test_zero_weights_fall_back_to_uniform():
    feats = _data(100)
    theta = UNIFORM_THETA.copy()
    theta[3:8] = 0
    p = SwiftSampler.from_theta(theta, NAMES, _quantiles(feats)).fit(feats).probs(feats)
    np.testing.assert_allclose(p, 1 / 100)


def test_save_load_roundtrip_without_store(tmp_path):
    feats = _data()
    theta = np.random.default_rng(3).random(10)
    s = SwiftSampler.from_theta(theta, NAMES, _quantiles(feats), "cgf").fit(feats)
    s.save(tmp_path / "sampler.json")
    loaded = SwiftSampler.load(tmp_path / "sampler.json")
    np.testing.assert_array_equal(loaded.theta, s.theta)
    assert loaded.cgf_table.shape == (CGF_BINS + 1,)
    np.testing.assert_allclose(loaded.probs(feats), s.probs(feats), rtol=1e-6)


def test_unfitted_cgf_and_bad_files(tmp_path):
    feats = _data(10)
    s = SwiftSampler.from_theta(np.linspace(0.1, 0.9, 10), NAMES, _quantiles(feats), "cgf")
    with pytest.raises(RuntimeError, match="not fitted"):
        s.probs(feats)
    good = s.fit(feats).to_dict()
    (tmp_path / "bad.json").write_text(json.dumps({**good, "theta": [2.0] * 10}))
    with pytest.raises(ValueError, match="field 'theta'"):
        SwiftSampler.load(tmp_path / "bad.json")
    (tmp_path / "nofeat.json").write_text(json.dumps({k: v for k, v in good.items() if k != "features"}))
    with pytest.raises(ValueError, match="field 'features'"):
        SwiftSampler.load(tmp_path / "nofeat.json")
    (tmp_path / "trunc.json").write_text('{"format": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        SwiftSampler.load(tmp_path / "trunc.json")
    with pytest.raises(ValueError, match="theta"):
        theta_to_params(np.full(10, 1.5))


@pytest.mark.parametrize("transform", ["cgf", "cdf"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_step_drops_the_top_or_with_sign_minus_the_bottom(transform, sign):
    feats = _data()
    q = _quantiles(feats)
    step = SwiftSampler.drop_top(0.3, NAMES, q, feats, transform, sign=sign)
    p = step.probs(feats) * len(feats["loss"])
    f = feats["loss"] if sign > 0 else -feats["loss"]
    dropped = f > np.quantile(f, 0.7)
    assert p[dropped].mean() < 0.05 and np.mean(p[~dropped] > 1.3) > 0.97  # kept: ≈ 1/0.7 × uniform
    assert abs(dropped.mean() - 0.3) < 0.01 and step.weights[0] == sign and step.weights[1] == 0


@pytest.mark.parametrize("transform", ["cgf", "cdf"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_banded_step_ramps_over_the_examples_nearest_its_cut(transform, sign):
    feats = _data()
    q = _quantiles(feats)
    band = SwiftSampler.drop_top(0.3, NAMES, q, feats, transform, sign=sign, band=0.1)
    p = band.probs(feats)
    f = feats["loss"] if sign > 0 else -feats["loss"]
    top = f > np.quantile(f, 0.8)  # the top 0.3 − 0.1: dropped
    bottom = f < np.quantile(f, 0.6)  # below the top 0.3 + 0.1: kept at the full rate
    mid = ~top & ~bottom
    assert p[top].max() < 1e-3 * p.max() and np.allclose(p[bottom], p.max(), rtol=2e-3)
    # inside the band the rate falls as the feature rises: the examples nearest the cut are ordered by it
    order = np.argsort(f[mid])
    assert np.all(np.diff(p[mid][order]) <= 1e-6 * p.max()) and p[mid].min() < 0.5 * p.max() < p[mid].max()
    # band 0 is the plain step, bit for bit
    plain = SwiftSampler.drop_top(0.3, NAMES, q, feats, transform, sign=sign)
    np.testing.assert_array_equal(SwiftSampler.drop_top(0.3, NAMES, q, feats, transform, sign=sign, band=0.0).theta,
                                  plain.theta)
    with pytest.raises(ValueError, match="band"):
        SwiftSampler.drop_top(0.3, NAMES, q, feats, transform, band=0.5)


def test_the_margin_is_suspect_at_its_low_end():
    from swift_scale.features.dynamics import suspect_sign

    assert [suspect_sign(n) for n in ("loss", "dyn_loss", "wrong_frac", "aum")] == [1, 1, 1, -1]
