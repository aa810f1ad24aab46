import math
from pathlib import Path

import numpy as np
import pytest

from swift_scale.io import read_jsonl
from swift_scale.sampler import UNIFORM_THETA
from swift_scale.search import SearchEngine

TARGET = np.linspace(0.15, 0.85, 10)
SMOKE = {"num_restarts": 2, "raw_samples": 64, "initial": [UNIFORM_THETA]}


def objective(x):
    return -float(np.sum((np.asarray(x) - TARGET) ** 2))


def _run(path, strategy, seed, trials, stop_after=None):
    engine = SearchEngine(path, strategy=strategy, seed=seed, **SMOKE)
    while engine.num_trials < (stop_after or trials):
        t = engine.ask()
        engine.tell(t, objective(t.theta))
    return engine


@pytest.mark.slow
@pytest.mark.timeout(1200)  # 2 × 10 searches of 30 trials: ~140 s on an idle 2-core machine, far more when shared
@pytest.mark.parametrize("function", ["levy10", "hartmann6"])
def test_bo_beats_random_search_over_ten_seeds(function):
    """Standard test functions on [0, 1]^10, 30 trials (the first 5 shared), smoke-sized acquisition
    optimisation. BO's lead over random search, paired by seed, is judged on its mean: at least one random-search
    spread on average and a paired t-statistic above 2.5, and BO ahead on a majority of the seeds. (A per-seed
    win count alone is a coin-flip-sized statistic on 10 seeds: at 20 trials hartmann6 won 6, 8 or 9 of 10 with
    the same mean depending on the GP fit's start.) Measured in two sessions: hartmann6 gap 1.8 / 1.65 spreads,
    t 4.6 / 4.15, 8 wins; levy10 3.2 / 2.88 spreads, t 6.6 / 6.42, 10 wins. Random search is a pure function of the seed (the same on every machine). The
    seeds run in 2 processes (each search depends on its seed only)."""
    import argparse
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "bench"))
    from bo_vs_random import paired_lead

    args = argparse.Namespace(trials=30, n_init=4, acquisition="logei", num_restarts=2, raw_samples=64, batch=0)
    bo, rnd, t = paired_lead(function, args)
    lead = bo - rnd
    assert lead.mean() > rnd.std(), (bo, rnd)
    assert t > 2.5, (t, bo, rnd)
    assert (lead > 0).sum() >= 6, (bo, rnd)


def test_first_trial_is_uniform_and_history_contract(tmp_path):
    engine = _run(tmp_path / "h.jsonl", "bo", 0, 7)
    hist = read_jsonl(tmp_path / "h.jsonl")
    assert len(hist) == 7
    np.testing.assert_array_equal(hist[0]["params"], UNIFORM_THETA)
    for i, rec in enumerate(hist):
        assert rec["trial"] == i and len(rec["params"]) == 10 and rec["status"] == "ok"
        assert isinstance(rec["score"], float) and rec["seconds"] >= 0
    assert engine.best()["score"] == max(r["score"] for r in hist)
    assert hist[-1]["proposed_by"] == "bo"


def test_killed_search_resumes_identically(tmp_path):
    full = _run(tmp_path / "full.jsonl", "bo", 3, 9)
    _run(tmp_path / "cut.jsonl", "bo", 3, 9, stop_after=6)
    # a pending trial asked but never told (killed inside a trial) is simply asked again
    SearchEngine(tmp_path / "cut.jsonl", seed=3, **SMOKE).ask()
    resumed = _run(tmp_path / "cut.jsonl", "bo", 3, 9)
    a = [r["params"] for r in full.history]
    b = [r["params"] for r in resumed.history]
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)


def test_failed_trials_are_recorded_and_search_continues(tmp_path):
    engine = SearchEngine(tmp_path / "h.jsonl", seed=0, **SMOKE)
    for i in range(8):
        t = engine.ask()
        if i in (2, 5):
            engine.tell(t, None, error="RuntimeError('NaN loss')")
        elif i == 6:
            engine.tell(t, math.nan)
        else:
            engine.tell(t, objective(t.theta))
    statuses = [r["status"] for r in engine.history]
    assert statuses.count("failed") == 3
    assert engine.history[6]["error"].startswith("non-finite")
    assert engine.history[2]["score"] is None
    assert engine.ask().index == 8


def test_torn_last_line_and_bad_history(tmp_path):
    path = tmp_path / "h.jsonl"
    _run(path, "random", 0, 3)
    with open(path, "a") as f:
        f.write('{"trial": 3, "par')  # crash mid-append
    engine = SearchEngine(path, seed=0, **SMOKE)
    assert engine.num_trials == 3
    path.write_text('{"trial": 5, "params": [0.1]}\n')
    with pytest.raises(ValueError, match="corrupt or from another search"):
        SearchEngine(path)


def test_tell_without_persist_keeps_file_untouched(tmp_path):
    main = SearchEngine(tmp_path / "h.jsonl", seed=0, **SMOKE)
    other = SearchEngine(tmp_path / "h.jsonl", seed=0, **SMOKE)
    t = main.ask()
    main.tell(t, math.nan)
    rec = other.tell(other.ask(), math.nan, persist=False)  # a non-main rank: same record, no second line
    assert rec["status"] == "failed" and rec["params"] == main.history[0]["params"]
    assert len(read_jsonl(tmp_path / "h.jsonl")) == 1 and other.num_trials == 1


def test_kept_share_is_the_kept_fraction_of_a_step():
    from swift_scale.sampler import SwiftSampler, kept_share

    rng = np.random.default_rng(0)
    feats = {"loss": rng.random(4000).astype(np.float32), "renormed_entropy": rng.random(4000).astype(np.float32),
             "grad_proxy": rng.random(4000).astype(np.float32)}
    q = {n: np.quantile(v, np.linspace(0, 1, 257)) for n, v in feats.items()}
    assert kept_share(np.full(10, 0.1)) == 1.0
    assert kept_share(np.array([0.5, 0.45, 0.04, 0.01])) == 0.75  # 0.04 = 0.16x uniform: kept; 0.01 = 0.04x: not
    for drop in (0.3, 0.8):
        p = SwiftSampler.drop_top(drop, ("loss", "renormed_entropy"), q, feats, "cdf").probs(feats)
        assert kept_share(p) == pytest.approx(1 - drop, abs=0.02)


def test_choice_skips_samplers_that_keep_too_little_of_the_data():
    from swift_scale.search.trials import choose

    ranked = [{"trial": 7, "score": 0.72}, {"trial": 3, "score": 0.70}, {"trial": 0, "score": 0.53}]
    shares = {7: 0.09, 3: 0.55, 0: 1.0}
    asked = []

    def share(rec):
        asked.append(rec["trial"])
        return shares[rec["trial"]]

    assert choose(ranked, share, 0.2) == {"trial": 3, "score": 0.70, "kept": 0.55}
    assert asked == [7, 3]  # best first, and no further than the first that qualifies
    assert choose(ranked, share, 0.0)["trial"] == 7  # search.min_kept=0: the paper's choice
    assert choose(ranked[:1], share, 0.2) == {"trial": 7, "score": 0.72, "kept": 0.09}  # none qualifies: the best


def test_ranked_orders_by_score_or_posterior_mean(tmp_path):
    engine = _run(tmp_path / "h.jsonl", "bo", 0, 7)
    by_score = engine.ranked("best")
    assert by_score[0] == engine.best() and [r["score"] for r in by_score] == sorted(
        (r["score"] for r in engine.history), reverse=True)
    post = engine.ranked("posterior")
    assert post[0] == engine.posterior_best() and sorted(r["trial"] for r in post) == list(range(7))
