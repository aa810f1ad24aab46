"""The pipeline in-process (no subprocess): the phase order, the search's first points, the final modes, the
best-val checkpoint, the separate θ0 and start checkpoints."""

import json

import numpy as np
import pytest
import torch

from swift_scale.config import load_config
from swift_scale.io import read_jsonl
from swift_scale.pipeline import Pipeline
from swift_scale.sampler.swift import SwiftSampler, uniform_theta

from .conftest import ROOT, tiny_overrides


def _pipe(shards, out, *extra):
    return Pipeline(load_config(None, tiny_overrides(shards, out, *extra)))


@pytest.fixture(scope="module")
def finished(digits_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipe") / "run"
    pipe = _pipe(digits_shards, out, "search.trials=8", "search.init_steps=[0.2, 0.4]", "train.epochs=3")
    summary = pipe.run()
    pipe.acc.end_training()
    return out, summary


def test_search_starts_with_uniform_then_the_step_samplers(finished, digits_shards):
    out, _ = finished
    hist = read_jsonl(out / "search" / "history.jsonl")
    assert [h["proposed_by"] for h in hist[:4]] == ["first", "initial", "initial", "sobol"]
    np.testing.assert_array_equal(hist[0]["params"], uniform_theta(4))
    store = _pipe(digits_shards, out, "search.trials=8", "search.init_steps=[0.2, 0.4]", "train.epochs=3").features()
    cols = {n: np.ascontiguousarray(store.column(n)) for n in store.feature_names}
    names = ["dyn_loss", "renormed_entropy"]  # the default sampler features
    quantiles = {n: store.quantiles(n) for n in names}
    for h, q in zip(hist[1:3], (0.2, 0.4)):
        sampler = SwiftSampler.from_theta(h["params"], names, quantiles, "cgf").fit(cols)
        probs = sampler.probs(cols) * len(cols["dyn_loss"])
        top = cols["dyn_loss"] > np.quantile(cols["dyn_loss"], 1 - q)
        assert probs[top].mean() < 0.1 < probs[~top].mean()  # the top q of the mean training loss: (almost) never drawn


def test_with_the_margin_first_the_step_first_points_drop_its_low_end(finished, digits_shards):
    from swift_scale.search.trials import SamplerSearch

    out, _ = finished
    pipe = _pipe(digits_shards, out, "search.init_steps=[0.2, 0.4]", "sampler.features=[aum, renormed_entropy]")
    store = pipe.features()
    feats = pipe.train_features(store)
    search = SamplerSearch(pipe.cfg, None, store, feats)  # type: ignore[arg-type]
    for theta, q in zip(search.initial_points()[1:], (0.2, 0.4)):
        probs = search.sampler(theta).probs(feats) * len(feats["aum"])
        low = feats["aum"] < np.quantile(feats["aum"], q)
        assert probs[low].mean() < 0.1 < probs[~low].mean()  # the lowest margins: (almost) never drawn


def test_every_training_keeps_its_best_val_checkpoint_and_the_summary_reports_both(finished):
    out, summary = finished
    for phase in ("pretrain", "final"):
        metrics = json.loads((out / phase / "metrics.json").read_text())
        best = metrics["best"]
        assert best["val"]["accuracy"] == max(r["val_accuracy"] for r in metrics["curve"])
        assert json.loads((out / phase / "best.json").read_text())["epoch"] == best["epoch"]
        assert (out / phase / "best.pt").stat().st_size > 1000
    assert summary["swift"]["checkpoint"] == "best_val"
    assert summary["swift"]["value"] == summary["swift"]["best_val"]["test_accuracy"]
    assert summary["baseline"]["best_val"]["epoch"] == json.loads((out / "pretrain" / "metrics.json").read_text())["best"]["epoch"]
    assert summary["search"]["optimism"] == pytest.approx(summary["search"]["chosen_score"]
                                                          - summary["search"]["final_val_score"])


def test_the_chosen_trial_is_the_best_that_keeps_enough_of_the_data(finished, digits_shards):
    from swift_scale.sampler.swift import kept_share
    from swift_scale.search.trials import SamplerSearch

    out, summary = finished
    pipe = _pipe(digits_shards, out)
    store = pipe.features()
    feats = pipe.train_features(store)
    search = SamplerSearch(pipe.cfg, None, store, feats)  # type: ignore[arg-type]
    ok = sorted((r for r in read_jsonl(out / "search" / "history.jsonl") if r["status"] == "ok"),
                key=lambda r: -r["score"])
    shares = [kept_share(search.sampler(r["params"]).probs(feats)) for r in ok]
    expected = next(r for r, s in zip(ok, shares) if s >= pipe.cfg.search.min_kept)
    assert summary["search"]["chosen_trial"] == expected["trial"]
    chosen = SwiftSampler.load(out / "sampler.json")
    assert chosen.info["kept"] == pytest.approx(summary["search"]["chosen_kept"], abs=1e-4)
    assert summary["search"]["chosen_kept"] == pytest.approx(kept_share(chosen.probs(feats)), abs=1e-4)
    assert summary["search"]["chosen_kept"] >= pipe.cfg.search.min_kept


def test_the_step_cut_probe_reads_a_finished_run(finished, capsys):
    """tools/bench/step_cut.py on a finished run: the chosen sampler's figures agree with summary.json, and every
    scored trial is listed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("step_cut", ROOT / "tools" / "bench" / "step_cut.py")
    step_cut = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step_cut)
    out, summary = finished
    step_cut.main([str(out)])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["round"] for x in lines] == [1]
    line = lines[0]
    assert line["chosen"]["kept"] == pytest.approx(summary["search"]["chosen_kept"], abs=1e-3)
    assert line["chosen"]["auroc"] == pytest.approx(summary["noise_detection_auroc"], abs=1e-4)
    assert line["chosen_trial"] == summary["search"]["chosen_trial"]
    ok = [r["trial"] for r in read_jsonl(out / "search" / "history.jsonl") if r["status"] == "ok"]
    assert sorted(t["trial"] for t in line["trials"]) == sorted(ok)
    assert 0.5 <= line["best_cut"]["balanced_accuracy"] <= 1 and 0 < line["best_cut"]["kept"] < 1


def test_theta0_and_start_come_from_the_chosen_epochs(finished):
    out, _ = finished
    metrics = json.loads((out / "pretrain" / "metrics.json").read_text())
    assert metrics["theta0_epoch"] == metrics["best"]["epoch"] and metrics["start_epoch"] == 3
    for name, src in (("theta0", "best"), ("start", "last")):
        a = torch.load(out / "pretrain" / f"{name}.pt", weights_only=True)
        b = torch.load(out / "pretrain" / f"{src}.pt", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_store_holds_the_training_dynamics(finished):
    out, _ = finished
    meta = json.loads((out / "features" / "meta.json").read_text())
    assert meta["feature_names"] == ["loss", "renormed_entropy", "grad_proxy", "dyn_loss", "aum", "wrong_frac"]
    assert set(meta["quantiles"]) == set(meta["feature_names"])


def test_dynamics_until_the_best_val_epoch(digits_shards, tmp_path):
    from swift_scale.features.dynamics import dynamics_features

    out = tmp_path / "r"
    pipe = _pipe(digits_shards, out, "features.dynamics_until=best", "train.epochs=4")
    pipe.run(until="features")
    store = pipe.features()
    pipe.acc.end_training()
    best = json.loads((out / "pretrain" / "metrics.json").read_text())["best"]["epoch"]
    kept = sorted(int(p.name[11:17]) for p in (out / "pretrain" / "dynamics").iterdir())
    assert kept == sorted({best, 4})
    expect = dynamics_features(out / "pretrain" / "dynamics", store.num_examples, best, 1)
    np.testing.assert_array_equal(np.asarray(store.column("dyn_loss")), expect["dyn_loss"])


@pytest.mark.parametrize("mode,epochs", [("finetune", 3), ("best_trial", 1)])
def test_final_modes(finished, tmp_path, mode, epochs, digits_shards):
    import shutil

    out, _ = finished
    dst = tmp_path / "run"
    shutil.copytree(out, dst, ignore=shutil.ignore_patterns("final", "report", "summary.json"))
    pipe = _pipe(digits_shards, dst, "search.trials=8", "search.init_steps=[0.2, 0.4]", "train.epochs=3",
                 f"train.final_mode={mode}", "run.allow_changed_config=true")
    summary = pipe.run(until="final")
    pipe.acc.end_training()
    curve = json.loads((dst / "final" / "metrics.json").read_text())["curve"]
    assert len(curve) == epochs and summary["swift"]["final_mode"] == mode


def test_paper_protocol_uses_one_theta0(digits_shards, tmp_path):
    pipe = _pipe(digits_shards, tmp_path / "r", "search.theta0_epoch=1", "train.epochs=2")
    pipe.run(until="pretrain")
    pipe.acc.end_training()
    metrics = json.loads((tmp_path / "r" / "pretrain" / "metrics.json").read_text())
    assert metrics["theta0_epoch"] == metrics["start_epoch"] == 1
    assert (tmp_path / "r" / "pretrain" / "epoch1.pt").exists()


def test_pair_flip_noise_is_exact_and_recorded(digits_shards, tmp_path):
    pipe = _pipe(digits_shards, tmp_path / "r", "data.noise_kind=pair", "data.noise_rate=0.3")
    pipe.prepare_dir()
    noise = json.loads((tmp_path / "r" / "noise.json").read_text())
    n = len(pipe.data.train)
    assert noise["kind"] == "pair" and noise["num_flipped"] == round(0.3 * n) == len(set(noise["flipped_ids"]))
    clean, noisy = np.array(noise["clean_labels"]), np.array(noise["noisy_labels"])
    assert np.array_equal(noisy, (clean + 1) % 10)
    labels = pipe.data.train.labels.numpy()
    assert np.array_equal(labels[noise["flipped_ids"]], noisy)
    pipe.acc.end_training()


def test_lm_model_can_be_built_before_any_phase(tmp_path):
    text = {s: str(ROOT / "tests" / "fixtures" / f"kjv_{s}.txt") for s in ("train", "val", "test")}
    cfg = load_config(None, tiny_overrides(text, tmp_path / "lm", "data.task=lm", "model.name=gpt2",
                                           "model.kwargs.n_layer=1", "model.kwargs.n_embd=16",
                                           "model.kwargs.n_head=2", "data.seq_len=32", "data.vocab_size=300"))
    pipe = Pipeline(cfg)
    model = pipe.new_model()  # used to fail: the eos id was only set by the LM data loader
    assert model.config.vocab_size == pipe.data.num_outputs and model.config.eos_token_id == pipe.data.eos_id
    assert not (tmp_path / "lm").exists()  # reading the data writes nothing


def test_phase_lines_name_the_time_and_the_headline_figure():
    from swift_scale.report.progress import phase_line

    metrics = {"val": {"accuracy": 0.5}, "best": {"epoch": 3, "val": {"accuracy": 0.9}}}
    assert phase_line("pretrain", 7.25, metrics, "accuracy") == \
        "pretrain      7.2 s  val accuracy 50.00% at the last epoch, 90.00% at its best epoch 3"
    history = [{"status": "ok"}, {"status": "stopped"}, {"status": "stopped"}, {"status": "failed"}]
    line = phase_line("search", 60.0, {"trial": 0, "score": 0.9666}, "accuracy", history)
    assert line.endswith("4 trials (2 stopped early, 1 failed), chosen trial 0: val 96.66%")
    assert "log-perplexity" in phase_line("search", 1.0, {"trial": 0, "score": -4.5}, "perplexity", history[:1])


def test_a_second_round_scores_the_features_with_the_first_final_model(finished, tmp_path, digits_shards):
    """search.rounds=2 on a finished run: round2/ gets the first final model as θ0 and the same start, searches
    on θ0-style features, and the summary keeps both rounds and takes the one with the higher final val."""
    import shutil

    out, first = finished
    dst = tmp_path / "run"
    shutil.copytree(out, dst)
    extra = ("search.trials=8", "search.init_steps=[0.2, 0.4]", "train.epochs=3", "search.round_scoring=final",
             "search.rounds=2", "run.allow_changed_config=true")
    pipe = _pipe(digits_shards, dst, *extra)
    summary = pipe.run()
    pipe.acc.end_training()
    r2 = dst / "round2"
    for name, src in (("theta0", dst / "final" / "best.pt"), ("start", dst / "pretrain" / "start.pt")):
        a, b = (torch.load(p, weights_only=True) for p in (r2 / "pretrain" / f"{name}.pt", src))
        assert all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((r2 / "features" / "meta.json").read_text())
    assert meta["feature_names"] == ["loss", "renormed_entropy", "grad_proxy"]  # no dynamics in round 2
    assert SwiftSampler.load(r2 / "sampler.json").feature_names == ("loss", "renormed_entropy")
    assert len(read_jsonl(r2 / "search" / "history.jsonl")) == 8
    second = json.loads((r2 / "summary.json").read_text())
    assert [e["round"] for e in summary["rounds"]] == [1, 2]
    vals = [json.loads((d / "final" / "metrics.json").read_text())["best"]["val"]["accuracy"] for d in (dst, r2)]
    assert [e["val_score"] for e in summary["rounds"]] == vals
    chosen = 1 + int(vals[1] > vals[0])
    assert summary["chosen_round"] == chosen and summary["round_scoring"] == "final"
    assert summary["swift"]["value"] == (first, second)[chosen - 1]["swift"]["value"]
    assert summary["baseline"] == first["baseline"]
    assert json.loads((dst / "summary.json").read_text())["chosen_round"] == chosen
    report = (dst / "report" / "report.md").read_text()
    assert "- round 2" in report and f"round {chosen} (kept" in report
    from swift_scale.cli import _table

    printed = _table(summary).splitlines()  # what `swift-scale run` prints
    assert [ln.split()[:2] for ln in printed[-2:]] == [["round", "1"], ["round", "2"]]
    assert "(kept)" in printed[-3 + chosen]
    # a rerun reads every round back: nothing is trained again
    stamp = (r2 / "final" / "metrics.json").stat().st_mtime_ns
    again = _pipe(digits_shards, dst, *extra).run(until="final")
    assert again["rounds"] == summary["rounds"] and (r2 / "final" / "metrics.json").stat().st_mtime_ns == stamp
    # when round 2 is kept, the summary's sampler figures are round 2's
    metrics = json.loads((dst / "final" / "metrics.json").read_text())
    metrics["best"]["val"]["accuracy"] = -1.0  # round 1 now scores lowest on val
    (dst / "final" / "metrics.json").write_text(json.dumps(metrics))
    kept_pipe, logged = _pipe(digits_shards, dst, *extra), []
    kept_pipe.tracking.log_summary = logged.append  # the trackers' headline: logged once, for the kept round
    kept = kept_pipe.run()
    assert [s["chosen_round"] for s in logged] == [2] and logged[0]["swift"]["round"] == 2
    assert kept["chosen_round"] == 2 and kept["swift"]["round"] == 2 and kept["swift"]["sampler"] == "round2/sampler.json"
    assert kept["swift"]["value"] == second["swift"]["value"] and kept["search"] == second["search"]
    assert kept["noise_detection_auroc"] == second["noise_detection_auroc"]
    # with search.round_patience=0, search.rounds=3 stops after a round that does not raise the best final val:
    # round 2 is below round 1 here
    three_rounds = (*extra[:-2], "search.rounds=3", "run.allow_changed_config=true", "search.round_patience=0")
    metrics["best"]["val"]["accuracy"] = 2.0
    (dst / "final" / "metrics.json").write_text(json.dumps(metrics))
    three = _pipe(digits_shards, dst, *three_rounds).run(until="final")
    assert [e["round"] for e in three["rounds"]] == [1, 2] and three["chosen_round"] == 1
    assert not (dst / "round3").exists()
    # ... unless search.round_patience lets one more round try: round 3's θ0 is round 2's final model (the last)
    patient = (*three_rounds[:-1], "search.round_patience=1")
    three = _pipe(digits_shards, dst, *patient).run(until="final")
    assert [e["round"] for e in three["rounds"]] == [1, 2, 3] and three["chosen_round"] == 1
    a, b = (torch.load(p, weights_only=True) for p in (dst / "round3" / "pretrain" / "theta0.pt", r2 / "final" / "best.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # two rounds in a row without a new best exhaust a patience of 1: no round 4
    four = _pipe(digits_shards, dst, *extra[:-2], "search.rounds=4", *patient[-2:]).run(until="final")
    assert [e["round"] for e in four["rounds"]] == [1, 2, 3] and not (dst / "round4").exists()
    # ... and with no patience the rounds go on after a round that raises the best final val
    metrics["best"]["val"]["accuracy"] = -1.0
    (dst / "final" / "metrics.json").write_text(json.dumps(metrics))
    three = _pipe(digits_shards, dst, *three_rounds).run(until="final")
    assert [e["round"] for e in three["rounds"]] == [1, 2, 3]


def test_crossfit_rounds_score_each_example_with_the_fold_model_that_never_trained_on_it(
        finished, tmp_path, digits_shards, monkeypatch):
    """search.round_scoring=crossfit: round 2 trains one model per fold under round 1's sampler with that fold's
    examples left out, and each example's round-2 features are those of the model that never trained on it."""
    import shutil

    from swift_scale.features.extract import extract_features
    from swift_scale.selection import fold_of
    from swift_scale.train.trainer import Trainer

    out, _ = finished
    dst = tmp_path / "run"
    shutil.copytree(out, dst)
    from swift_scale.data.splits import Split

    trained, drawn, now = {}, {}, []
    real, real_epoch = Trainer.train_to, Split.epoch

    def spy(self, where, probs, **kw):
        trained[where.name] = None if probs is None else np.array(probs)
        now.append(where.name)
        try:
            return real(self, where, probs, **kw)
        finally:
            now.pop()

    def spy_epoch(self, *args, **kw):  # the ids each training really draws
        steps, batches = real_epoch(self, *args, **kw)
        seen = drawn.setdefault(now[-1] if now else "", [])
        return steps, ((x, y, seen.extend(ids.tolist()) or ids) for x, y, ids in batches)

    monkeypatch.setattr(Trainer, "train_to", spy)
    monkeypatch.setattr(Split, "epoch", spy_epoch)
    extra = ("search.trials=8", "search.init_steps=[0.2, 0.4]", "train.epochs=3", "search.rounds=2",
             "search.round_scoring=crossfit", "run.allow_changed_config=true")
    pipe = _pipe(digits_shards, dst, *extra)
    assert pipe.run(until="final")["round_scoring"] == "crossfit"
    r2, n = dst / "round2", len(pipe.data.train)
    fold = fold_of(np.arange(n), 2, pipe.cfg.seed)
    assert 0.35 < fold.mean() < 0.65
    p1 = SwiftSampler.load(dst / "sampler.json").probs(pipe.train_features())
    for k in range(2):  # fold k's model drew round 1's sampler on the other fold only
        np.testing.assert_array_equal(trained[f"fold{k}"], np.where(fold == k, 0.0, p1))
        ids = np.array(drawn[f"fold{k}"])
        assert len(ids) > 100 and not (fold[ids] == k).any() and (p1[ids] > 0).all()
        assert (r2 / "crossfit" / f"fold{k}" / "best.pt").is_file()
    store = pipe.round_pipeline(2).train_features()
    idx = pipe.data.index["train"]
    for k in range(2):
        model = pipe.new_model(pipe.folder.load_weights(f"round2/crossfit/fold{k}/best.pt"))
        alone = extract_features(pipe.acc, model, pipe.data.train, tmp_path / f"alone{k}", idx.offsets, idx.counts,
                                 pipe.task, progress=False)
        for name in ("loss", "renormed_entropy", "grad_proxy"):
            np.testing.assert_array_equal(store[name][fold == k], alone.column(name)[fold == k])
    assert "crossfit" in json.loads((r2 / "seconds.json").read_text())
    # a rerun reads the fold models back
    stamp = (r2 / "crossfit" / "fold1" / "metrics.json").stat().st_mtime_ns
    trained.clear()
    _pipe(digits_shards, dst, *extra).run(until="final")
    pipe.acc.end_training()
    assert not trained and (r2 / "crossfit" / "fold1" / "metrics.json").stat().st_mtime_ns == stamp
