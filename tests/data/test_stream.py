"""Streaming mode: kept sets invariant to world size and workers, equal steps, exact (pass, step) resume."""

import json

import numpy as np
import pytest
import torch

from swift_scale.data.noise import NoisePlan
from swift_scale.data.shards import build_index, expand_shards
from swift_scale.data.stream import StreamingSplit, StreamOptions
from tests.conftest import TINY, cli, corrupt_shard


@pytest.fixture(scope="module")
def split_factory(digits_shards):
    index = build_index(expand_shards(digits_shards["train"]))

    def make(noise_rate=0.4, **kw):
        opts = StreamOptions(**(dict(num_classes=10, seed=3, shuffle_buffer=50, on_error="fail") | kw))
        return StreamingSplit(index, opts, NoisePlan.make(index.total, noise_rate, 10, 3))

    return make


def _delivered(split, probs, pass_, world, global_batch, start_step=0):
    """Every rank's batches of one pass: {rank: [gids per batch]} (ranks run in turn, in-process)."""
    per_rank = global_batch // world
    plan = split.plan(probs, pass_)
    out = {}
    for rank in range(world):
        out[rank] = [gids.tolist() for _, _, gids in split.loader(plan, pass_, rank, world, per_rank, start_step)]
    return plan, out


@pytest.mark.parametrize("workers", [0, 2])
def test_kept_set_is_the_same_for_world_1_2_4_and_workers(split_factory, workers):
    split = split_factory(num_workers=workers)
    p = np.random.default_rng(0).random(len(split)) ** 3
    p /= p.sum()
    sets = []
    for world in (1, 2, 4):
        plan, batches = _delivered(split, p, 1, world, 32)
        steps = split.steps(plan, world, 32 // world)
        assert all(len(b) == steps for b in batches.values())  # equal steps on every rank
        assert all(len(x) == 32 // world for b in batches.values() for x in b)
        gids = [g for b in batches.values() for x in b for g in x]
        assert len(gids) == len(set(gids))  # without replacement
        assert plan.mask[gids].all()  # only kept ids, decided from (seed, pass, id) before decoding
        sets.append(set(gids))
    assert sets[0] == sets[1] == sets[2]
    assert len(sets[0]) == (round(len(split) / 2) // 32) * 32


def test_kept_set_does_not_depend_on_workers_and_follows_p(split_factory):
    p = np.ones(len(split_factory()))
    p[: len(p) // 2] = 0.0  # the first half can never be kept
    p /= p.sum()
    a = _delivered(split_factory(num_workers=0), p, 2, 2, 16)[1]
    b = _delivered(split_factory(num_workers=2), p, 2, 2, 16)[1]
    ga = {g for r in a.values() for x in r for g in x}
    gb = {g for r in b.values() for x in r for g in x}
    assert ga == gb and min(ga) >= len(p) // 2


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_at_pass_and_step_continues_exactly(split_factory, workers):
    split = split_factory(num_workers=workers)
    p = np.random.default_rng(1).random(len(split))
    _, full = _delivered(split, p, 4, 2, 16)
    _, rest = _delivered(split, p, 4, 2, 16, start_step=5)
    for rank in full:
        assert rest[rank] == full[rank][5:]


def test_uniform_pass_reads_everything_and_noise_matches_indexed_mode(split_factory, digits_shards):
    from swift_scale.data.noise import symmetric_label_noise
    from swift_scale.data.shards import load_split

    split = split_factory(shuffle_buffer=0)
    plan, batches = _delivered(split, None, 0, 1, len(split))
    assert plan.total_kept == len(split) and len(batches[0]) == 1
    loaded = load_split(split.index)
    noisy, _ = symmetric_label_noise(loaded.labels, 0.4, 10, 3)
    labels = torch.cat([y for _, y, _ in split.loader(plan, 0, 0, 1, len(split))])
    gids = torch.cat([g for _, _, g in split.loader(plan, 0, 0, 1, len(split))]).numpy()
    assert np.array_equal(labels.numpy(), noisy[gids])


def test_mid_epoch_checkpoint_resumes_to_identical_weights(split_factory, tmp_path):
    from accelerate import Accelerator

    from swift_scale.train.loop import Checkpoints, TrainSpec, train_model
    from swift_scale.train.models import create_model

    class Boom(Exception):
        pass

    class Dying(StreamingSplit):  # the process "dies" after 7 batches of the first pass
        def loader(self, *a, **k):
            for i, b in enumerate(super().loader(*a, **k)):
                if i == 7 and not (tmp_path / "died").exists():
                    (tmp_path / "died").touch()
                    raise Boom
                yield b

    def run(split, ckpt):
        torch.manual_seed(0)
        model = create_model("swift_cnn", 10, 1, width=4)
        acc = Accelerator(cpu=True)
        train_model(acc, model, split, probs=None, spec=TrainSpec(2, 32, 1e-2),
                    checkpoints=Checkpoints(ckpt, every_steps=3) if ckpt else None, progress=False)
        return acc.unwrap_model(model).state_dict()

    ref = run(split_factory(), None)
    base = split_factory()
    dying = Dying(base.index, base.opts, base.noise)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with pytest.raises(Boom):
        run(dying, ckpt)
    state = json.loads((ckpt / "state.json").read_text())
    assert state["epoch"] == 0 and state["step"] == 6  # last checkpoint before the crash, mid-pass
    resumed = run(dying, ckpt)
    for k in ref:
        torch.testing.assert_close(resumed[k], ref[k], rtol=0, atol=0)


def test_cli_streaming_run(tmp_path, digits_shards):
    out = tmp_path / "run"
    args = [f"data.train={digits_shards['train']}", f"data.val={digits_shards['val']}",
            f"data.test={digits_shards['test']}", f"run.out_dir={out}", *TINY, "data.mode=streaming",
            "data.on_error=fail", "train.checkpoint_steps=5"]
    r = cli("run", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["search"]["trials"] == 3 and summary["num_train"] == 1079
    noise = json.loads((out / "noise.json").read_text())
    assert noise["num_flipped"] == round(0.4 * 1079) and len(noise["class_shift"]) == noise["num_flipped"]
    curve = json.loads((out / "final" / "metrics.json").read_text())["curve"]
    assert len(curve) == 4  # 2 epochs × oversample 2 passes: the same optimizer steps as the uniform run
    from swift_scale.features.store import FeatureStore

    store = FeatureStore(out / "features")  # the training dynamics, recorded as the stream went by
    assert tuple(store.feature_names[3:]) == ("dyn_loss", "aum", "wrong_frac")
    loss, wrong = store.column("dyn_loss"), store.column("wrong_frac")
    assert (loss > 0).all() and ((wrong >= 0) & (wrong <= 1)).all() and 0 < wrong.mean() < 1  # every id visited


@pytest.mark.parametrize("extra,needle", [
    (["data.mode=stream"], "data.mode"),
    (["data.mode=streaming", "data.on_error=maybe"], "data.on_error"),
    (["data.mode=streaming", "data.on_error=fail", "data.oversample=0.5"], "data.oversample"),
])
def test_streaming_config_errors(tmp_path, digits_shards, extra, needle):
    r = cli("run", f"data.train={digits_shards['train']}", f"data.val={digits_shards['val']}",
            f"data.test={digits_shards['test']}", f"run.out_dir={tmp_path / 'r'}", *TINY, *extra)
    assert r.returncode == 2 and r.stderr.startswith(f"swift-scale: error: {needle}")


def test_online_mode_keeps_b_of_each_window_by_the_frozen_model(split_factory):
    split = split_factory(oversample=2.0)
    seen = []

    def online(x, y, gids, pass_, keep):  # keep the `keep` smallest ids of each window (a stand-in scorer)
        seen.append(len(gids))
        mask = torch.zeros(len(gids), dtype=torch.bool)
        mask[np.argsort(gids)[:keep]] = True
        return mask

    steps, batches = split.epoch(np.ones(len(split)) / len(split), 0, seed=0, rank=0, world=1, per_rank=8,
                                 start_step=0, device="cpu", online=online)
    got = list(batches)
    assert len(got) == steps == len(split) // 16  # windows of 2·8 candidates from a uniform pass
    assert all(len(y) == 8 == len(g) for _, y, g in got) and set(seen) == {16}


def test_cli_streaming_online_run(tmp_path, digits_shards):
    out = tmp_path / "online"
    r = cli("run", f"data.train={digits_shards['train']}", f"data.val={digits_shards['val']}",
            f"data.test={digits_shards['test']}", f"run.out_dir={out}", *TINY, "data.mode=streaming",
            "data.on_error=fail", "data.online=true")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["search"]["trials"] == 3
    r = cli("run", f"data.train={digits_shards['train']}", f"data.val={digits_shards['val']}",
            f"data.test={digits_shards['test']}", f"run.out_dir={tmp_path / 'x'}", *TINY, "data.online=true")
    assert r.returncode == 2 and r.stderr.startswith("swift-scale: error: data.online")


def test_plan_counts_kept_ids_per_shard_with_empty_shards():
    from swift_scale.data.shards import ShardIndex

    split = StreamingSplit(ShardIndex(["a.tar", "b.tar", "c.tar", "d.tar"], [3, 0, 5, 0]), StreamOptions(num_classes=2))
    p = np.array([1, 1, 1, 0, 0, 1, 1, 1], dtype=float)
    plan = split.plan(p / p.sum(), 0)
    assert plan.kept_per_shard.tolist() == [int(plan.mask[:3].sum()), 0, int(plan.mask[3:].sum()), 0]
    assert plan.total_kept == 4 and not plan.mask[3:5].any()


def test_bad_samples_in_streaming_skip_mode(tmp_path):
    """on_error=skip: the features pass sees every id (bad ones filled in and recorded with url/key/reason),
    a training pass leaves them out of their batches with its step count unchanged; fail mode names the key."""
    from swift_scale.data import DataError

    path = tmp_path / "c-000000.tar"
    corrupt_shard(path)
    index = build_index([str(path)])
    split = StreamingSplit(index, StreamOptions(num_classes=10, on_error="skip", sample_shape=(1, 4, 4)))
    got = list(split.feature_batches(0, 0, 0, 4))
    assert torch.cat([g for _, _, g in got]).tolist() == list(range(6))
    skipped = split.take_skipped()
    assert [(e["id"], e["key"]) for e in skipped] == [(1, "badpng"), (2, "nolabel"), (3, "shape"), (4, "label")]
    assert "lacks field 'cls'" in skipped[1]["reason"] and "shape (1, 6, 6)" in skipped[2]["reason"]
    assert split.take_skipped() == []
    plan = split.plan(None, 0)
    batches = [g.tolist() for _, _, g in split.loader(plan, 0, 0, 1, 3)]
    assert len(batches) == split.steps(plan, 1, 3) == 2 and sorted(sum(batches, [])) == [0, 5]
    strict = StreamingSplit(index, StreamOptions(num_classes=10, on_error="fail", sample_shape=(1, 4, 4)))
    with pytest.raises(DataError, match="'badpng' cannot be decoded.*data.on_error=skip"):
        list(strict.feature_batches(0, 0, 0, 4))


def test_indexed_passes_keep_the_streaming_pass_set_without_replacement(split_factory):
    """data.draw=passes: an in-memory sampled epoch is `oversample` passes, each drawing from the kept set a
    streaming pass would keep (same seed, pass, p), every id at most once, the same ids for world 1, 2 and 4."""
    from swift_scale.data.splits import Split

    stream = split_factory()
    n = len(stream)
    images, labels = torch.zeros((n, 1, 2, 2), dtype=torch.uint8), torch.arange(n)
    split = Split(images, labels, cap=2.0)
    assert split.passes(5, sampled=True) == 10 and split.passes(5, sampled=False) == 5
    p = np.random.default_rng(1).random(n) ** 3
    p[:40] = 0.0  # never drawn
    p /= p.sum()
    for pass_ in (0, 3):
        kept = stream.plan(p, pass_).mask
        sets = []
        for world in (1, 2, 4):
            per_rank = 32 // world
            shares = [split.epoch(p, pass_, seed=3, rank=r, world=world, per_rank=per_rank, start_step=0,
                                  device="cpu") for r in range(world)]
            assert {steps for steps, _ in shares} == {round(n / 2) // 32}  # equal steps on every rank
            ids = [int(i) for _, batches in shares for _, y, _ in batches for i in y]
            assert len(ids) == len(set(ids)) == (round(n / 2) // 32) * 32  # without replacement
            assert kept[ids].all() and not (p[ids] == 0).any()
            sets.append(set(ids))
        assert sets[0] == sets[1] == sets[2]
    # uniform epochs and cap 0 are unchanged: every id once / with replacement ∝ p
    steps, batches = split.epoch(None, 0, seed=3, rank=0, world=1, per_rank=32, start_step=0, device="cpu")
    assert {int(i) for _, y, _ in batches for i in y} == set(range(n))
    drawn = [int(i) for _, y, _ in Split(images, labels).epoch(p, 0, seed=3, rank=0, world=1, per_rank=32,
                                                                    start_step=0, device="cpu")[1] for i in y]
    assert len(drawn) > len(set(drawn))


def test_a_pass_never_keeps_an_id_with_p_zero(split_factory):
    """keep_set keeps round(N / oversample) ids ∝ p, or every id with p > 0 when fewer have (never a p = 0 id)."""
    from swift_scale.selection import keep_mask, keep_set

    n = len(split_factory())
    p = np.zeros(n)
    p[::5] = 1.0  # 20% of the ids: fewer than the half a pass keeps
    p /= p.sum()
    t, mask = keep_set(p, 0.5, seed=3, epoch=0)
    np.testing.assert_array_equal(mask, p > 0)
    np.testing.assert_array_equal(keep_mask(np.arange(n), p, t, seed=3, epoch=0), p > 0)
    plan = split_factory().plan(p, 0)
    assert plan.total_kept == (p > 0).sum() and not plan.mask[p == 0].any()


def test_in_memory_bad_rows_stay_out_and_uniform_trainings_are_not_passes():
    """Bad rows (Split.valid) are never drawn, sampled or not; with data.draw=passes a uniform training still
    makes plain epochs, and a sampler keeping fewer ids than a batch fails its training with a clear reason."""
    from swift_scale.data.splits import Split
    from swift_scale.train.loop import TrainSpec, TrialFailed, train_model

    n = 200
    valid = np.ones(n, dtype=bool)
    valid[:30] = False
    split = Split(torch.zeros((n, 1, 8, 8), dtype=torch.uint8), torch.arange(n) % 10, cap=2.0, valid=valid)
    assert split.passes(3, sampled=False) == 3
    _, batches = split.epoch(None, 0, seed=1, rank=0, world=1, per_rank=16, start_step=0, device="cpu")
    assert valid[[int(i) for _, _, ids in batches for i in ids]].all()
    p = np.where(valid, 1.0, 0.0)
    p /= p.sum()
    _, batches = split.epoch(p, 0, seed=1, rank=0, world=1, per_rank=16, start_step=0, device="cpu")
    ids = [int(i) for _, _, ids in batches for i in ids]
    assert valid[ids].all() and len(ids) == len(set(ids)) == (n // 2 // 16) * 16

    from accelerate import Accelerator

    from swift_scale.train.models import create_model

    few = np.zeros(n)
    few[50:60] = 0.1  # 10 ids, fewer than one batch of 16
    with pytest.raises(TrialFailed, match="fewer examples than one batch of 16"):
        train_model(Accelerator(cpu=True), create_model("swift_cnn", 10, 1, None), split, probs=few,
                    spec=TrainSpec(1, 16, 1e-3, 0.0, "constant", 0), progress=False)


def test_data_draw_passes_reaches_the_in_memory_split(digits_shards, tmp_path):
    from swift_scale.config import load_config
    from swift_scale.pipeline import Pipeline
    from tests.conftest import tiny_overrides

    pipe = Pipeline(load_config(None, tiny_overrides(digits_shards, tmp_path / "r", "data.draw=passes")))
    assert pipe.data.train.cap == 2.0 and pipe.data.train.passes(3, sampled=True) == 6
    pipe.acc.end_training()
