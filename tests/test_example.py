"""The RollingQ example: its run folder, the reported numbers against independent
recomputations (accuracy from the checkpoint, attention–quality correlation from a
hand-written fusion attention, paired tests from scipy on the per-run table), resume, and the
command line."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import attnprobe as ap
from attnprobe.app import cli, example
from attnprobe.app.example import FIGURES
from attnprobe.training import load_checkpoint

TINY = example.ExampleConfig(seeds=2, epochs=2, train_samples=256, dim=16)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("example")
    example.run(out, TINY, progress=False, log=lambda _: None)
    return out


def test_run_folder_has_metrics_summary_and_figures(run_dir: Path) -> None:
    for method in example.METHODS:
        for seed in range(2):
            folder = run_dir / "runs" / f"{method}-seed{seed}"
            for name in ("metrics.csv", "sweep.csv", "checkpoint.pt", "done.json"):
                assert (folder / name).exists(), folder / name
            metrics = pd.read_csv(folder / "metrics.csv")
            assert list(metrics["epoch"]) == [0, 1]
    for name in ("runs.csv", "summary.csv", "paired.csv", "summary.md", "config.json"):
        assert (run_dir / name).exists()
    figures = sorted(p.name for p in (run_dir / "figures").glob("*.png"))
    assert figures == sorted(FIGURES)
    runs = pd.read_csv(run_dir / "runs.csv")
    assert len(runs) == 2 * len(example.METHODS)
    assert runs[runs["method"] == "concat"]["attention_quality_r"].isna().all()
    rq = pd.read_csv(run_dir / "runs" / "rollingq-seed0" / "metrics.csv")
    assert list(rq["rollingq_num_rotations"]) == [1, 1]  # the reference's one rotation


def test_accuracy_matches_the_checkpoint_on_the_test_split(run_dir: Path) -> None:
    runs = pd.read_csv(run_dir / "runs.csv").set_index(["method", "seed"])
    _, _, test = example._splits(TINY, 1)
    for method in example.METHODS:
        model = example._model(TINY, method, test, 1)
        if method.startswith("rollingq"):
            ap.RollingQ(TINY.dim, modalities=test.modalities).attach(model, "fusion")
        state = load_checkpoint(run_dir / "runs" / f"{method}-seed1" / "checkpoint.pt")
        model.load_state_dict(state["model"])
        model.eval()
        with torch.no_grad():
            logits = model(*test.inputs.values()).logits
        accuracy = float((logits.argmax(-1) == test.targets).double().mean())
        assert accuracy == pytest.approx(runs.loc[(method, 1), "accuracy"], abs=1e-12)


def test_attention_quality_correlation_matches_hand_written_attention(run_dir: Path) -> None:
    """Shares of the fusion CLS from softmax(q·kᵀ/√d) written out by hand on the encoder
    outputs, on the same corrupted test sets; Pearson r from scipy."""
    _, _, test = example._splits(TINY, 0)
    model = example._model(TINY, "vanilla", test, 0)
    model.load_state_dict(load_checkpoint(run_dir / "runs/vanilla-seed0/checkpoint.pt")["model"])
    model.eval()
    fusion = model.fusion
    sets = example._corrupted_sets(test, TINY.levels, 0, "mix")
    expected, noise = {}, {}
    for m in test.modalities:
        share, quality = [], []
        for level in TINY.levels:
            data = sets[(m, level)]
            with torch.no_grad():
                tokens = torch.cat(
                    [model.encoders[k](x) for k, x in data.inputs.items()], dim=1
                )  # (N, L, d)
                cls = fusion.cls.expand(len(data), 1, -1)
                x = torch.cat([cls, tokens], dim=1).double()  # (N, 1+L, d)
                q = x[:, :1] @ fusion.q_proj.weight.double().T + fusion.q_proj.bias.double()
                k = x @ fusion.k_proj.weight.double().T + fusion.k_proj.bias.double()
                attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(TINY.dim), -1)[:, 0]
            # fusion tokens: [fusion CLS, a's CLS + tokens, b's CLS + tokens]
            bounds = np.cumsum([1] + [test.lengths[g] + 1 for g in test.modalities])
            mass = {
                g: attn[:, bounds[i] : bounds[i + 1]].sum(-1)  # (N,)
                for i, g in enumerate(test.modalities)
            }
            share.append((mass[m] / sum(mass.values())).numpy())
            quality.append(np.full(len(data), 1.0 - level))
            if level == 1.0:  # the paper's headline test: m is pure noise at its scale
                noise[m] = float(share[-1].mean())
        expected[m] = stats.pearsonr(np.concatenate(quality), np.concatenate(share)).statistic
    scores = pd.read_csv(run_dir / "runs/vanilla-seed0/adaptability.csv")
    scores = scores[(scores["checkpoint"] == "last") & (scores["protocol"] == "mix")]
    scores = scores.set_index("corrupted")
    runs = pd.read_csv(run_dir / "runs.csv").set_index(["method", "seed"])
    for m in test.modalities:
        assert scores.loc[m, "pearson_r"] == pytest.approx(expected[m], abs=1e-5)
        assert runs.loc[("vanilla", 0), f"share_noise_{m}"] == pytest.approx(noise[m], abs=1e-6)


def test_pure_noise_sets_are_noise_at_the_input_scale() -> None:
    """At λ = 1 the mixing protocol leaves nothing of the input: ε·σ_x, per sample."""
    _, _, test = example._splits(TINY, 0)
    m = test.modalities[0]
    noisy = example._corrupted_sets(test, (0.0, 1.0), 0, "mix")[(m, 1.0)].inputs[m]
    clean = test.inputs[m]
    corr = np.corrcoef(noisy.flatten().numpy(), clean.flatten().numpy())[0, 1]
    assert abs(corr) < 0.02
    ratio = noisy.flatten(1).std(1) / clean.flatten(1).std(1)  # (N,) σ of ε·σ_x over σ_x
    assert float((ratio - 1).abs().median()) < 0.1


def test_selected_and_unimodal_numbers_match_the_saved_weights(run_dir: Path) -> None:
    """The validation-selected model (best.pt) and the encoders' probe heads, recomputed by
    hand on the clean test split."""
    runs = pd.read_csv(run_dir / "runs.csv").set_index(["method", "seed"])
    _, _, test = example._splits(TINY, 1)
    for method in ("vanilla", "concat"):
        folder = run_dir / "runs" / f"{method}-seed1"
        done = json.loads((folder / "done.json").read_text())
        best = torch.load(folder / "best.pt", weights_only=True)
        assert done["selected_epoch"] == best["epoch"]
        model = example._model(TINY, method, test, 1)
        model.load_state_dict(best["model"])
        model.eval()
        with torch.no_grad():
            out = model(*test.inputs.values())
        accuracy = float((out.logits.argmax(-1) == test.targets).double().mean())
        assert runs.loc[(method, 1), "accuracy_selected"] == pytest.approx(accuracy, abs=1e-12)
        last = load_checkpoint(folder / "checkpoint.pt")["model"]
        model.load_state_dict(last)
        with torch.no_grad():
            heads = model(*test.inputs.values()).unimodal_logits
        for m, logits in heads.items():
            hand = float((logits.argmax(-1) == test.targets).double().mean())
            got = runs.loc[(method, 1), f"unimodal_accuracy_{m}"]
            assert got == pytest.approx(hand, abs=1e-12)
    sweep = pd.read_csv(run_dir / "runs/vanilla-seed1/sweep.csv")
    assert set(sweep["protocol"]) == {"mix", "add"}
    assert set(sweep["checkpoint"]) == {"last", "selected"}


def test_finetune_regime_pretrains_each_encoder_once_per_seed(tmp_path: Path) -> None:
    cfg = example.ExampleConfig(
        seeds=1,
        epochs=1,
        train_samples=128,
        eval_samples=128,
        dim=16,
        regime="finetune",
        pretrain_epochs=2,
        methods=("vanilla", "concat"),
        levels=(0.0, 1.0),
        protocols=("mix",),
    )
    example.run(tmp_path, cfg, progress=False)
    states = torch.load(tmp_path / "pretrained" / "seed0.pt", weights_only=True)
    train, _, _ = example._splits(cfg, 0)
    fresh = example._model(cfg, "vanilla", train, 0)
    for m in train.modalities:
        pre = pd.read_csv(tmp_path / "pretrained" / f"seed0-{m}" / "metrics.csv")
        assert list(pre["epoch"]) == [0, 1] and pre["lr"].max() <= cfg.lr
        moved = [
            not torch.equal(v, fresh.encoders[m].state_dict()[k]) for k, v in states[m].items()
        ]
        assert any(moved)  # pre-training changed the encoder
    for method in cfg.methods:
        metrics = pd.read_csv(tmp_path / "runs" / f"{method}-seed0" / "metrics.csv")
        assert 0 < metrics["lr"].max() <= cfg.finetune_lr  # fine-tuned at the low rate
    # both methods started from the same pre-trained encoders: a model built with them holds
    # exactly the file's weights
    built = example._model(cfg, "concat", train, 0, states)
    for m in train.modalities:
        for k, v in built.encoders[m].state_dict().items():
            assert torch.equal(v, states[m][k])


def test_summary_and_paired_statistics_match_scipy(run_dir: Path) -> None:
    runs = pd.read_csv(run_dir / "runs.csv")
    summary = pd.read_csv(run_dir / "summary.csv").set_index(["method", "metric"])
    paired = pd.read_csv(run_dir / "paired.csv").set_index(["comparison", "metric"])
    for metric in ("accuracy", "accuracy_corrupted", "attention_quality_r", "key_gap"):
        a = runs[runs["method"] == "rollingq"].sort_values("seed")[metric].to_numpy()
        b = runs[runs["method"] == "vanilla"].sort_values("seed")[metric].to_numpy()
        assert summary.loc[("rollingq", metric), "mean"] == pytest.approx(a.mean())
        assert summary.loc[("rollingq", metric), "std"] == pytest.approx(a.std(ddof=1))
        row = paired.loc[("rollingq - vanilla", metric)]
        assert row["mean_difference"] == pytest.approx((a - b).mean())
        if np.ptp(a - b) > 0:
            assert row["t_test_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert "| clean test accuracy |" in (run_dir / "summary.md").read_text()


def test_rotation_pictures_hold_the_query_before_and_after(run_dir: Path) -> None:
    folder = run_dir / "runs" / "rollingq-seed0"
    before = ap.ProbeResult.load(folder / "keys_before.pt").layers[0]
    after = ap.ProbeResult.load(folder / "keys_after.pt").layers[0]
    rotation = load_checkpoint(folder / "checkpoint.pt")["model"]["fusion.rollingq.rotation"]
    q_before = before.query_mean[0, 0].double()  # (D,) the CLS query before the rotation
    q_after = after.query_mean[0, 0].double()
    torch.testing.assert_close(q_after, rotation[0].double() @ q_before, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(before.key_mean, after.key_mean)  # keys untouched


def test_rerun_skips_finished_runs_and_refuses_other_settings(run_dir: Path) -> None:
    stamp = (run_dir / "runs/vanilla-seed0/metrics.csv").stat().st_mtime_ns
    messages: list[str] = []
    example.run(run_dir, TINY, progress=False, log=messages.append)
    assert messages == []  # nothing retrained
    assert (run_dir / "runs/vanilla-seed0/metrics.csv").stat().st_mtime_ns == stamp
    with pytest.raises(ap.AttnProbeError, match="other settings"):
        example.run(run_dir, example.ExampleConfig(seeds=3), progress=False)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["seeds"] == 2


def test_report_rebuilds_from_files(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "figures")
    (copy / "summary.csv").unlink()
    summary = example.report(copy)
    assert len(list((copy / "figures").glob("*.png"))) == len(FIGURES)
    pd.testing.assert_frame_equal(summary, pd.read_csv(run_dir / "summary.csv"))
    with pytest.raises(ap.AttnProbeError, match="not a folder"):
        example.report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ap.AttnProbeError, match="no runs"):
        example.report(tmp_path / "empty")


def test_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = []

    def quick(
        dataset: str = "synthetic", seeds: int = 2, regime: str = "scratch"
    ) -> example.ExampleConfig:
        calls.append((dataset, seeds, regime))
        return example.ExampleConfig(
            dataset=dataset,
            seeds=seeds,
            epochs=1,
            train_samples=128,
            eval_samples=128,
            dim=16,
            methods=("vanilla", "concat"),
            regime=regime,
            pretrain_epochs=1,
        )

    monkeypatch.setattr(example.ExampleConfig, "quick", staticmethod(quick))
    out = tmp_path / "cli"
    args = ["example", "rollingq", "--quick", "--seeds", "1", "--out", str(out)]
    code = cli.main([*args, "--no-progress", "--regime", "finetune", "--threads", "1"])
    assert code == 0 and calls == [("synthetic", 1, "finetune")]
    printed = capsys.readouterr().out
    assert "| clean test accuracy |" in printed and str(out) in printed
    assert "[1/2] synthetic (finetune)" in printed and "so far" in printed
    assert (out / "pretrained" / "seed0.pt").exists()
    code = cli.main(["example", "rollingq", "--seeds", "0", "--out", str(tmp_path / "x")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seeds >= 1" in err[0]


def test_report_command_rebuilds_an_example_folder(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rebuilt"
    assert cli.main(["report", str(run_dir), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "example folder: 8 runs read" in printed and "| clean test accuracy |" in printed
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == sorted(FIGURES)
    for name in ("runs.csv", "summary.csv", "paired.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(out / name), pd.read_csv(run_dir / name))
    # a corrupt run record is named on one line, exit status 2
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "runs" / "concat-seed1" / "done.json").write_text("{truncated")
    assert cli.main(["report", str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "concat-seed1/done.json is corrupt" in err[0], err
    # so is a folder under runs/ that is no example run
    (copy / "runs" / "concat-seed1" / "done.json").unlink()
    (copy / "runs" / "mine-seed0").mkdir()
    assert cli.main(["report", str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mine-seed0 is not an example run" in err[0], err
