"""train.schedule=cosine: the lr is a pure function of (epoch, step), so a resumed run equals an uninterrupted one."""

import json

import numpy as np
import torch
from accelerate import Accelerator

from swift_scale.data.splits import Split
from swift_scale.train.loop import Checkpoints, TrainSpec, train_model
from swift_scale.train.models import create_model


class Stop(Exception):
    pass


def _train(schedule, ckpt=None, stop_after=None):
    """3 epochs; with ``stop_after`` the run dies (like a kill) once that epoch's checkpoint is written."""
    torch.manual_seed(0)
    model = create_model("swift_cnn", 3, 1, width=4)
    rng = np.random.default_rng(0)
    data = Split(torch.from_numpy(rng.integers(0, 255, (96, 1, 8, 8), dtype=np.uint8)),
                 torch.from_numpy(rng.integers(0, 3, 96)))

    def on_epoch(epoch, _model):
        if stop_after is not None and epoch > stop_after:
            raise Stop
        return {}

    acc = Accelerator(cpu=True)
    train_model(acc, model, data, probs=None, spec=TrainSpec(3, 32, 0.05, schedule=schedule),
                checkpoints=Checkpoints(ckpt) if ckpt else None, progress=False, on_epoch=on_epoch)
    return {k: v.detach().clone() for k, v in acc.unwrap_model(model).state_dict().items()}


def test_cosine_differs_from_constant_and_resumes_exactly(tmp_path):
    full = _train("cosine")
    const = _train("constant")
    assert any(not torch.equal(full[k], const[k]) for k in full)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    try:
        _train("cosine", ckpt, stop_after=2)
        raise AssertionError("the run should have stopped")
    except Stop:
        pass
    assert json.loads((ckpt / "state.json").read_text())["epoch"] == 2
    resumed = _train("cosine", ckpt)
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=0, atol=0)
