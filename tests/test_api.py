"""The Python API a user takes into their own training code (also the README examples)."""

import numpy as np
import pytest
import torch
import webdataset as wds

from swift_scale.data import build_index
from swift_scale.data.writers import write_shards
from swift_scale.sampler import DistributedWeightedSampler, epoch_indices, keep_top_k
from swift_scale.sampler.stages import KeepByGlobalId, hf_epoch, hf_keep, keep_set


def _probs(n, seed=0):
    p = np.random.default_rng(seed).random(n) ** 2
    return p / p.sum()


def test_webdataset_stage_keeps_before_decode(tmp_path):
    n = 50
    pattern = write_shards(tmp_path, "train", np.arange(n * 16, dtype=np.uint8).reshape(n, 4, 4) % 251,
                           np.arange(n) % 5, maxcount=12)
    index = build_index(sorted(str(p) for p in tmp_path.glob("train-*.tar")))
    assert pattern.endswith(".tar")
    p = _probs(n)
    decoded = []

    def counting_decoder(sample):
        decoded.append(sample["__gid__"])
        return sample

    stage = KeepByGlobalId(index, p, keep_fraction=0.5, seed=1, epoch=3)
    pipe = wds.DataPipeline(wds.SimpleShardList(index.urls), wds.tarfile_to_samples(), stage,
                            wds.map(counting_decoder), wds.decode("l8"), wds.to_tuple("__gid__", "png", "cls"))
    rows = list(pipe)
    _, mask = keep_set(p, 0.5, seed=1, epoch=3)
    assert sorted(r[0] for r in rows) == np.flatnonzero(mask).tolist()
    assert len(decoded) == 25  # only kept samples reached the decoder
    for gid, img, cls in rows:
        assert cls == gid % 5 and int(img[0, 0]) == ((gid * 16) % 256) % 251
    # the source form reads only kept payloads and delivers the same samples, also split over 2 workers
    fast = wds.DataPipeline(wds.SimpleShardList(index.urls), wds.split_by_worker, stage.read, wds.decode("l8"),
                            wds.to_tuple("__gid__", "png", "cls"))
    assert [(g, im.tobytes(), c) for g, im, c in fast] == [(g, im.tobytes(), c) for g, im, c in rows]
    two = torch.utils.data.DataLoader(fast, batch_size=None, num_workers=2)
    assert sorted(int(g) for g, _, _ in two) == sorted(r[0] for r in rows)


def test_hf_datasets_indexed_and_streaming(tmp_path):
    datasets = pytest.importorskip("datasets")
    n = 200
    ds = datasets.Dataset.from_dict({"x": list(range(n)), "label": [i % 3 for i in range(n)]})
    ds.save_to_disk(str(tmp_path / "ds"))
    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    p = _probs(n, 2)
    epoch = hf_epoch(ds, p, seed=0, epoch=1)
    np.testing.assert_array_equal(epoch["x"], epoch_indices(p, n, 0, 1))
    kept = hf_keep(ds, p, 0.5, seed=0, epoch=1)
    _, mask = keep_set(p, 0.5, 0, 1)
    assert kept["x"] == np.flatnonzero(mask).tolist()
    stream = ds.to_iterable_dataset(num_shards=4)
    kept_stream = [r["x"] for r in hf_keep(stream, p, 0.5, seed=0, epoch=1, id_column="x")]
    assert sorted(kept_stream) == kept["x"]
    # the same kept set split over 2 nodes (before or after the keep) and over 2 DataLoader workers per node
    from datasets.distributed import split_dataset_by_node

    for keep_first in (True, False):
        per_node = []
        for rank in range(2):
            s = hf_keep(stream, p, 0.5, seed=0, epoch=1, id_column="x") if keep_first else stream
            s = split_dataset_by_node(s, rank=rank, world_size=2)
            s = s if keep_first else hf_keep(s, p, 0.5, seed=0, epoch=1, id_column="x")
            loader = torch.utils.data.DataLoader(s.with_format("torch"), batch_size=None, num_workers=2)
            per_node.append([int(r["x"]) for r in loader])
        assert sorted(per_node[0] + per_node[1]) == kept["x"] and not set(per_node[0]) & set(per_node[1])
    with pytest.raises(ValueError, match="id_column"):  # row indices are not ids once a stream is split
        hf_keep(stream, p, 0.5, seed=0, epoch=1)
    with pytest.raises(ValueError, match="no column 'id'"):
        hf_keep(stream, p, 0.5, seed=0, epoch=1, id_column="id")


def test_readme_api_example(tmp_path):
    # mirrors README "Python API": load a sampler, probabilities, DDP-aware sampler, streaming keep
    from swift_scale import SwiftSampler
    from swift_scale.sampler import UNIFORM_THETA

    rng = np.random.default_rng(0)
    loss, ent, g = rng.exponential(size=1000), rng.random(1000), rng.random(1000)
    q = {k: np.quantile(v, np.linspace(0, 1, 65)) for k, v in (("loss", loss), ("renormed_entropy", ent))}
    theta = UNIFORM_THETA.copy()
    theta[3:8] = [1.0, 0.8, 0.2, 0.0, 0.0]  # low loss kept, high loss starved
    theta[8:10] = [1.0, 0.5]
    feats = {"loss": loss, "renormed_entropy": ent, "grad_proxy": g}
    SwiftSampler.from_theta(theta, ("loss", "renormed_entropy"), q).fit(feats).save(tmp_path / "sampler.json")

    sampler = SwiftSampler.load(tmp_path / "sampler.json")
    p = sampler.probs(feats)
    assert p.sum() == pytest.approx(1) and p[np.argmax(loss)] < p[np.argmin(loss)]
    shares = []
    for rank in range(2):
        s = DistributedWeightedSampler(p, seed=0, rank=rank, world_size=2)
        s.set_epoch(1)
        shares.append(list(s))
    assert len(shares[0]) == len(shares[1]) == 500
    mask = keep_top_k(np.arange(128), p[:128], 64, seed=0, epoch=1)
    assert mask.sum() == 64


def test_bring_your_own_loop_with_accelerate():
    """A plain accelerate loop over a map-style dataset with the DDP-aware sampler."""
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    x = torch.randn(256, 4)
    y = (x[:, 0] > 0).long()
    p = np.full(256, 1 / 256)
    p[:128] *= 3
    p /= p.sum()
    sampler = DistributedWeightedSampler(p, seed=0, rank=acc.process_index, world_size=acc.num_processes)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, sampler=sampler)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model, opt = acc.prepare(model, opt)
    seen = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for xb, yb in loader:
            loss = torch.nn.functional.cross_entropy(model(xb.to(acc.device)), yb.to(acc.device))
            opt.zero_grad()
            acc.backward(loss)
            opt.step()
            seen.append(len(xb))
    assert sum(seen) == 3 * 256
    acc.end_training()


def test_online_scorer_keeps_by_frozen_model(tmp_path):
    """Online mode: a frozen θ0 scores 2B augmented candidates, the sampler keeps exactly B."""
    from swift_scale import SwiftSampler
    from swift_scale.sampler import UNIFORM_THETA
    from swift_scale.sampler.stages import online_keep

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 4)
    x = torch.randn(64, 3)
    y = torch.randint(0, 4, (64,))
    q = {"loss": np.linspace(0, 5, 33), "renormed_entropy": np.linspace(0, 1, 33)}
    theta = UNIFORM_THETA.copy()
    theta[3:8] = [1.0, 1.0, 0.0, 0.0, 0.0]  # only the lowest-loss half of T has weight
    theta[8:10] = [1.0, 0.5]
    sampler = SwiftSampler.from_theta(theta, ("loss", "renormed_entropy"), q, "cdf")
    mask = online_keep(sampler, model, x, y, np.arange(1000, 1064), 16, seed=0, epoch=0)
    assert mask.dtype == torch.bool and int(mask.sum()) == 16
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    assert loss[mask].mean() < loss[~mask].mean()
    again = online_keep(sampler, model, x, y, np.arange(1000, 1064), 16, seed=0, epoch=0)
    assert torch.equal(mask, again)
