"""The real CLI end to end on a tiny config, checking every file of docs/design.md §4."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml

from swift_scale.io import read_jsonl
from swift_scale.sampler import SwiftSampler

from .conftest import ROOT, cli, corrupt_shard, tiny_overrides


def test_run_end_to_end_writes_every_contract_file(tmp_path, digits_shards):
    out = tmp_path / "run"
    res = cli("run", *tiny_overrides(digits_shards, out, "train.progress=true"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "swift sampler" in res.stdout
    # one line per finished phase (time and headline figure) between the progress bars
    lines = {ln.split()[0]: ln for ln in res.stderr.replace("\r", "\n").splitlines()
             if ln.split() and ln.split()[0] in ("pretrain", "features", "search", "final")}
    assert set(lines) == {"pretrain", "features", "search", "final"}, res.stderr[-2000:]
    assert "at its best epoch" in lines["pretrain"] and "3 trials" in lines["search"], lines
    for rel in ("config.yaml", "index.json", "pretrain/metrics.json", "pretrain/theta0.pt", "features/meta.json",
                "features/features.npy", "search/history.jsonl", "sampler.json", "final/metrics.json",
                "report/report.md", "summary.json", "noise.json"):
        assert (out / rel).exists(), rel
    summary = json.loads((out / "summary.json").read_text())
    for key in ("task", "dataset", "model", "noise_rate", "world_size", "seconds"):
        assert key in summary
    assert summary["baseline"]["metric"] == "test_accuracy" and 0 <= summary["baseline"]["value"] <= 1
    assert 0 <= summary["swift"]["value"] <= 1
    assert summary["search"]["trials"] == 3 and 0 <= summary["search"]["best_score"] <= 1
    assert set(summary["seconds"]) >= {"pretrain", "features", "search", "final"}
    assert summary["world_size"] == 1 and summary["noise_rate"] == 0.4
    hist = read_jsonl(out / "search" / "history.jsonl")
    assert [h["trial"] for h in hist] == [0, 1, 2]
    for h in hist:
        assert len(h["params"]) == 10 and h["status"] == "ok" and 0 <= h["score"] <= 1 and h["seconds"] > 0
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["search"]["trials"] == 3 and resolved["train"]["epochs"] == 2
    index = json.loads((out / "index.json").read_text())
    assert len(json.loads((out / "noise.json").read_text())["flipped_ids"]) == round(0.4 * index["train"]["total"])
    assert sum(index["train"]["counts"]) == index["train"]["total"]
    sampler = SwiftSampler.load(out / "sampler.json")  # self-contained: no store needed
    assert tuple(sampler.feature_names) == ("dyn_loss", "renormed_entropy")  # the default features
    with pytest.raises(KeyError, match="missing \\['dyn_loss'\\]"):
        sampler.probs({"loss": np.array([0.1, 5.0], np.float32), "renormed_entropy": np.array([0.5, 0.5], np.float32)})
    probs = sampler.probs({"dyn_loss": np.array([0.1, 5.0], np.float32), "renormed_entropy": np.array([0.5, 0.5], np.float32),
                           "grad_proxy": np.array([0.1, 1.0], np.float32)})
    assert np.isclose(probs.sum(), 1)

    # rerunning the same command resumes: nothing is retrained, the result is unchanged
    again = cli("run", *tiny_overrides(digits_shards, out))
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["swift"] == summary["swift"]
    assert len(read_jsonl(out / "search" / "history.jsonl")) == 3

    # a changed config on the same folder is refused, nothing overwritten
    changed = cli("run", *tiny_overrides(digits_shards, out, "train.lr=0.5"))
    assert changed.returncode == 2 and "different config" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1

    # report and inspect on the finished folder
    rep = cli("report", out)
    assert rep.returncode == 0, rep.stderr
    for png in ("sampler_heatmap.png", "prob_vs_loss.png", "search_progress.png", "training_curves.png"):
        assert (out / "report" / png).stat().st_size > 1000
    ins = cli("inspect", out / "sampler.json")
    assert ins.returncode == 0 and "weights" in ins.stdout and "near-zero probability" in ins.stdout

    # transfer: train another model (a timm resnet) with this sampler
    other = tmp_path / "transfer"
    tr = cli("train", "--sampler", out / "sampler.json",
             *tiny_overrides(digits_shards, other, "model.name=resnet10t", "train.epochs=1", "model.image_size=16"))
    assert tr.returncode == 0, tr.stderr[-2000:]
    assert json.loads((other / "summary.json").read_text())["model"] == "resnet10t"
    assert not (other / "search" / "history.jsonl").exists()  # no search: the sampler came from elsewhere
    assert SwiftSampler.load(other / "sampler.json").info["source"] == str(out / "sampler.json")


LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    "accelerate": ["-m", "accelerate.commands.launch", "--config_file", str(ROOT / "launch" / "cpu2.yaml")],
}


@pytest.mark.dist
@pytest.mark.parametrize("launcher,mode", [("accelerate", "indexed"), ("torchrun", "indexed"),
                                           ("torchrun", "streaming")])
def test_run_under_two_real_processes(tmp_path, digits_shards, launcher, mode):
    """2 CPU processes (gloo) via torchrun and via the shipped accelerate config: the whole pipeline, also in
    streaming mode with 2 DataLoader workers per rank."""
    out = tmp_path / "ddp"
    extra = ["data.mode=streaming", "data.on_error=fail", "data.num_workers=2"] if mode == "streaming" else []
    cmd = [sys.executable, *LAUNCHERS[launcher], "-m", "swift_scale.cli", "run",
           *tiny_overrides(digits_shards, out, *extra)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert len(read_jsonl(out / "search" / "history.jsonl")) == 3
    meta = json.loads((out / "features" / "meta.json").read_text())
    assert meta["complete"] and len(list((out / "features" / "done").iterdir())) == 4  # every shard, by 2 ranks
    from swift_scale.data.shards import build_index, expand_shards

    index = json.loads((out / "index.json").read_text())  # counted by 2 ranks, shard ordinal mod 2
    assert index["train"]["counts"] == build_index(expand_shards(digits_shards["train"])).counts


def test_tensorboard_tracking(tmp_path, digits_shards):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    res = cli("run", *tiny_overrides(digits_shards, out, "train.log_with=tensorboard"))
    assert res.returncode == 0, res.stderr[-2000:]
    events = list((out / "logs").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"search/score", "search/best_so_far", "pretrain/val_accuracy", "final/test_accuracy",
            "summary/swift_test_accuracy", "summary/swift_round"} <= tags
    assert len(acc.Scalars("search/score")) == 3


def test_failed_trials_are_recorded_with_reason(tmp_path, digits_shards):
    """A fine-tune learning rate that diverges makes every trial fail: each is recorded, the run says so."""
    out = tmp_path / "diverge"
    res = cli("run", *tiny_overrides(digits_shards, out, "search.lr=1e30"))
    assert res.returncode == 1 and "every search trial failed" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    hist = read_jsonl(out / "search" / "history.jsonl")
    assert len(hist) == 3 and all(h["status"] == "failed" and h["score"] is None for h in hist)
    assert "non-finite training loss" in hist[0]["error"]


@pytest.mark.parametrize("mode", ["indexed", "streaming"])
def test_corrupt_training_samples_are_skipped_and_reported(tmp_path, digits_shards, mode):
    """Indexed mode finds bad samples while decoding; streaming mode (2 workers) drops them from their batches
    and finds them all in the features pass. Either way: listed, counted, never sampled; fail mode exits 2."""

    bad = tmp_path / "bad-000000.tar"
    corrupt_shard(bad)
    train = digits_shards["train"].replace("{000000..000003}", "{000000..000001}") + "::" + str(bad)
    out = tmp_path / "skip"
    args = [a if not a.startswith("data.train=") else f"data.train={train}" for a in tiny_overrides(digits_shards, out)]
    if mode == "streaming":
        args += ["data.mode=streaming", "data.num_workers=2"]
    res = cli("run", *args, "model.image_size=8")
    assert res.returncode == 0, res.stderr[-2000:]
    # model.image_size resizes the 6x6 sample, so 3 of the 6 are bad
    assert re.search(r"skipped 3 bad (training )?sample\(s\)", res.stderr), res.stderr[-2000:]
    if mode == "streaming":
        report = json.loads((out / "data_errors.json").read_text())
        index = json.loads((out / "index.json").read_text())["train"]
        bad_ids = [index["offsets"][-1] + k for k in (1, 2, 4)]  # badpng, nolabel, label
        assert sorted(e["id"] for e in report["errors"]) == bad_ids
        from swift_scale.config import load_config
        from swift_scale.pipeline import Pipeline

        again = Pipeline(load_config(str(out / "config.yaml"), ["train.cpu=true"]))  # the run folder, reopened
        again.features()  # complete: the bad ids come back from the store's shard markers
        assert np.flatnonzero(~again.data.train_valid).tolist() == bad_ids
    report = json.loads((out / "data_errors.json").read_text())
    assert report["count"] == 3 and {e["key"] for e in report["errors"]} == {"badpng", "nolabel", "label"}
    assert all(e["split"] == "train" and e["url"] == str(bad) for e in report["errors"])
    assert json.loads((out / "summary.json").read_text())["data_errors"] == 3
    fail = cli("run", *[a.replace(str(out), str(tmp_path / "fail")) for a in args], "model.image_size=8",
               "data.on_error=fail")
    assert fail.returncode == 2 and len(fail.stderr.strip().splitlines()) == 1  # also from a DataLoader worker
    assert f"{bad}: sample '" in fail.stderr and "data.on_error=skip" in fail.stderr
