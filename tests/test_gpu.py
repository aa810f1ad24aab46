"""GPU path (CUDA + bf16). Runs where a GPU exists (e.g. `pytest -m gpu` on a GPU box); skipped with a reason
otherwise — CI machines have no GPU."""

import json

import pytest
import torch

from .conftest import cli, tiny_overrides

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")]


def test_run_on_gpu_bf16(tmp_path, digits_shards):
    out = tmp_path / "gpu"
    res = cli("run", *tiny_overrides(digits_shards, out, "train.cpu=false", "train.mixed_precision=bf16",
                                     "model.name=resnet10t", "model.image_size=16"))
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"].startswith("cuda") and summary["mixed_precision"] == "bf16"
    assert 0 <= summary["swift"]["value"] <= 1
