"""The step-cut probe of tools/bench/step_cut.py: a step's AUROC is its balanced accuracy, and the best cut."""

import importlib.util
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location(
    "step_cut", Path(__file__).resolve().parents[2] / "tools" / "bench" / "step_cut.py")
step_cut = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(step_cut)


def test_a_step_is_scored_by_its_balanced_accuracy():
    flagged = np.zeros(100, bool)
    flagged[:40] = True
    p = np.ones(100)
    p[:30] = 0.0  # starves 30 of the 40 flipped examples
    p[40:50] = 0.0  # and 10 of the 60 clean ones
    st = step_cut.step_stats(p, flagged)
    assert st["kept"] == 0.6
    assert st["flipped_starved"] == 0.75 and st["clean_starved"] == round(10 / 60, 3)
    # ties counted half: the AUROC of 1 − p is ½(1 + TPR − FPR)
    assert abs(st["auroc"] - 0.5 * (1 + 0.75 - 10 / 60)) < 1e-4


def test_kept_counts_examples_drawn_at_a_tenth_of_the_uniform_rate():
    p = np.array([1.0, 1.0, 0.05, 0.2])  # normalised: 0.45, 0.45, 0.022, 0.09; × 4: 1.8, 1.8, 0.09, 0.36
    assert step_cut.step_stats(p, np.array([False, False, True, True]))["kept"] == 0.75


def test_the_best_cut_finds_the_share_that_separates():
    rng = np.random.default_rng(0)
    flagged = np.zeros(1000, bool)
    flagged[rng.choice(1000, 300, replace=False)] = True
    s = np.where(flagged, -1.0, 0.0) - rng.uniform(0, 0.5, 1000)  # oriented as φ: flagged all below every clean one
    cut = step_cut.best_cut(s, flagged)
    assert cut["balanced_accuracy"] == 1.0 and abs(cut["kept"] - 0.7) <= 0.005
    overlap = np.where(flagged, -0.3, 0.0) - rng.uniform(0, 1, 1000)  # overlapping: no cut is perfect
    worse = step_cut.best_cut(overlap, flagged)
    assert 0.5 < worse["balanced_accuracy"] < 1.0


def test_the_score_is_oriented_as_phi():
    score = np.array([0.1, 0.5, 0.9])
    np.testing.assert_array_equal(step_cut.oriented(score, np.array([3.0, 2.0, 1.0])), -score)  # high s ↔ low p
    np.testing.assert_array_equal(step_cut.oriented(score, np.array([1.0, 2.0, 3.0])), score)
