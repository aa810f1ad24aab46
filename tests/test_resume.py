"""Kill -9 a real run in the middle of the search, rerun the same command: same results as uninterrupted."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from swift_scale.io import read_jsonl

from .conftest import ROOT, cli, tiny_overrides

EXTRA = ["search.trials=6", "search.n_init=2"]


TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _kill_when(out, predicate, args, timeout=120, launcher=()):
    proc = subprocess.Popen([sys.executable, *launcher, "-m", "swift_scale.cli", "run", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if predicate(out):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            if proc.poll() is not None:
                return False
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return False


@pytest.mark.slow
def test_kill_during_search_and_resume(tmp_path, digits_shards):
    ref = tmp_path / "ref"
    assert cli("run", *tiny_overrides(digits_shards, ref, *EXTRA)).returncode == 0
    out = tmp_path / "killed"
    args = tiny_overrides(digits_shards, out, *EXTRA)
    hist = out / "search" / "history.jsonl"
    killed = _kill_when(out, lambda o: hist.exists() and len(read_jsonl(hist)) >= 3, args)
    assert killed, "the run finished before it could be killed"
    assert not (out / "summary.json").exists()
    done_before = len(read_jsonl(hist))
    assert 3 <= done_before < 6
    res = cli("run", *args)
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = read_jsonl(ref / "search" / "history.jsonl"), read_jsonl(hist)
    assert [r["trial"] for r in b] == list(range(6))  # no trial lost or repeated
    assert [r["params"] for r in a] == [r["params"] for r in b]
    assert [r["score"] for r in a] == [r["score"] for r in b]
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (ref, out))
    assert sa["baseline"] == sb["baseline"] and sa["swift"] == sb["swift"]


@pytest.mark.slow
def test_kill_during_pretrain_resumes_from_epoch_checkpoint(tmp_path, digits_shards):
    ref = tmp_path / "ref"
    extra = ["train.epochs=4", "search.trials=2"]
    assert cli("run", *tiny_overrides(digits_shards, ref, *extra)).returncode == 0
    out = tmp_path / "killed"
    args = tiny_overrides(digits_shards, out, *extra)
    state = out / "pretrain" / "ckpt" / "state.json"
    killed = _kill_when(out, lambda o: state.exists() and json.loads(state.read_text())["epoch"] >= 2, args)
    assert killed
    assert not (out / "pretrain" / "metrics.json").exists()
    res = cli("run", *args)
    assert res.returncode == 0, res.stderr[-2000:]
    pa, pb = (json.loads((d / "pretrain" / "metrics.json").read_text()) for d in (ref, out))
    assert pa["test"] == pb["test"] and [r["train_loss"] for r in pa["curve"]] == [r["train_loss"] for r in pb["curve"]]


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["features", "final"])
def test_kill_during_features_or_final_resumes(tmp_path, digits_shards, phase):
    extra = ["train.epochs=4", "search.trials=2"]
    ref = tmp_path / "ref"
    assert cli("run", *tiny_overrides(digits_shards, ref, *extra)).returncode == 0
    out = tmp_path / "killed"
    args = tiny_overrides(digits_shards, out, *extra)
    if phase == "features":
        marker = out / "features" / "done"
        killed = _kill_when(out, lambda o: marker.exists() and any(marker.iterdir()), args)
    else:
        state = out / "final" / "ckpt" / "state.json"
        killed = _kill_when(out, lambda o: state.exists() and json.loads(state.read_text())["epoch"] >= 1, args)
    assert killed
    assert not (out / "summary.json").exists()
    res = cli("run", *args)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "features" / "features.npy").read_bytes() == (ref / "features" / "features.npy").read_bytes()
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (ref, out))
    assert sa["baseline"] == sb["baseline"] and sa["swift"] == sb["swift"]


@pytest.mark.slow
@pytest.mark.dist
def test_kill_during_a_trial_parallel_search_on_two_processes_and_resume(tmp_path, digits_shards):
    """2 processes, one trial each per round, trials stopped early after epoch 1, proposals computed in the helper
    process during the round before: killed (the whole process group) mid-search, the rerun ends with the
    uninterrupted run's history."""
    extra = ["search.trials=9", "search.n_init=2", "search.finetune_epochs=2", "search.rungs=[1]", "search.eta=2"]

    def run(out):
        return subprocess.run([sys.executable, *TORCHRUN, "-m", "swift_scale.cli", "run",
                               *tiny_overrides(digits_shards, out, *extra)], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)

    ref = tmp_path / "ref"
    res = run(ref)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "killed"
    hist = out / "search" / "history.jsonl"
    killed = _kill_when(out, lambda o: hist.exists() and len(read_jsonl(hist)) >= 4,
                        tiny_overrides(digits_shards, out, *extra), launcher=TORCHRUN)
    assert killed and len(read_jsonl(hist)) < 9
    res = run(out)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = read_jsonl(ref / "search" / "history.jsonl"), read_jsonl(hist)
    assert [r["trial"] for r in b] == list(range(9)) and [r["round"] for r in a] == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    for key in ("params", "score", "status", "rungs"):
        assert [r.get(key) for r in a] == [r.get(key) for r in b], key
    assert {r["status"] for r in a} >= {"ok"} and json.loads((out / "summary.json").read_text())["world_size"] == 2


def test_run_folder_from_an_older_version_without_new_keys_still_resumes(tmp_path):
    """A config.yaml written before a key existed compares that key at its default (not as a changed config)."""
    import yaml

    from swift_scale.config import load_config
    from swift_scale.run_folder import RunFolder

    cfg = load_config(None, ["data.train=a.tar", "data.val=b.tar", "data.test=c.tar", f"run.out_dir={tmp_path}",
                             "train.cpu=true"])
    RunFolder(cfg).check()
    RunFolder(cfg).create()
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del saved["data"]["online"], saved["sampler"]["segments"]  # as written by an older swift_scale
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    RunFolder(cfg).check()  # no error
    changed = load_config(None, ["data.train=a.tar", "data.val=b.tar", "data.test=c.tar", f"run.out_dir={tmp_path}",
                                 "train.cpu=true", "sampler.segments=6"])
    with pytest.raises(Exception, match="sampler.segments"):
        RunFolder(changed).check()
