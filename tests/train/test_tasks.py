"""The LM task's evaluation and features run in sub-batches whose logits stay bounded (a GPT-2 vocabulary
times hundreds of sequences would not fit in memory) and give what one big batch gives."""

import numpy as np
import pytest
import torch

from swift_scale.train import tasks
from swift_scale.train.models import create_lm


@pytest.mark.parametrize("budget", [1, 2000, 1 << 30])  # one row at a time, a few rows, one batch
def test_lm_eval_and_features_in_bounded_sub_batches(monkeypatch, budget):
    torch.manual_seed(0)
    vocab, seq_len = 50, 12
    model = create_lm("gpt2", vocab, seq_len, n_layer=1, n_embd=16, n_head=2).eval()
    task = tasks.LMTask(np.random.default_rng(0).random(vocab).astype(np.float32))
    x = torch.randint(0, vocab, (9, seq_len))
    with torch.no_grad():
        whole_feats, whole_sums = task.features(model, x, x), task.eval_sums(model, x, x)
        seen = []
        forward = model.forward
        monkeypatch.setattr(model, "forward", lambda **kw: seen.append(len(kw["input_ids"])) or forward(**kw))
        monkeypatch.setattr(tasks, "LOGIT_BUDGET", budget)
        feats, sums = task.features(model, x, x), task.eval_sums(model, x, x)
    rows = max(1, budget // (seq_len * vocab))
    assert max(seen) == min(rows, 9) and sum(seen) == 2 * 9  # every sequence once per call, bounded batches
    torch.testing.assert_close(feats, whole_feats, rtol=1e-5, atol=1e-6)
    assert int(sums[0]) == int(whole_sums[0]) and sums[2] == whole_sums[2] == 9 * (seq_len - 1)
    assert float(sums[1]) == pytest.approx(float(whole_sums[1]), rel=1e-5)
