"""Language modelling: features against a direct computation, text noise, a tiny GPT end to end."""

import json
import math

import numpy as np
import pytest
import torch

from swift_scale.data.text import corrupt_sequences, pack, unigram_rarity
from swift_scale.features.functions import lm_features
from tests.conftest import ROOT, cli

TEXT = ROOT / "tests" / "fixtures"


def test_lm_features_match_a_direct_computation():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7)  # B=3 sequences, T=5 positions, V=7
    targets = torch.randint(0, 7, (3, 5))
    rarity = torch.rand(7) * 5
    got = lm_features(logits, targets, rarity)
    for b in range(3):
        losses, grads = [], []
        for t in range(5):
            p = [math.exp(z) for z in logits[b, t].tolist()]
            total = sum(p)
            p = [x / total for x in p]
            y = int(targets[b, t])
            losses.append(-math.log(p[y]))
            grads.append(math.sqrt(sum((p[j] - (j == y)) ** 2 for j in range(7))))
        rare = sum(float(rarity[int(targets[b, t])]) for t in range(5)) / 5
        assert got[b].tolist() == pytest.approx([sum(losses) / 5, rare, sum(grads) / 5], rel=1e-5)



def test_lm_features_keep_the_loss_of_a_token_whose_probability_underflows():
    """p_y = e^-200 is zero in float32: its loss still comes from the scores, not log 0."""
    logits = torch.zeros(1, 2, 5)
    logits[0, 0, 3] = -200.0  # target 3 at position 0: p_y underflows
    logits[0, 1, 1] = 30.0  # target 1 at position 1: p_y rounds to 1
    got = lm_features(logits, torch.tensor([[3, 1]]), torch.zeros(5))
    loss0 = 200.0 + math.log(4 + math.exp(-200.0))
    loss1 = math.log1p(4 * math.exp(-30.0))
    assert got[0, 0].item() == pytest.approx((loss0 + loss1) / 2, rel=1e-6)
    grad0 = math.sqrt(4 * 0.25 ** 2 + 1.0)  # p = 1/4 on the four others, p_y = 0
    assert got[0, 2].item() == pytest.approx(grad0 / 2, rel=1e-5)
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("chunk", [1, 7, 2 * 7, 5 * 7 * 2])  # part of a row, whole rows, 2 positions, 2 sequences
def test_lm_features_on_cpu_chunks_equal_the_whole_tensor(monkeypatch, chunk):
    """The CPU path works through the scores in cache-sized chunks; any chunking gives the same bits, also for a
    non-contiguous view (the model's logits with the last position sliced off)."""
    import swift_scale.features.functions as functions

    torch.manual_seed(1)
    logits = (torch.randn(3, 6, 7) * 4)[:, :-1]
    targets = torch.randint(0, 7, (3, 5))
    rarity = torch.rand(7)
    whole = lm_features(logits, targets, rarity)
    monkeypatch.setattr(functions, "CPU_CHUNK", chunk)
    assert len(list(functions.cache_chunks(logits))) > 1
    assert torch.equal(lm_features(logits, targets, rarity), whole)


def test_lm_evaluation_in_cpu_chunks_matches_the_whole_batch(monkeypatch):
    import torch.nn.functional as F

    import swift_scale.features.functions as functions
    from swift_scale.train.tasks import LMTask

    torch.manual_seed(2)
    table = torch.randn(6, 11, 11) * 3  # a "model": (position, token) -> next-token scores

    def model(input_ids):
        return table[torch.arange(input_ids.shape[1]), input_ids]

    x = torch.randint(0, 11, (4, 6))
    logits, t = model(x)[:, :-1], x[:, 1:]
    correct = (logits.argmax(-1) == t).sum().item()
    loss = F.cross_entropy(logits.reshape(-1, 11), t.reshape(-1), reduction="sum").item()
    task = LMTask(np.ones(11, np.float32))
    for chunk in (1 << 17, 11, 3 * 11, 2 * 6 * 11):
        monkeypatch.setattr(functions, "CPU_CHUNK", chunk)
        sums = task.eval_sums(model, x, x)
        assert (int(sums[0]), float(sums[1]), sums[2]) == (correct, pytest.approx(loss, rel=1e-6), 4 * 5)

def test_unigram_rarity_and_packing():
    ids = np.array([0, 0, 0, 1, 2, 2, 5])
    r = unigram_rarity(ids, 6)
    counts = np.array([3, 1, 2, 0, 0, 1]) + 1.0
    np.testing.assert_allclose(r, -np.log(counts / counts.sum()), rtol=1e-6)
    assert pack(np.arange(10), 3).tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


@pytest.mark.parametrize("mode", ["replace", "shuffle"])
def test_sequence_noise_is_exact_reproducible_and_recorded(mode):
    tokens = np.arange(200 * 16).reshape(200, 16) % 97
    noisy, flipped = corrupt_sequences(tokens, 0.3, 97, seed=5, mode=mode)
    again, flipped2 = corrupt_sequences(tokens, 0.3, 97, seed=5, mode=mode)
    assert len(flipped) == 60 and np.array_equal(flipped, flipped2) and np.array_equal(noisy, again)
    clean = np.setdiff1d(np.arange(200), flipped)
    assert np.array_equal(noisy[clean], tokens[clean])
    assert np.mean(np.any(noisy[flipped] != tokens[flipped], axis=1)) > 0.95
    if mode == "shuffle":
        assert np.array_equal(np.sort(noisy[flipped], axis=1), np.sort(tokens[flipped], axis=1))
    assert noisy.max() < 97


def _lm_args(out, *extra):
    return ["data.task=lm", f"data.train={TEXT / 'kjv_train.txt'}", f"data.val={TEXT / 'kjv_val.txt'}",
            f"data.test={TEXT / 'kjv_test.txt'}", "data.vocab_size=512", "data.seq_len=64", "data.noise_rate=0.3",
            "model.name=gpt2", "model.kwargs.n_layer=2", "model.kwargs.n_embd=32", "model.kwargs.n_head=2",
            f"run.out_dir={out}", "train.epochs=2", "train.batch_size=32", "train.cpu=true", "train.progress=false",
            "search.trials=3", "search.finetune_epochs=1", "search.n_init=1", "search.num_restarts=1",
            "search.raw_samples=16", "search.rounds=1", *extra]


def test_tiny_gpt_runs_every_phase(tmp_path):
    out = tmp_path / "lm"
    r = cli("run", *_lm_args(out, "search.rounds=2"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "test perplexity" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "lm" and summary["baseline"]["metric"] == "test_perplexity"
    assert 1 < summary["swift"]["value"] < 512 and summary["search"]["trials"] == 3
    hist = [json.loads(x) for x in (out / "search" / "history.jsonl").read_text().splitlines()]
    assert all(r["score"] < 0 for r in hist)  # −log perplexity
    meta = json.loads((out / "features" / "meta.json").read_text())
    assert meta["feature_names"] == ["loss", "rarity", "grad_proxy", "dyn_loss", "aum", "wrong_frac"] and meta["complete"]
    sampler = json.loads((out / "sampler.json").read_text())
    assert sampler["features"] == ["loss", "rarity"]
    noise = json.loads((out / "noise.json").read_text())
    assert noise["num_flipped"] == round(0.3 * summary["num_train"]) and noise["mode"] == "replace"
    assert (out / "tokenizer" / "tokenizer.json").exists() and (out / "report" / "report.md").exists()
    # a second round: θ0-style LM features scored by the first final model, chosen on −log val ppl
    assert json.loads((out / "round2" / "sampler.json").read_text())["features"] == ["loss", "rarity"]
    assert [r["round"] for r in summary["rounds"]] == [1, 2] and all(r["val_score"] < 0 for r in summary["rounds"])
    best = max(summary["rounds"], key=lambda r: r["val_score"])
    assert summary["chosen_round"] == best["round"] and summary["swift"]["value"] == best["value"]
    # a second run with the saved tokenizer directory reads it instead of training one
    r2 = cli("run", *_lm_args(tmp_path / "lm2", f"data.tokenizer={out / 'tokenizer'}", "search.trials=1",
                              "train.epochs=1"))
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert not (tmp_path / "lm2" / "tokenizer").exists()


@pytest.mark.parametrize("extra,needle", [
    (["data.noise_mode=scramble"], "data.noise_mode"),
    (["data.train=/nonexistent/corpus.txt"], "data.train"),
    (["data.seq_len=100000"], "data.train"),
    (["model.name=bert"], "model.name"),
])
def test_lm_bad_input_exits_2(tmp_path, extra, needle, main_cli):
    r = main_cli("run", *_lm_args(tmp_path / "bad", *extra))
    assert r.returncode == 2, r.stderr[-1000:]
    assert r.stderr.startswith(f"swift-scale: error: {needle}") and len(r.stderr.strip().splitlines()) == 1


def test_token_shards_for_large_corpora(tmp_path):
    """Text tokenized once into WebDataset shards (tools/write_token_shards.py), then trained from the shards."""
    import subprocess
    import sys

    shards = tmp_path / "tok"
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "write_token_shards.py"), str(shards),
                          "--train", str(TEXT / "kjv_train.txt"), "--val", str(TEXT / "kjv_val.txt"),
                          "--test", str(TEXT / "kjv_test.txt"), "--vocab-size", "512", "--seq-len", "64",
                          "--maxcount", "150"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    patterns = dict(line.split(": ", 1) for line in res.stdout.strip().splitlines())
    train = patterns["train"].split(" (")[0]
    assert train.endswith("}.tar")
    out = tmp_path / "run"
    args = _lm_args(out, f"data.train={train}", f"data.val={patterns['val'].split(' (')[0]}",
                    f"data.test={patterns['test'].split(' (')[0]}", f"data.tokenizer={patterns['tokenizer']}",
                    "search.trials=2", "train.epochs=1")
    r = cli("run", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    index = json.loads((out / "index.json").read_text())
    n = int(patterns["train"].split("(")[1].split()[0])
    assert index["train"]["total"] == n and len(index["train"]["urls"]) == -(-n // 150)
    assert json.loads((out / "summary.json").read_text())["num_train"] == n
    r = cli("run", *_lm_args(tmp_path / "r2", f"data.train={train}"))  # no tokenizer given for token shards
    assert r.returncode == 2 and "data.tokenizer" in r.stderr
