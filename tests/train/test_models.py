import gzip

import numpy as np
import pytest
import torch

from swift_scale.data.writers import _read_idx
from swift_scale.train.models import create_model


def test_swift_cnn_is_in_timm_registry():
    import timm

    m = create_model("swift_cnn", num_classes=7, in_chans=1)
    assert timm.is_model("swift_cnn")
    assert m(torch.zeros(2, 1, 8, 8)).shape == (2, 7)


def test_any_timm_name_and_unknown_name():
    m = create_model("resnet10t", num_classes=4, in_chans=1)
    assert m(torch.zeros(2, 1, 32, 32)).shape == (2, 4)
    with pytest.raises(ValueError, match=r"model.name: unknown model 'resnet1000'"):
        create_model("resnet1000", num_classes=4)


def test_local_checkpoint_loads_with_weights_only(tmp_path):
    src = create_model("swift_cnn", num_classes=3)
    with torch.no_grad():
        src.head.bias.fill_(0.25)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    m = create_model("swift_cnn", num_classes=3, checkpoint=str(tmp_path / "w.pt"))
    assert torch.allclose(m.head.bias, torch.full((3,), 0.25))
    with pytest.raises(ValueError, match="does not exist"):
        create_model("swift_cnn", num_classes=3, checkpoint=str(tmp_path / "nope.pt"))


def test_idx_reader(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(tmp_path / "x.gz", "wb") as f:
        f.write(header + arr.tobytes())
    np.testing.assert_array_equal(_read_idx(tmp_path / "x.gz"), arr)


def test_gpt2_from_config_and_from_a_local_checkpoint(tmp_path):
    import torch

    from swift_scale.train.models import create_lm

    model = create_lm("gpt2", vocab_size=100, seq_len=16, n_layer=1, n_embd=16, n_head=2)
    assert model.config.n_layer == 1 and model.config.vocab_size == 100 and model.config.n_positions == 16
    model.save_pretrained(tmp_path / "ckpt")
    again = create_lm("gpt2", 100, 16, checkpoint=str(tmp_path / "ckpt"))
    x = torch.randint(0, 100, (2, 16))
    torch.testing.assert_close(again.eval()(input_ids=x).logits, model.eval()(input_ids=x).logits)
    with pytest.raises(ValueError, match="model.name"):
        create_lm("bert-base", 100, 16)
