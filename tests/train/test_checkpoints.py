"""A checkpoint save cut off at any moment leaves a loadable checkpoint that matches its state.json, and the
next save clears the leftovers (CI once saw a kill between the swap and the clean-up break the resume)."""

import json
import shutil

import torch
from accelerate import Accelerator

from swift_scale.train.loop import Checkpoints, ResumePoint


def _acc_model(value: float):
    acc = Accelerator(cpu=True)
    model = acc.prepare(torch.nn.Linear(3, 2))
    with torch.no_grad():
        model.weight.fill_(value)
    return acc, model


def _saved(ckpt, value, epoch):
    acc, model = _acc_model(value)
    Checkpoints(ckpt).save(acc, ResumePoint(epoch=epoch, curve=[{"epoch": e} for e in range(epoch)]))


def _load(ckpt):
    acc, model = _acc_model(-1.0)
    point = Checkpoints(ckpt).load(acc)
    return point, float(model.weight[0, 0].detach())


def test_saves_replace_each_other_and_keep_one_folder(tmp_path):
    for epoch in (1, 2, 3):
        _saved(tmp_path, float(epoch), epoch)
    point, w = _load(tmp_path)
    assert (point.epoch, w) == (3, 3.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accelerate-3", "state.json"]


def test_save_cut_off_before_its_commit_resumes_from_the_previous_one(tmp_path):
    _saved(tmp_path, 1.0, 1)
    committed = json.loads((tmp_path / "state.json").read_text())
    _saved(tmp_path / "scratch", 2.0, 2)  # a complete newer folder, renamed into place but never committed
    shutil.move(tmp_path / "scratch" / "accelerate-1", tmp_path / "accelerate-2")
    (tmp_path / "accelerate.tmp").mkdir()  # and a half-written save
    (tmp_path / "accelerate.tmp" / "model.safetensors").write_bytes(b"\0" * 7)
    point, w = _load(tmp_path)
    assert (point.epoch, w) == (1, 1.0)  # the state.json, with its own weights, not the newer folder's
    _saved(tmp_path, 4.0, 2)  # the rerun saves the same point again over the leftovers
    point, w = _load(tmp_path)
    assert (point.epoch, w) == (2, 4.0)
    assert json.loads((tmp_path / "state.json").read_text())["gen"] == committed["gen"] + 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "scratch") == ["accelerate-2", "state.json"]


def test_save_cut_off_during_the_clean_up_of_the_old_folder(tmp_path):
    _saved(tmp_path, 1.0, 1)
    keep = tmp_path / "accelerate-1"
    shutil.copytree(keep, tmp_path / "accelerate-0")  # an old folder half removed when the kill came
    next(iter((tmp_path / "accelerate-0").iterdir())).unlink()
    _saved(tmp_path, 2.0, 2)
    point, w = _load(tmp_path)
    assert (point.epoch, w) == (2, 2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accelerate-2", "state.json"]


def test_checkpoint_of_the_earlier_layout_still_loads(tmp_path):
    _saved(tmp_path, 5.0, 3)
    state = json.loads((tmp_path / "state.json").read_text())
    (tmp_path / state.pop("dir")).rename(tmp_path / "accelerate")
    state.pop("gen")
    (tmp_path / "state.json").write_text(json.dumps(state))
    point, w = _load(tmp_path)
    assert (point.epoch, w) == (3, 5.0)
    _saved(tmp_path, 6.0, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accelerate-1", "state.json"]
