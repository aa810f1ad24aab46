import numpy as np
import pytest

from swift_scale.sampler import (
    DistributedWeightedSampler,
    epoch_indices,
    keep_mask,
    keep_threshold,
    keep_top_k,
    race_keys,
    rank_share,
)


def _p(n, seed=0):
    p = np.random.default_rng(seed).random(n) ** 3
    return p / p.sum()


def test_epoch_indices_counts_follow_p_and_are_deterministic():
    n = 10_000
    p = _p(n)
    ids = epoch_indices(p, n, seed=1, epoch=3)
    assert len(ids) == n
    counts = np.bincount(ids, minlength=n)
    # systematic sampling: every count is floor or ceil of n * p
    assert np.all(np.abs(counts - n * p) < 1)
    np.testing.assert_array_equal(ids, epoch_indices(p, n, seed=1, epoch=3))
    assert not np.array_equal(ids, epoch_indices(p, n, seed=1, epoch=4))


def test_epoch_indices_uniform_is_permutation():
    ids = epoch_indices(np.full(1000, 1e-3), 1000, seed=0, epoch=0)
    np.testing.assert_array_equal(np.sort(ids), np.arange(1000))
    ids = epoch_indices(None, 1000, seed=0, epoch=0, num_samples=2500)
    assert np.bincount(ids).min() == 2 and np.bincount(ids).max() == 3


def test_epoch_indices_beyond_2_pow_24():
    n = (1 << 24) + 1000
    p = np.ones(n)
    p[-1] = 1e6  # the last id (beyond 2^24) must be drawn ~1e6 times
    ids = epoch_indices(p / p.sum(), n, seed=0, epoch=0)
    assert len(ids) == n and ids.max() == n - 1
    assert abs(np.count_nonzero(ids == n - 1) - n * 1e6 / (n - 1 + 1e6)) < 1


def test_keep_set_is_invariant_to_chunking_and_ranks():
    n, k = 20_000, 10_000
    ids = np.arange(n)
    p = _p(n, 1)
    t = keep_threshold(race_keys(ids, p, seed=5, epoch=2), k)
    whole = keep_mask(ids, p, t, seed=5, epoch=2)
    assert whole.sum() == k
    for world in (1, 2, 4):
        for workers in (1, 3):
            kept = []
            for r in range(world * workers):
                part = ids[r :: world * workers]  # any split of the ids: ranks × workers, arbitrary order
                part = part[np.random.default_rng(r).permutation(len(part))]
                kept.append(part[keep_mask(part, p[part], t, seed=5, epoch=2)])
            np.testing.assert_array_equal(np.sort(np.concatenate(kept)), np.flatnonzero(whole))


def test_keep_top_k_exact_and_frequency_tracks_p():
    m, k = 64, 32
    ids = np.arange(1000, 1000 + m)
    w = np.linspace(0.1, 1.0, m)
    p = w / w.sum()
    freq = np.zeros(m)
    epochs = 3000
    for e in range(epochs):
        mask = keep_top_k(ids, p, k, seed=7, epoch=e)
        assert mask.sum() == k
        freq += mask
    freq /= epochs
    # Inclusion probability of weighted sampling without replacement is monotone in p,
    # and for k = m/2 lies between the Poisson approximation and 1.
    assert np.all(np.diff(freq[::8]) > 0)
    assert freq.sum() == pytest.approx(k)
    corr = np.corrcoef(freq, p)[0, 1]
    assert corr > 0.98
    # deterministic in (seed, epoch, id), independent of candidate order
    perm = np.random.default_rng(0).permutation(m)
    np.testing.assert_array_equal(keep_top_k(ids[perm], p[perm], k, 7, 11), keep_top_k(ids, p, k, 7, 11)[perm])


def test_rank_share_equal_and_disjoint():
    ids = np.arange(103)
    shares = [rank_share(ids, r, 4) for r in range(4)]
    assert {len(s) for s in shares} == {25}
    assert len(np.unique(np.concatenate(shares))) == 100


def test_distributed_weighted_sampler_ranks_partition_one_draw():
    n = 5000
    p = _p(n, 3)
    world = 3
    samplers = [DistributedWeightedSampler(p, seed=4, rank=r, world_size=world) for r in range(world)]
    for s in samplers:
        s.set_epoch(2)
    shares = [list(s) for s in samplers]
    assert {len(x) for x in shares} == {n // world} and all(len(s) == n // world for s in samplers)
    union = np.concatenate(shares)
    full = epoch_indices(p, n, seed=4, epoch=2)
    np.testing.assert_array_equal(np.sort(union), np.sort(full[: (n // world) * world]))
    # positions of one draw are disjoint; counts follow p
    counts = np.bincount(union, minlength=n)
    assert np.corrcoef(counts, p)[0, 1] > 0.95
    with pytest.raises(ValueError):
        DistributedWeightedSampler(p, rank=3, world_size=3)


def test_folds_are_a_pure_balanced_function_of_seed_and_id():
    from swift_scale.selection import fold_of

    ids = np.arange(100_000)
    folds = fold_of(ids, 4, seed=3)
    assert folds.dtype == np.int64 and set(np.unique(folds)) == {0, 1, 2, 3}
    np.testing.assert_allclose(np.bincount(folds) / len(ids), 0.25, atol=0.01)
    # any split of the ids over ranks or chunks gives each id the same fold; another seed another assignment
    np.testing.assert_array_equal(np.concatenate([fold_of(ids[r::3], 4, 3) for r in range(3)]),
                                  np.concatenate([folds[r::3] for r in range(3)]))
    assert (fold_of(ids, 4, seed=4) != folds).mean() > 0.7
    with pytest.raises(ValueError, match="folds"):
        fold_of(ids, 0, seed=3)
