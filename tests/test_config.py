from pathlib import Path

import pytest

from swift_scale.config import Config, ConfigError, config_to_dict, load_config

from .conftest import ROOT, cli, tiny_overrides

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_starts_with_its_command(path: Path):
    cfg = load_config(path)
    assert isinstance(cfg, Config) and cfg.data.train
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and ("swift-scale" in first or "swift_scale.cli" in first) and str(path.relative_to(ROOT)) in first


def test_demo_resource_loads():
    from importlib import resources

    import yaml

    base = yaml.safe_load(resources.files("swift_scale").joinpath("resources/demo.yaml").read_text())
    cfg = load_config(None, ["data.train=a", "data.val=b", "data.test=c"], base=base)
    assert cfg.data.noise_rate == 0.4 and cfg.search.trials == 16 and cfg.search.rounds == 2


def test_overrides_and_types():
    cfg = load_config(None, ["data.train=a", "data.val=b", "data.test=c", "train.epochs=7", "train.lr=1e-4",
                             "train.cpu=true", "sampler.features=[loss, grad_proxy]", "run.out_dir=/x"])
    assert cfg.train.epochs == 7 and cfg.train.lr == 1e-4 and cfg.train.cpu is True
    assert cfg.sampler.features == ["loss", "grad_proxy"] and str(cfg.run_dir()) == "/x"
    assert config_to_dict(cfg)["train"]["epochs"] == 7


def test_model_kwargs_from_yaml_and_cli(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: swift_cnn\n  kwargs: {width: 8, drop_rate: 0.1}\n")
    cfg = load_config(path, ["data.train=a", "data.val=b", "data.test=c", "model.kwargs.stem_stride=2"])
    assert cfg.model.kwargs == {"width": 8, "drop_rate": 0.1, "stem_stride": 2}
    from swift_scale.train.models import create_model

    model = create_model(cfg.model.name, 10, 1, **cfg.model.kwargs)
    assert model.head.in_features == 32 and model.features[0][0].stride == (2, 2)
    with pytest.raises(ValueError, match="model.kwargs"):
        create_model("resnet18", 10, 1, width=3)


@pytest.mark.parametrize("override,field", [
    ("train.epoch=3", "train.epoch"),
    ("train.epochs=-1", "train.epochs"),
    ("train.epochs=abc", "train.epochs"),
    ("train.epochs=2.5", "train.epochs"),
    ("train.lr=0", "train.lr"),
    ("train.cpu=maybe", "train.cpu"),
    ("train.mixed_precision=fp8", "train.mixed_precision"),
    ("data.noise_rate=1.5", "data.noise_rate"),
    ("search.trials=0", "search.trials"),
    ("search.strategy=grid", "search.strategy"),
    ("search.theta0_epoch=99", "search.theta0_epoch"),
    ("search.rounds=0", "search.rounds"),
    ("search.round_patience=-1", "search.round_patience"),
    ("search.min_kept=1", "search.min_kept"),
    ("search.init_band=0.5", "search.init_band"),
    ("search.init_band=-0.1", "search.init_band"),
    ("search.round_scoring=oracle", "search.round_scoring"),
    ("data.draw=sometimes", "data.draw"),
    ("search.crossfit_folds=1", "search.crossfit_folds"),
    ("sampler.transform=log", "sampler.transform"),
    ("sampler.segments=0", "sampler.segments"),
    ("train.schedule=linear", "train.schedule"),
    ("model.kwargs=3", "model.kwargs"),
    ("sampler.features=[loss]", "sampler.features"),
    ("model.in_chans=2", "model.in_chans"),
    ("nosuch.key=1", "nosuch.key"),
    ("train=3", "train"),
    ("seed", "seed"),
])
def test_invalid_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.train=a", "data.val=b", "data.test=c", override])
    assert str(e.value).startswith(field)
    assert "\n" not in str(e.value)


def test_later_rounds_need_features_that_stay_two():
    base = ["data.train=a", "data.val=b", "data.test=c", "search.rounds=2"]
    assert load_config(None, base).search.rounds == 2
    with pytest.raises(ConfigError, match=r"^search.rounds: .*at most one of dyn_loss"):
        load_config(None, [*base, "sampler.features=[dyn_loss, aum]"])


def test_unknown_key_suggests():
    with pytest.raises(ConfigError, match="did you mean train.epochs"):
        load_config(None, ["data.train=a", "data.val=b", "data.test=c", "train.epoch=3"])


def test_cli_missing_config_file(tmp_path, main_cli):
    res = main_cli("run", "--config", tmp_path / "nope.yaml")
    assert res.returncode == 2 and "config file not found" in res.stderr


def test_cli_bad_yaml(tmp_path, main_cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    res = main_cli("run", "--config", bad)
    assert res.returncode == 2 and "not valid YAML" in res.stderr


def test_cli_bad_sampler_file(tmp_path, main_cli):
    bad = tmp_path / "sampler.json"
    bad.write_text('{"format": "swift_scale.sampler", "version": 1}')
    res = main_cli("inspect", bad)
    assert res.returncode == 2 and "sampler.json" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


def test_cli_empty_val_split(tmp_path, digits_shards, main_cli):
    import webdataset as wds

    empty = tmp_path / "empty-000000.tar"
    with wds.TarWriter(str(empty)):
        pass
    args = [a if not a.startswith("data.val=") else f"data.val={empty}" for a in tiny_overrides(digits_shards, tmp_path / "r")]
    res = main_cli("run", *args)
    assert res.returncode == 2 and "data.val" in res.stderr and "empty" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_cli_corrupt_checkpoint_is_named(tmp_path, digits_shards):
    out = tmp_path / "r"
    args = tiny_overrides(digits_shards, out, "train.epochs=1", "search.trials=1")
    assert cli("run", *args).returncode == 0
    (out / "pretrain" / "metrics.json").unlink()  # force the pretrain phase to resume from its checkpoint
    (out / "pretrain" / "ckpt" / "state.json").write_text("{broken")
    res = cli("run", *args)
    assert res.returncode == 2 and "ckpt/state.json" in res.stderr and "to redo that phase" in res.stderr


def test_crossfit_rounds_need_stored_features():
    base = ["data.train=a", "data.val=b", "data.test=c", "data.mode=streaming", "data.online=true"]
    assert load_config(None, base).data.online
    # the default (auto) cross-fits where features are stored and falls back to the final model online
    assert load_config(None, base[:3]).round_scoring() == "crossfit"
    assert load_config(None, base).round_scoring() == "final"
    assert load_config(None, [*base[:3], "search.round_scoring=final"]).round_scoring() == "final"
    with pytest.raises(ConfigError, match=r"^search.round_scoring: crossfit needs the stored features"):
        load_config(None, [*base, "search.round_scoring=crossfit"])
