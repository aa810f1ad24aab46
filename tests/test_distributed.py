"""Real 2-process (gloo) runs via accelerate.debug_launcher.

The launcher forks; forking a process whose torch thread pools are already running (any earlier test) can
deadlock the children, so each launch runs in a fresh interpreter: ``python -m tests.test_distributed``.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import debug_launcher

from .conftest import ROOT

SHARD_COUNTS = [5, 50, 500]  # uneven on purpose: fewer shards than ranks × workers would still be fine


def _data():
    from swift_scale.data.splits import Split

    g = torch.Generator().manual_seed(0)
    n = sum(SHARD_COUNTS)
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    return Split(images, labels)


def _features_worker(out_dir):
    from accelerate import Accelerator

    from swift_scale.features.extract import extract_features
    from swift_scale.train.models import create_model
    from swift_scale.train.tasks import CLASSIFICATION

    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = acc.prepare(create_model("swift_cnn", num_classes=10))
    offsets = np.concatenate([[0], np.cumsum(SHARD_COUNTS)[:-1]]).tolist()
    extract_features(acc, model, _data(), Path(out_dir), offsets, SHARD_COUNTS, CLASSIFICATION, batch_size=64,
                     progress=False)
    acc.wait_for_everyone()
    acc.end_training()


def _train_worker(out_dir):
    from accelerate import Accelerator

    from swift_scale.train.loop import TrainSpec, train_model
    from swift_scale.train.models import create_model

    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = create_model("swift_cnn", num_classes=10)
    steps = []
    model.register_forward_hook(lambda *_: steps.append(1) if model.training else None)
    p = np.random.default_rng(0).random(sum(SHARD_COUNTS)) ** 4  # very uneven probabilities
    train_model(acc, model, _data(), probs=p / p.sum(), spec=TrainSpec(2, 48, 1e-3), progress=False)
    Path(out_dir, f"steps-{acc.process_index}.json").write_text(json.dumps(len(steps)))
    acc.wait_for_everyone()
    acc.end_training()


def write_uneven_shards(root: Path) -> str:
    """The same images/labels as _data() written as 3 WebDataset shards of 5/50/500 samples."""
    import io

    import webdataset as wds
    from PIL import Image

    data, start = _data(), 0
    root.mkdir(parents=True, exist_ok=True)
    for s, n in enumerate(SHARD_COUNTS):
        with wds.TarWriter(str(root / f"u-{s:06d}.tar")) as sink:
            for i in range(start, start + n):
                buf = io.BytesIO()
                Image.fromarray(data.images[i, 0].numpy()).save(buf, format="PNG")
                sink.write({"__key__": f"{i:06d}", "png": buf.getvalue(), "cls": str(int(data.labels[i])).encode()})
        start += n
    return str(root / "u-{000000..000002}.tar")


def _stream_split(pattern, noise_rate=0.0):
    from swift_scale.data.noise import NoisePlan
    from swift_scale.data.shards import build_index, expand_shards
    from swift_scale.data.stream import StreamingSplit, StreamOptions

    index = build_index(expand_shards(pattern))
    opts = StreamOptions(num_classes=10, seed=0, shuffle_buffer=64, num_workers=2, on_error="fail")
    return StreamingSplit(index, opts, NoisePlan.make(index.total, noise_rate, 10, 0))


def _stream_train_worker(out_dir):
    from accelerate import Accelerator

    from swift_scale.train.loop import TrainSpec, train_model
    from swift_scale.train.models import create_model

    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = create_model("swift_cnn", num_classes=10)
    steps = []
    model.register_forward_hook(lambda *_: steps.append(1) if model.training else None)
    p = np.random.default_rng(0).random(sum(SHARD_COUNTS)) ** 4
    split = _stream_split(str(Path(out_dir) / "shards" / "u-{000000..000002}.tar"), noise_rate=0.4)
    train_model(acc, model, split, probs=p / p.sum(), spec=TrainSpec(2, 48, 1e-3), progress=False)
    Path(out_dir, f"steps-{acc.process_index}.json").write_text(json.dumps(len(steps)))
    acc.wait_for_everyone()
    acc.end_training()


def _stream_features_worker(out_dir):
    from accelerate import Accelerator

    from swift_scale.features.extract import extract_features
    from swift_scale.train.models import create_model
    from swift_scale.train.tasks import CLASSIFICATION

    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = acc.prepare(create_model("swift_cnn", num_classes=10))
    split = _stream_split(str(Path(out_dir).parent / "shards" / "u-{000000..000002}.tar"))
    extract_features(acc, model, split, Path(out_dir), split.index.offsets, split.index.counts, CLASSIFICATION,
                     batch_size=64, progress=False)
    acc.wait_for_everyone()
    acc.end_training()


@pytest.mark.dist
def test_streaming_uneven_shards_equal_steps_on_two_ranks_with_two_workers(tmp_path):
    write_uneven_shards(tmp_path / "shards")
    _launch("stream-train", tmp_path, 2)
    steps = [json.loads((tmp_path / f"steps-{r}.json").read_text()) for r in range(2)]
    kept = round(555 / 2)  # oversample 2: keep half of the candidates each pass; 2 epochs = 4 passes
    assert steps[0] == steps[1] == 4 * (kept // 48)


@pytest.mark.dist
def test_streaming_feature_store_from_two_ranks_equals_in_memory_one(tmp_path):
    from swift_scale.features.store import FeatureStore

    write_uneven_shards(tmp_path / "shards")
    _launch("features", tmp_path / "mem", 1)
    _launch("stream-features", tmp_path / "two", 2)
    assert (tmp_path / "mem" / "features.npy").read_bytes() == (tmp_path / "two" / "features.npy").read_bytes()
    assert FeatureStore(tmp_path / "two").complete


@pytest.mark.dist
def test_feature_store_from_two_ranks_is_bit_identical_to_one(tmp_path):
    from swift_scale.features.store import FeatureStore

    _launch("features", tmp_path / "one", 1)
    _launch("features", tmp_path / "two", 2)
    one, two = FeatureStore(tmp_path / "one"), FeatureStore(tmp_path / "two")
    assert one.complete and two.complete
    assert np.asarray(one.mask).all() and np.asarray(two.mask).all()  # every id written
    assert (tmp_path / "one" / "features.npy").read_bytes() == (tmp_path / "two" / "features.npy").read_bytes()
    assert one.meta["quantiles"] == two.meta["quantiles"]
    assert two.done_units() == {"shard-000000", "shard-000001", "shard-000002"}


@pytest.mark.dist
def test_uneven_shards_equal_steps_on_every_rank(tmp_path):
    _launch("train", tmp_path, 2)
    steps = [json.loads((tmp_path / f"steps-{r}.json").read_text()) for r in range(2)]
    assert steps[0] == steps[1] == 2 * int(np.ceil(555 / 48))


def _dynamics_worker(out_dir):
    """Training dynamics recorded by each rank over its share of 3 uniform epochs, per-visit values a pure
    function of (epoch, id); then a real 2-epoch training with the recorder and checkpoints."""
    from accelerate import Accelerator

    from swift_scale.features.dynamics import DynamicsRecorder, dynamics_features
    from swift_scale.selection import epoch_indices, rank_share
    from swift_scale.train.loop import Checkpoints, TrainSpec, train_model
    from swift_scale.train.models import create_model

    acc = Accelerator(cpu=True)
    n, batch, world, rank = sum(SHARD_COUNTS), 48, acc.num_processes, acc.process_index
    rec = DynamicsRecorder(Path(out_dir) / "synthetic", n, rank)
    steps = int(np.ceil(n / batch))
    for epoch in range(3):
        ids = rank_share(epoch_indices(None, n, 0, epoch, steps * batch), rank, world)
        for b in range(0, len(ids), batch // world):
            chunk = ids[b:b + batch // world]
            stats = np.stack([np.sin(chunk * 0.37 + epoch) * 3 + 3, np.cos(chunk * 0.11 - epoch) * 5], 1)
            rec.record(epoch, chunk, stats.astype(np.float32))
        rec.save(epoch + 1, 0)
        acc.wait_for_everyone()
        rec.prune(epoch + 1, 0)
    acc.wait_for_everyone()
    if acc.is_main_process:
        feats = dynamics_features(Path(out_dir) / "synthetic", n, 3, world)
        np.save(Path(out_dir) / "synthetic.npy", np.stack([feats[k] for k in ("dyn_loss", "aum", "wrong_frac")]))
    torch.manual_seed(0)
    real = DynamicsRecorder(Path(out_dir) / "real", n, rank)
    train_model(acc, create_model("swift_cnn", num_classes=10, width=4), _data(), probs=None,
                spec=TrainSpec(2, batch, 1e-3), checkpoints=Checkpoints(Path(out_dir) / "ckpt"), recorder=real,
                progress=False)
    acc.wait_for_everyone()
    if acc.is_main_process:
        total = sum(np.load(p) for p in sorted((Path(out_dir) / "real").glob("rank*-e000002-s000000000.npy")))
        np.save(Path(out_dir) / "visits.npy", total[:, 3])
    acc.wait_for_everyone()
    acc.end_training()


@pytest.mark.dist
def test_training_dynamics_are_bit_identical_for_one_and_two_ranks(tmp_path):
    _launch("dynamics", tmp_path / "one", 1)
    _launch("dynamics", tmp_path / "two", 2)
    one, two = np.load(tmp_path / "one" / "synthetic.npy"), np.load(tmp_path / "two" / "synthetic.npy")
    assert one.tobytes() == two.tobytes() and np.isfinite(one).all() and one[2].max() > 0
    steps = int(np.ceil(555 / 48))
    for world in ("one", "two"):  # a real training: every visit of both epochs recorded once, on some rank
        visits = np.load(tmp_path / world / "visits.npy")
        assert visits.sum() == 2 * steps * 48
        assert visits.min() >= 1
    assert sorted(p.name for p in (tmp_path / "two" / "real").iterdir()) == [
        "rank00000-e000002-s000000000.npy", "rank00001-e000002-s000000000.npy"]  # older snapshots pruned


def _search_worker(out_dir):
    """A trial-parallel search on 2 ranks (one trial each per round) whose trials take very different times:
    rank 1's trials sleep, some trials stop after their first rung; proposals overlap in the helper process."""
    import time

    from accelerate import Accelerator

    from swift_scale.sampler import UNIFORM_THETA
    from swift_scale.search import SearchEngine
    from swift_scale.search.driver import TrialResult, run_search
    from swift_scale.search.engine import asha_stop

    acc = Accelerator(cpu=True)
    target = np.linspace(0.2, 0.8, 10)

    def evaluate(trial, earlier):
        time.sleep(0.4 if acc.process_index == 1 else 0.0)
        score = -float(np.sum((trial.theta - target) ** 2))
        if asha_stop(earlier, 1, score - 0.1):
            return TrialResult(score - 0.1, rungs={1: score - 0.1}, stopped_at=1)
        return TrialResult(score, rungs={1: score - 0.1})

    engine = SearchEngine(Path(out_dir) / "history.jsonl", seed=0, n_init=2, num_restarts=1, raw_samples=16,
                          initial=[UNIFORM_THETA], fidelity_epochs=3)
    run_search(engine, 9, evaluate, acc, slots=2, group=acc.process_index, overlap=True)
    with open(Path(out_dir) / f"rank{acc.process_index}.json", "w") as f:
        json.dump(engine.history, f)
    acc.wait_for_everyone()
    acc.end_training()


@pytest.mark.dist
def test_trial_parallel_search_gathers_uneven_trials_in_order(tmp_path):
    for run in ("a", "b"):
        _launch("search", tmp_path / run, 2)
    from swift_scale.io import read_jsonl

    a, b = (read_jsonl(tmp_path / run / "history.jsonl") for run in ("a", "b"))
    assert [r["trial"] for r in a] == list(range(9)) and [r["round"] for r in a] == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    assert [r["params"] for r in a] == [r["params"] for r in b]  # the same history for the same world size
    assert [r["status"] for r in a] == [r["status"] for r in b] and "stopped" in {r["status"] for r in a}
    ranks = [json.loads((tmp_path / "a" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["params"] for r in ranks[0]] == [r["params"] for r in ranks[1]] == [r["params"] for r in a]


def _groups_worker(out_dir):
    """4 ranks in 2 trial groups of 2 (search.procs_per_trial=2): each group trains its own model with DDP over
    the group only."""
    import torch.distributed as dist
    from accelerate import Accelerator

    from swift_scale.train.groups import GroupAccelerator, trial_groups
    from swift_scale.train.loop import TrainSpec, evaluate, train_model
    from swift_scale.train.models import create_model

    acc = Accelerator(cpu=True)
    groups = trial_groups(acc.num_processes, 2)
    handles = [dist.new_group(r) for r in groups]
    g = acc.process_index // 2
    view = GroupAccelerator(acc, groups[g], handles[g])
    torch.manual_seed(0)
    model = create_model("swift_cnn", num_classes=10, width=4)
    data = _data()
    p = np.random.default_rng(g).random(len(data)) ** (4 * g + 1)  # each group its own sampler
    train_model(view, model, data, probs=p, spec=TrainSpec(1, 64, 1e-2, seed=3), progress=False)
    acc_val = evaluate(view, model, data)
    torch.save({"state": view.unwrap_model(model).state_dict(), "val": acc_val, "group": g,
                "group_rank": view.process_index}, Path(out_dir) / f"rank{acc.process_index}.pt")
    acc.wait_for_everyone()
    acc.end_training()


@pytest.mark.dist
def test_trial_groups_train_their_own_models_with_ddp_inside_the_group(tmp_path):
    _launch("groups", tmp_path, 4)
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(4)]
    assert [(x["group"], x["group_rank"]) for x in got] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    weights = [k for k in got[0]["state"] if not k.endswith(("running_mean", "running_var"))]  # BN stats: local
    for a, b in ((0, 1), (2, 3)):  # DDP inside a group: the same weights and the same all-reduced val figures
        assert all(torch.equal(got[a]["state"][k], got[b]["state"][k]) for k in weights)
        assert got[a]["val"] == got[b]["val"]
    assert not all(torch.equal(got[0]["state"][k], got[2]["state"][k]) for k in weights)


LM_SHARDS = [(0, 7), (7, 90), (90, 91), (91, 260)]  # uneven token shards (sequence ranges of one corpus)
LM_L, LM_VOCAB = 16, 300


def _lm_sequences():
    from swift_scale.data.text import encode, pack, train_tokenizer

    text = (ROOT / "tests" / "fixtures" / "kjv_train.txt").read_text()
    return pack(encode(train_tokenizer(text, LM_VOCAB), text), LM_L)[:LM_SHARDS[-1][1]]


def _lm_split(out_dir: Path, streaming: bool):
    """The same packed sequences in memory (TokenSplit) or streamed from uneven token shards (written once)."""
    from swift_scale.data.shards import build_index
    from swift_scale.data.splits import TokenSplit
    from swift_scale.data.stream import StreamOptions
    from swift_scale.data.tokens import TokenStreamingSplit

    seqs = _lm_sequences()
    if not streaming:
        return TokenSplit(torch.from_numpy(seqs.astype(np.int64)))
    root = out_dir.parent / "token_shards"
    urls = [str(root / f"s{k}-000000.tar") for k in range(len(LM_SHARDS))]
    opts = StreamOptions(image_key="tokens.npy", seed=0, shuffle_buffer=32, num_workers=2, on_error="fail")
    return TokenStreamingSplit(build_index(urls), opts, LM_L, LM_VOCAB)


def _lm_worker(out_dir, streaming: bool, train: bool):
    from accelerate import Accelerator

    from swift_scale.data.text import unigram_rarity
    from swift_scale.features.extract import extract_features
    from swift_scale.train.loop import TrainSpec, train_model
    from swift_scale.train.models import create_lm
    from swift_scale.train.tasks import LMTask

    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = create_lm("gpt2", LM_VOCAB, LM_L, n_layer=1, n_embd=32, n_head=2)
    split = _lm_split(Path(out_dir), streaming)
    task = LMTask(unigram_rarity(_lm_sequences(), LM_VOCAB))
    if train:
        steps = []
        model.register_forward_hook(lambda *_: steps.append(1) if model.training else None)
        p = np.random.default_rng(0).random(LM_SHARDS[-1][1]) ** 4  # very uneven probabilities
        train_model(acc, model, split, probs=p / p.sum(), spec=TrainSpec(2, 16, 1e-3), task=task, progress=False)
        Path(out_dir, f"steps-{acc.process_index}.json").write_text(json.dumps(len(steps)))
    else:
        offsets, counts = [a for a, _ in LM_SHARDS], [b - a for a, b in LM_SHARDS]
        extract_features(acc, acc.prepare(model.eval()), split, Path(out_dir), offsets, counts, task,
                         batch_size=16, progress=False)
    acc.wait_for_everyone()
    acc.end_training()


def _write_lm_shards(root: Path) -> None:
    from swift_scale.data.writers import write_token_shards

    seqs = _lm_sequences()
    for k, (a, b) in enumerate(LM_SHARDS):
        write_token_shards(root, f"s{k}", seqs[a:b], maxcount=10_000)


@pytest.mark.dist
def test_lm_streamed_features_from_two_ranks_equal_the_in_memory_ones(tmp_path):
    """The LM features pass over token shards on 2 ranks × 2 workers writes the store the in-memory pass writes."""
    from swift_scale.features.store import FeatureStore

    _write_lm_shards(tmp_path / "token_shards")
    _launch("lm-features", tmp_path / "mem", 1)
    _launch("lm-stream-features", tmp_path / "two", 2)
    assert FeatureStore(tmp_path / "two").complete
    assert (tmp_path / "mem" / "features.npy").read_bytes() == (tmp_path / "two" / "features.npy").read_bytes()


@pytest.mark.dist
def test_lm_streaming_uneven_token_shards_equal_steps_on_two_ranks(tmp_path):
    _write_lm_shards(tmp_path / "token_shards")
    _launch("lm-stream-train", tmp_path / "run", 2)
    steps = [json.loads((tmp_path / "run" / f"steps-{r}.json").read_text()) for r in range(2)]
    kept = round(LM_SHARDS[-1][1] / 2)  # oversample 2: half of the candidates each pass; 2 epochs = 4 passes
    assert steps[0] == steps[1] == 4 * (kept // 16)


def _launch(worker: str, out_dir: Path, num_processes: int) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([sys.executable, "-m", "tests.test_distributed", worker, str(out_dir), str(num_processes)],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]


if __name__ == "__main__":
    fn = {"features": _features_worker, "train": _train_worker, "stream-train": _stream_train_worker,
          "stream-features": _stream_features_worker, "dynamics": _dynamics_worker, "search": _search_worker,
          "groups": _groups_worker,
          "lm-features": lambda d: _lm_worker(d, streaming=False, train=False),
          "lm-stream-features": lambda d: _lm_worker(d, streaming=True, train=False),
          "lm-stream-train": lambda d: _lm_worker(d, streaming=True, train=True)}[sys.argv[1]]
    debug_launcher(fn, args=(sys.argv[2],), num_processes=int(sys.argv[3]))
