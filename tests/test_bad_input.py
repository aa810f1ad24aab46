"""Every input a user can get wrong, as a table: exit status 2, one line naming the field or file, no traceback,
and the run folder exactly as it was (a new one is not created; a finished one is byte-identical).

Each case is a function of a :class:`Ctx` returning (CLI arguments, the text the line must contain). Cases that
damage a run folder work on a copy of one finished tiny run.
"""

import hashlib
import io
import os
import pickle
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from .conftest import ROOT, cli, cli_in_process, corrupt_shard, tiny_overrides

CASES = {}


def case(name):
    def deco(fn):
        CASES[name] = fn
        return fn

    return deco


class Ctx:
    def __init__(self, tmp: Path, shards: dict, finished: Path):
        self.tmp, self.shards, self.finished = tmp, shards, finished
        self.watch = tmp / "run"  # the folder that must stay as it was

    def run(self, *extra, out=None, cmd="run"):
        return [cmd, *tiny_overrides(self.shards, out or self.watch, *extra)]

    def with_split(self, split, pattern, *extra):
        args = self.run(*extra)
        return [a if not a.startswith(f"data.{split}=") else f"data.{split}={pattern}" for a in args]

    def copy_finished(self) -> Path:
        shutil.copytree(self.finished, self.watch)
        return self.watch

    def rerun(self, *extra):
        """The finished run's own command (resuming: nothing would be retrained)."""
        return self.run(*extra)

    def tar(self, name, samples) -> Path:
        path = self.tmp / name
        with wds.TarWriter(str(path)) as sink:
            for i, s in enumerate(samples):
                sink.write({"__key__": f"{i:06d}", **s})
        return path


# -- config values: refused before anything runs --------------------------------------------------------------
CONFIG = [
    ("train.epochs=0", "train.epochs"), ("train.epochs=-1", "train.epochs"), ("train.epochs=abc", "train.epochs"),
    ("train.epochs=2.5", "train.epochs"), ("train.epochs=1000000000000", "train.epochs"),
    ("train.lr=0", "train.lr"), ("train.lr=1e999", "train.lr"), ("train.lr=nan", "train.lr"),
    ("train.batch_size=0", "train.batch_size"), ("train.cpu=maybe", "train.cpu"),
    ("train.mixed_precision=fp8", "train.mixed_precision"), ("train.mixed_precision=fp16", "train.mixed_precision"),
    ("train.schedule=linear", "train.schedule"), ("train.checkpoint_steps=-1", "train.checkpoint_steps"),
    ("data.noise_rate=1.5", "data.noise_rate"), ("data.noise_kind=uniformish", "data.noise_kind"),
    ("data.on_error=maybe", "data.on_error"), ("data.mode=stream", "data.mode"),
    ("data.task=segmentation", "data.task"), ("data.num_workers=-1", "data.num_workers"),
    ("data.online=true", "data.online"), ("data.val=", "data.val"),
    ("search.trials=0", "search.trials"), ("search.finetune_epochs=-2", "search.finetune_epochs"),
    ("search.strategy=grid", "search.strategy"), ("search.theta0_epoch=99", "search.theta0_epoch"),
    ("sampler.transform=log", "sampler.transform"), ("sampler.segments=0", "sampler.segments"),
    ("sampler.features=[loss]", "sampler.features"), ("sampler.features=[loss,nosuch]", "sampler.features"),
    ("features.batch_size=0", "features.batch_size"),
    ("model.in_chans=2", "model.in_chans"), ("model.kwargs=3", "model.kwargs"),
    ("model.name=resnet_does_not_exist", "model.name"), ("model.kwargs.nosuch=1", "model.kwargs"),
    ("nosuch.key=1", "nosuch.key"), ("train=3", "train"), ("seed", "seed"),
    ("seed=99999999999999999999999", "seed"), ("seed=-1", "seed"),
    ("run.name=..", "run.name"), ("run.name=a/b", "run.name"),
    ("search.rungs=[1,1]", "search.rungs"), ("search.rungs=[5]", "search.rungs"), ("search.rungs=[x]", "search.rungs"),
    ("search.eta=1", "search.eta"), ("search.procs_per_trial=-1", "search.procs_per_trial"),
    ("search.procs_per_trial=3", "search.procs_per_trial"),
    ("train.collective_timeout_min=0", "train.collective_timeout_min"),
]
for _override, _needle in CONFIG:
    case(_override)(lambda c, o=_override, n=_needle: (c.run(o), n))


@case("data.oversample=0.5 (streaming)")
def _(c):
    return c.run("data.mode=streaming", "data.oversample=0.5"), "data.oversample"


# -- the config file and the run folder -----------------------------------------------------------------------
@case("--config missing")
def _(c):
    return ["run", "--config", c.tmp / "nope.yaml"], "nope.yaml"


@case("--config a directory")
def _(c):
    (c.tmp / "confdir").mkdir()
    return ["run", "--config", c.tmp / "confdir"], "confdir"


@case("--config bad YAML")
def _(c):
    (c.tmp / "bad.yaml").write_text("train: [unclosed\n")
    return ["run", "--config", c.tmp / "bad.yaml"], "bad.yaml"


@case("--config not UTF-8")
def _(c):
    (c.tmp / "latin.yaml").write_bytes("run: {name: caf\xe9}\n".encode("latin-1"))
    return ["run", "--config", c.tmp / "latin.yaml"], "latin.yaml"


@case("--config a list")
def _(c):
    (c.tmp / "list.yaml").write_text("- a\n- b\n")
    return ["run", "--config", c.tmp / "list.yaml"], "list.yaml"


@case("run.out_dir an existing file")
def _(c):
    c.watch.write_text("my notes\n")
    return c.run(), "run.out_dir"


@case("run.out_dir someone else's folder")
def _(c):
    c.watch.mkdir()
    (c.watch / "index.json").write_text('{"mine": true}\n')
    return c.run(), "not a swift_scale run folder"


@case("run.out_dir with a config.yaml that is not a mapping")
def _(c):
    c.watch.mkdir()
    (c.watch / "config.yaml").write_text("- just\n- a list\n")
    return c.run(), "config.yaml"


@case("run folder made with another config")
def _(c):
    c.copy_finished()
    return c.rerun("train.lr=0.5"), "different config"


# -- shards ---------------------------------------------------------------------------------------------------
@case("shard missing")
def _(c):
    return c.with_split("train", "/nonexistent/x-{000000..000001}.tar"), "/nonexistent/x-000000.tar"


@case("shard is a directory")
def _(c):
    (c.tmp / "d-000000.tar").mkdir()
    return c.with_split("train", str(c.tmp / "d-000000.tar")), "d-000000.tar"


@case("pipe: shard without allow_pipe")
def _(c):
    return c.with_split("train", "pipe:cat /etc/passwd"), "allow_pipe"


@case("http shard that cannot be reached")
def _(c):
    return c.with_split("train", "http://swift-scale-test.invalid/train-000000.tar"), "swift-scale-test.invalid"


@case("https shard that cannot be reached")
def _(c):
    return c.with_split("val", "https://swift-scale-test.invalid/val-000000.tar"), "swift-scale-test.invalid"


def _truncated(c) -> Path:
    src = Path(c.shards["train"].replace("{000000..000003}", "000000"))
    data = src.read_bytes()
    path = c.tmp / "cut-000000.tar"
    path.write_bytes(data[: len(data) // 2 + 100])
    return path


@case("truncated tar")
def _(c):
    return c.with_split("train", str(_truncated(c))), "cut-000000.tar"


@case("truncated tar as file://")
def _(c):
    return c.with_split("train", f"file://{_truncated(c)}"), "cut-000000.tar"


@case("tar with a corrupt header")
def _(c):
    path = _truncated(c)
    data = bytearray(Path(c.shards["train"].replace("{000000..000003}", "000000")).read_bytes())
    data[3] ^= 0xFF
    path.write_bytes(bytes(data))
    return c.with_split("train", str(path)), "cut-000000.tar"


@case("empty val split")
def _(c):
    return c.with_split("val", str(c.tar("empty-000000.tar", []))), "data.val"


def _png(size, value=0):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@case("stray val label far outside the training classes")
def _(c):
    samples = [{"png": _png(8), "cls": str(i % 10).encode()} for i in range(30)]
    samples[7]["cls"] = b"100000"
    return c.with_split("val", str(c.tar("stray-000000.tar", samples))), "data.val"


@case("val images of another size than train")
def _(c):
    samples = [{"png": _png(16), "cls": str(i % 10).encode()} for i in range(30)]
    return c.with_split("val", str(c.tar("big-000000.tar", samples))), "data.val"


@case("most training samples unusable")
def _(c):
    samples = [{"png": b"not a png", "cls": b"1"} for _ in range(20)] + [{"png": _png(8), "cls": b"2"}]
    return c.with_split("train", str(c.tar("junk-000000.tar", samples))), "data.train"


@case("label field missing everywhere (on_error=fail)")
def _(c):
    samples = [{"png": _png(8)} for _ in range(5)]
    return c.with_split("train", str(c.tar("nolabel-000000.tar", samples)), "data.on_error=fail"), "data.label_key"


# -- model weights ----------------------------------------------------------------------------------------------
@case("model.checkpoint missing")
def _(c):
    return c.run(f"model.checkpoint={c.tmp / 'none.pt'}"), "model.checkpoint"


@case("model.checkpoint garbage")
def _(c):
    (c.tmp / "g.pt").write_bytes(os.urandom(2000))
    return c.run(f"model.checkpoint={c.tmp / 'g.pt'}"), "model.checkpoint"


@case("model.checkpoint a directory")
def _(c):
    (c.tmp / "w").mkdir()
    return c.run(f"model.checkpoint={c.tmp / 'w'}"), "model.checkpoint"


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/swift_scale_pwned",))


@case("model.checkpoint a pickle that runs code")
def _(c):
    (c.tmp / "evil.pt").write_bytes(pickle.dumps({"w": _Evil()}))
    return c.run(f"model.checkpoint={c.tmp / 'evil.pt'}"), "model.checkpoint"


@case("model.checkpoint a list")
def _(c):
    torch.save([torch.zeros(3)], c.tmp / "list.pt")
    return c.run(f"model.checkpoint={c.tmp / 'list.pt'}"), "model.checkpoint"


@case("model.checkpoint of another architecture")
def _(c):
    from swift_scale.train.models import create_model

    torch.save(create_model("swift_cnn", 10, 1, width=8).state_dict(), c.tmp / "w8.pt")
    return c.run(f"model.checkpoint={c.tmp / 'w8.pt'}"), "model.checkpoint"


# -- a damaged run folder -------------------------------------------------------------------------------------
@case("garbage pretrain/theta0.pt")
def _(c):
    run = c.copy_finished()
    (run / "pretrain" / "theta0.pt").write_bytes(b"\x00garbage" * 50)
    return c.rerun(), "theta0.pt"


@case("truncated features.npy")
def _(c):
    run = c.copy_finished()
    path = run / "features" / "features.npy"
    path.write_bytes(path.read_bytes()[:200])
    return c.rerun(), "features.npy"


@case("corrupt features meta.json")
def _(c):
    run = c.copy_finished()
    (run / "features" / "meta.json").write_text("{broken")
    return c.rerun(), "meta.json"


@case("corrupt middle line of history.jsonl")
def _(c):
    run = c.copy_finished()
    lines = (run / "search" / "history.jsonl").read_text().splitlines()
    lines[1] = lines[1][:20]
    (run / "search" / "history.jsonl").write_text("\n".join(lines) + "\n")
    return c.rerun(), "history.jsonl"


@case("corrupt pretrain checkpoint state")
def _(c):
    run = c.copy_finished()
    (run / "pretrain" / "metrics.json").unlink()
    (run / "pretrain" / "ckpt" / "state.json").write_text("{broken")
    return c.rerun(), "ckpt"


@case("corrupt pretrain/metrics.json")
def _(c):
    run = c.copy_finished()
    (run / "pretrain" / "metrics.json").write_text("[1, 2")
    return c.rerun(), "metrics.json"


# -- samplers, report, inspect --------------------------------------------------------------------------------
def _foreign_sampler(c) -> Path:
    """A valid sampler over features this run does not compute."""
    import json

    d = json.loads((c.finished / "sampler.json").read_text())
    d["features"] = [d["features"][0], "nosuch"]
    d["quantiles"]["nosuch"] = d["quantiles"]["renormed_entropy"]
    path = c.tmp / "foreign.json"
    path.write_text(json.dumps(d))
    return path


@case("train --sampler with features this run lacks")
def _(c):
    c.copy_finished()
    return ["train", "--sampler", _foreign_sampler(c), *c.rerun()[1:]], "nosuch"


@case("train --sampler over a folder with its own learned sampler")
def _(c):
    c.copy_finished()
    import json

    d = json.loads((c.finished / "sampler.json").read_text())
    d["theta"][3] = 0.123
    (c.tmp / "other.json").write_text(json.dumps(d))
    return ["train", "--sampler", c.tmp / "other.json", *c.rerun()[1:]], "already holds another sampler"


@case("train --sampler binary garbage")
def _(c):
    (c.tmp / "s.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" + os.urandom(64))
    return ["train", "--sampler", c.tmp / "s.json", *c.run()[1:]], "s.json"


@case("train --sampler missing")
def _(c):
    return ["train", "--sampler", c.tmp / "nope.json", *c.run()[1:]], "nope.json"


@case("inspect a directory")
def _(c):
    (c.tmp / "sdir").mkdir()
    return ["inspect", c.tmp / "sdir"], "sdir"


@case("inspect binary garbage")
def _(c):
    (c.tmp / "g.json").write_bytes(os.urandom(100) + b"\xff")
    return ["inspect", c.tmp / "g.json"], "g.json"


@case("inspect a sampler with a bad schema")
def _(c):
    (c.tmp / "s.json").write_text('{"format": "swift_scale.sampler", "version": 1}')
    return ["inspect", c.tmp / "s.json"], "s.json"


@case("report on a folder that is not a run")
def _(c):
    c.watch.mkdir()
    return ["report", c.watch], str(c.watch)


@case("report with a corrupt summary.json")
def _(c):
    run = c.copy_finished()
    (run / "summary.json").write_text("{not json")
    return ["report", run], "summary.json"


# -- language models ------------------------------------------------------------------------------------------
LM = ["data.task=lm", "model.name=gpt2", "model.kwargs.n_layer=1", "model.kwargs.n_embd=16",
      "model.kwargs.n_head=2", "data.seq_len=32", "data.vocab_size=300"]


def _lm(c, *extra):
    text = {s: str(ROOT / "tests" / "fixtures" / f"kjv_{s}.txt") for s in ("train", "val", "test")}
    return ["run", *tiny_overrides(text, c.watch, *LM, *extra)]


@case("lm: tokenizer directory missing")
def _(c):
    return _lm(c, f"data.tokenizer={c.tmp / 'no-tok'}"), "data.tokenizer"


@case("lm: unknown GPT2Config key")
def _(c):
    return _lm(c, "model.kwargs.n_layers=2"), "model.kwargs"


@case("lm: text file missing")
def _(c):
    return [a if not a.startswith("data.val=") else f"data.val={c.tmp / 'none.txt'}" for a in _lm(c)], "data.val"


@case("lm: seq_len longer than the val text")
def _(c):
    (c.tmp / "short.txt").write_text("In the beginning.\n")
    return [a if not a.startswith("data.val=") else f"data.val={c.tmp / 'short.txt'}" for a in _lm(c)], "data.val"


# -- the harness ----------------------------------------------------------------------------------------------
def snapshot(path: Path):
    """{relative path: sha1} of every file below ``path`` (None when it does not exist)."""
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_file():
        return {".": hashlib.sha1(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, digits_shards):
    out = tmp_path_factory.mktemp("finished") / "run"
    res = cli("run", *tiny_overrides(digits_shards, out))
    assert res.returncode == 0, res.stderr[-2000:]
    return out


def test_the_table_is_large():
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_line_and_changes_nothing(name, tmp_path, digits_shards, finished, capfd):
    """The whole table through ``cli.main`` in this process (see ``cli_in_process``)."""
    _check_case(name, tmp_path, digits_shards, finished, lambda *args: cli_in_process(capfd, *args))


# a sample of the table through the real console entry point in a fresh interpreter: one of each kind
SUBPROCESS = ["train.epochs=0", "--config not UTF-8", "shard missing", "truncated tar", "model.checkpoint garbage",
              "garbage pretrain/theta0.pt", "train --sampler binary garbage", "lm: unknown GPT2Config key"]


@pytest.mark.parametrize("name", SUBPROCESS)
def test_bad_input_in_a_fresh_process(name, tmp_path, digits_shards, finished):
    _check_case(name, tmp_path, digits_shards, finished, cli)


def _check_case(name, tmp_path, digits_shards, finished, run):
    c = Ctx(tmp_path, digits_shards, finished)
    args, needle = CASES[name](c)
    before = snapshot(c.watch)
    res = run(*args)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("swift-scale: error: "), res.stderr[-3000:]
    assert str(needle) in lines[0], lines[0]
    assert snapshot(c.watch) == before, "the run folder changed"
    assert not Path("/tmp/swift_scale_pwned").exists()


# -- the cases that need real permissions: as root, run without the capabilities that bypass them ------------
def _cli_unprivileged(*args):
    """The CLI with file permissions in force: as root, ``setpriv`` drops CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH, so root's files are governed by their owner bits like anyone's."""
    cmd = [sys.executable, "-m", "swift_scale.cli", *map(str, args)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "running as root needs util-linux's setpriv to test permissions"
        drop = "-dac_override,-dac_read_search"
        cmd = [setpriv, f"--inh-caps={drop}", f"--bounding-set={drop}", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_unreadable_shard_is_named(tmp_path, digits_shards):
    shards = tmp_path / "shards"
    shutil.copytree(Path(digits_shards["train"]).parent, shards)
    locked = shards / "train-000001.tar"
    locked.chmod(0o000)
    patterns = {s: str(shards / Path(p).name) for s, p in digits_shards.items()}
    res = _cli_unprivileged("run", *tiny_overrides(patterns, tmp_path / "run"))
    assert res.returncode == 2 and "train-000001.tar" in res.stderr, res.stderr[-2000:]
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_read_only_run_folder_is_named(tmp_path, digits_shards, finished):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "pretrain" / "metrics.json").unlink()  # a phase to redo, in a folder nobody may write
    for p in [run, *run.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    before = snapshot(run)
    try:
        res = _cli_unprivileged("run", *tiny_overrides(digits_shards, run))
    finally:
        for p in [run, *run.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    assert res.returncode == 2 and str(run) in res.stderr and "writable" in res.stderr, res.stderr[-2000:]
    assert len(res.stderr.strip().splitlines()) == 1 and snapshot(run) == before


# -- inputs that are not errors but used to go wrong silently -------------------------------------------------
def test_torn_history_tail_is_cut_before_the_next_append(tmp_path, digits_shards, finished):
    """A kill during the append leaves a fragment; the rerun continues the search and every line stays valid."""
    from swift_scale.io import read_jsonl

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    history = run / "search" / "history.jsonl"
    lines = history.read_text().splitlines()
    history.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])  # trial 2 torn mid-write
    for rel in ("sampler.json", "summary.json"):
        (run / rel).unlink()
    shutil.rmtree(run / "final")
    for _ in range(2):  # the continued run, then a rerun of the finished folder
        res = cli("run", *tiny_overrides(digits_shards, run))
        assert res.returncode == 0, res.stderr[-2000:]
    text = history.read_text()
    assert text.endswith("\n") and [r["trial"] for r in read_jsonl(history)] == [0, 1, 2]
    assert all(line.startswith("{") and line.endswith("}") for line in text.splitlines())


def test_a_different_first_image_is_the_outlier_not_the_rule(tmp_path, digits_shards):
    samples = [{"png": _png(16 if i == 0 else 8, i), "cls": str(i % 10).encode()} for i in range(50)]
    c = Ctx(tmp_path, digits_shards, tmp_path)
    train = c.tar("first-000000.tar", samples)
    res = cli("index", *c.with_split("train", str(train))[1:])
    assert res.returncode == 0, res.stderr[-2000:]
    import json

    errors = json.loads((c.watch / "data_errors.json").read_text())
    assert errors["count"] == 1 and errors["errors"][0]["key"] == "000000" and "(1, 16, 16)" in errors["errors"][0]["reason"]


def test_tiny_val_split_warns(tmp_path, digits_shards):
    c = Ctx(tmp_path, digits_shards, tmp_path)
    val = c.tar("one-000000.tar", [{"png": _png(8), "cls": b"3"}])
    res = cli("index", *c.with_split("val", str(val))[1:])
    assert res.returncode == 0, res.stderr[-2000:]
    assert any(line.startswith("data.val: only 1 example") for line in res.stderr.splitlines()), res.stderr


def test_model_kwargs_as_yaml_on_the_command_line(tmp_path, digits_shards):
    import yaml

    c = Ctx(tmp_path, digits_shards, tmp_path)
    res = cli("index", *c.run("model.kwargs={width: 8, stem_stride: 2}")[1:])
    assert res.returncode == 0, res.stderr[-2000:]
    saved = yaml.safe_load((c.watch / "config.yaml").read_text())
    assert saved["model"]["kwargs"] == {"width": 8, "stem_stride": 2}


def test_streaming_counts_each_bad_sample_once(tmp_path):
    """Training passes meet a bad sample every pass; the features pass records it once, whatever came before."""
    from accelerate import Accelerator

    from swift_scale.data.shards import build_index
    from swift_scale.data.stream import StreamingSplit, StreamOptions
    from swift_scale.features.extract import extract_features
    from swift_scale.features.store import FeatureStore
    from swift_scale.train.models import create_model
    from swift_scale.train.tasks import CLASSIFICATION

    path = tmp_path / "c-000000.tar"
    corrupt_shard(path)
    index = build_index([str(path)])
    split = StreamingSplit(index, StreamOptions(num_classes=10, on_error="skip", sample_shape=(1, 4, 4)))
    for pass_ in range(3):
        list(split.loader(split.plan(None, pass_), pass_, 0, 1, 2))
    acc = Accelerator(cpu=True)
    model = create_model("swift_cnn", 10, 1, width=4)
    extract_features(acc, model, split, tmp_path / "store", index.offsets, index.counts, CLASSIFICATION,
                     batch_size=4, progress=False)
    skipped = [e["id"] for info in FeatureStore(tmp_path / "store").done_info().values() for e in info["skipped"]]
    assert skipped == [1, 2, 3, 4]
