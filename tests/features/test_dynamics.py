"""Training dynamics (features/dynamics.py): exact, order-free sums; resume neither loses nor double-counts."""

import json

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from swift_scale.data.splits import Split
from swift_scale.features.dynamics import DynamicsRecorder, dynamics_features
from swift_scale.train.loop import Checkpoints, TrainSpec, train_model
from swift_scale.train.models import create_model


def test_sums_do_not_depend_on_the_order_or_split_of_visits(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, 400)
    stats = rng.normal(0, 3, (400, 2)).astype(np.float32)
    one = DynamicsRecorder(tmp_path / "a", 50, 0)
    one.record(0, ids, stats)
    one.save(1, 0)
    order = rng.permutation(400)
    parts = [DynamicsRecorder(tmp_path / "b", 50, r) for r in range(3)]
    for r, chunk in enumerate(np.array_split(order, 3)):
        parts[r].record(0, ids[chunk], stats[chunk])
        parts[r].save(1, 0)
    a, b = dynamics_features(tmp_path / "a", 50, 1, 1), dynamics_features(tmp_path / "b", 50, 1, 3)
    for k in a:
        assert a[k].tobytes() == b[k].tobytes()
    seen = np.unique(ids)
    expect = np.array([stats[ids == i, 1].mean() for i in seen])
    np.testing.assert_allclose(a["aum"][seen], expect, atol=1e-5)
    np.testing.assert_allclose(a["wrong_frac"][seen], [np.mean(stats[ids == i, 1] < 0) for i in seen])


class Stop(Exception):
    pass


def _pretrain(tmp_path, ckpt, stop_after=None, keep=None):
    rng = np.random.default_rng(0)
    data = Split(torch.from_numpy(rng.integers(0, 255, (96, 1, 8, 8), dtype=np.uint8)),
                 torch.from_numpy(rng.integers(0, 3, 96)))
    torch.manual_seed(0)
    rec = DynamicsRecorder(ckpt / "dyn", 96, 0, keep=keep)

    def on_epoch(epoch, _m):
        if stop_after is not None and epoch > stop_after:
            raise Stop
        return {}

    train_model(Accelerator(cpu=True), create_model("swift_cnn", 3, 1, width=4), data, probs=None,
                spec=TrainSpec(3, 32, 0.05, schedule="cosine"), checkpoints=Checkpoints(ckpt, every_steps=2),
                recorder=rec, on_epoch=on_epoch, progress=False)
    return dynamics_features(ckpt / "dyn", 96, 3, 1)


def test_resumed_pretraining_records_each_visit_once(tmp_path):
    full = _pretrain(tmp_path, tmp_path / "full")
    with pytest.raises(Stop):
        _pretrain(tmp_path, tmp_path / "cut", stop_after=1)  # dies after epoch 2's steps, before its commit
    assert json.loads((tmp_path / "cut" / "state.json").read_text())["epoch"] == 1
    resumed = _pretrain(tmp_path, tmp_path / "cut")
    for k in full:
        assert full[k].tobytes() == resumed[k].tobytes()
    counts = np.load(tmp_path / "full" / "dyn" / "rank00000-e000003-s000000000.npy")[:, 3]
    assert counts.sum() == 3 * 96


def test_the_kept_epochs_sums_survive_pruning_and_a_resume(tmp_path):
    full = _pretrain(tmp_path, tmp_path / "full", keep=lambda: [1])
    with pytest.raises(Stop):
        _pretrain(tmp_path, tmp_path / "cut", stop_after=1, keep=lambda: [1])
    _pretrain(tmp_path, tmp_path / "cut", keep=lambda: [1])
    names = sorted(p.name for p in (tmp_path / "full" / "dyn").iterdir())
    assert names == ["rank00000-e000001-s000000000.npy", "rank00000-e000003-s000000000.npy"]
    early = [dynamics_features(tmp_path / run / "dyn", 96, 1, 1) for run in ("full", "cut")]
    for k in full:
        assert early[0][k].tobytes() == early[1][k].tobytes()
        assert early[0][k].tobytes() != full[k].tobytes()  # epoch 1 alone, not the whole run
    assert np.load(tmp_path / "full" / "dyn" / "rank00000-e000001-s000000000.npy")[:, 3].sum() == 96
    with pytest.raises(ValueError, match="after epoch 2 were not kept"):
        dynamics_features(tmp_path / "full" / "dyn", 96, 2, 1)
