import math

import numpy as np
import pytest
import torch

from swift_scale.features import classification_features


def _numpy_features(z, y):
    z = np.asarray(z, dtype=np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    out = []
    for i in range(len(y)):
        c = z.shape[1]
        loss = -math.log(p[i, y[i]])
        rest = np.delete(p[i], y[i])
        q = rest / rest.sum()
        ent = 0.0 if c == 2 else float(-(q * np.log(q)).sum() / math.log(c - 1))
        onehot = np.eye(c)[y[i]]
        out.append([loss, ent, np.linalg.norm(p[i] - onehot)])
    return np.array(out)


@pytest.mark.parametrize("num_classes", [2, 3, 10])
def test_classification_features_match_numpy(num_classes):
    g = torch.Generator().manual_seed(num_classes)
    z = torch.randn(64, num_classes, generator=g) * 3
    y = torch.randint(0, num_classes, (64,), generator=g)
    got = classification_features(z, y).numpy()
    want = _numpy_features(z.numpy(), y.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_hand_made_logits():
    z = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 5.0, 5.0]])
    y = torch.tensor([0, 0, 0])
    f = classification_features(z, y).numpy()
    assert f[0, 0] == pytest.approx(math.log(3), rel=1e-6)
    assert f[0, 1] == pytest.approx(1.0, abs=1e-6)  # the two other classes are equally likely
    assert f[2, 1] == pytest.approx(1.0, abs=1e-6)
    p = math.exp(2) / (math.exp(2) + 2)
    assert f[1, 2] == pytest.approx(math.sqrt((1 - p) ** 2 + 2 * ((1 - p) / 2) ** 2), rel=1e-5)


def test_extreme_logits_are_finite():
    # p_y -> 1 (and -> 0), C = 2 and C = 10: no NaN, no inf, entropy within [0, 1].
    for c in (2, 10):
        z = torch.zeros(4, c)
        z[0, 0] = 1e4
        z[1, 1] = 1e4
        z[2] = torch.linspace(-1e3, 1e3, c)
        y = torch.tensor([0, 0, c - 1, 1])
        f = classification_features(z, y)
        assert torch.isfinite(f).all(), f
        assert (f[:, 1] >= 0).all() and (f[:, 1] <= 1).all()
        assert f[0, 0] == 0 and f[0, 2] < 1e-6  # confident and right
        assert f[1, 0] > 1e3  # confident and wrong
        assert f[1, 2] == pytest.approx(math.sqrt(2), rel=1e-5)


def test_bad_shapes():
    with pytest.raises(ValueError):
        classification_features(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError):
        classification_features(torch.zeros(3, 1), torch.zeros(3))
