"""The training wrapper: files, exact resume after SIGKILL, torchrun DDP = one process, the
checkpoint format, and the logged diagnostics against direct computations."""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import attnprobe as ap
from attnprobe._batches import mix
from attnprobe.models import ConcatFusion, LateFusionTransformer
from attnprobe.training import (
    CHECKPOINT,
    METRICS,
    TrainConfig,
    Trainer,
    _learning_rate,
    load_checkpoint,
)
from tests._train_run import toy_data

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "_train_run.py"


def make(seed: int = 0, **kwargs: Any) -> LateFusionTransformer:
    torch.manual_seed(seed)
    return LateFusionTransformer(
        {"audio": 6, "video": 8}, {"audio": 4, "video": 3}, 4, dim=16, depth=1, **kwargs
    )


def config(**kwargs: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        epochs=2, batch_size=8, lr=0.05, warmup_epochs=1, progress=False, tensorboard=False
    )
    return TrainConfig(**{**base, **kwargs})


def run(out: Path, *args: str, torchrun: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable]
    if torchrun:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*launcher, str(SCRIPT), str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def numeric(frame: pd.DataFrame) -> pd.DataFrame:
    keep = [c for c in frame.columns if not c.endswith("time_s") and frame[c].dtype != bool]
    return frame[keep].astype(float)


# -- files and contents --------------------------------------------------------------------------
def test_fit_writes_metrics_history_and_a_safe_checkpoint(tmp_path: Path) -> None:
    model = make(unimodal_heads=True)
    rq = ap.RollingQ(16, modalities=("audio", "video")).attach(model, "fusion")
    trainer = Trainer(
        model,
        toy_data(32, seed=1),
        modalities=model.fusion_layout(),
        eval_data=toy_data(16, seed=2),
        rollingq=rq,
        out_dir=tmp_path,
        config=config(),
    )
    epochs_seen: list[int] = []
    trainer.add_callback("on_epoch_end", lambda t, row: epochs_seen.append(row["epoch"]))
    metrics = trainer.fit()
    assert epochs_seen == [0, 1]
    on_disk = pd.read_csv(tmp_path / METRICS)
    pd.testing.assert_frame_equal(numeric(on_disk), numeric(metrics), check_dtype=False)
    for column in (
        "share_audio",
        "share_video",
        "air",
        "key_gap",
        "train_accuracy",
        "eval_accuracy",
        "eval_accuracy_audio_corrupted",
        "eval_accuracy_video_corrupted",
        "delta_share_audio",
        "unimodal_accuracy_audio",
        "unimodal_accuracy_video",
        "rollingq_air",
        "rollingq_num_rotations",
        "rollingq_running_vs_frozen_deg",
    ):
        assert column in metrics.columns, column
    np.testing.assert_allclose(metrics["share_audio"] + metrics["share_video"], 1.0)
    assert metrics["rollingq_num_rotations"].tolist() == [1, 1]
    state = load_checkpoint(tmp_path / CHECKPOINT)  # weights_only=True inside
    assert state["epoch"] == 2 and len(state["rows"]) == 2
    history = ap.History.load(tmp_path / "attention.csv").to_frame()
    assert sorted(history["epoch"].unique().tolist()) == [0, 1]
    # AIR and shares of the last epoch equal a direct computation from its probe result
    assert trainer.last_result is not None
    layer = trainer.last_result.layers[0]
    cos = layer.mean_cosine[0, 0].numpy()  # (Gk,) for the cls query
    groups = list(layer.key_groups)
    assert metrics["air"].iloc[-1] == pytest.approx(
        cos[groups.index("audio")] - cos[groups.index("video")], abs=1e-12
    )
    mass = layer.mass[0, 0].numpy()
    share = mass[groups.index("audio")] / (
        mass[groups.index("audio")] + mass[groups.index("video")]
    )
    assert metrics["share_audio"].iloc[-1] == pytest.approx(share, abs=1e-12)
    mu = layer.key_mean[0].numpy()
    a, v = mu[groups.index("audio")], mu[groups.index("video")]
    gap = 1 - a @ v / (np.linalg.norm(a) * np.linalg.norm(v))
    assert metrics["key_gap"].iloc[-1] == pytest.approx(gap, abs=1e-9)


def test_evaluation_matches_a_hand_written_loop() -> None:
    model = make(unimodal_heads=True)
    data, held_out = toy_data(32, seed=1), toy_data(12, seed=2)
    trainer = Trainer(
        model, data, modalities=model.fusion_layout(), eval_data=held_out, config=config(epochs=1)
    )
    row = trainer.fit().iloc[0]
    model.eval()
    with torch.no_grad():
        a = torch.stack([x[0][0] for x in held_out])
        v = torch.stack([x[0][1] for x in held_out])
        y = torch.tensor([x[1] for x in held_out])
        out = model(a, v)
        assert row["eval_accuracy"] == pytest.approx(
            float((out.logits.argmax(-1) == y).float().mean())
        )
        assert row["unimodal_accuracy_video"] == pytest.approx(
            float((out.unimodal_logits["video"].argmax(-1) == y).float().mean())
        )
        # the corrupted evaluation: per-sample noise, the paper's protocol
        noisy = []
        for i in range(len(held_out)):
            g = torch.Generator().manual_seed(mix(0, i, 2))
            noisy.append(ap.corruption.corrupt(v[i : i + 1], 0.5, g))
        out = model(a, torch.cat(noisy))
        assert row["eval_accuracy_video_corrupted"] == pytest.approx(
            float((out.logits.argmax(-1) == y).float().mean())
        )


def test_rollingq_changes_nothing_before_its_first_rotation() -> None:
    rows = []
    for with_rq in (False, True):
        model = make(seed=3)
        rq = (
            ap.RollingQ(16, modalities=("audio", "video")).attach(model, "fusion")
            if with_rq
            else None
        )
        trainer = Trainer(
            model,
            toy_data(32, seed=1),
            modalities=model.fusion_layout(),
            rollingq=rq,
            config=config(),
        )
        rows.append(numeric(trainer.fit()))
    vanilla, corrected = rows
    first = [c for c in vanilla.columns]
    pd.testing.assert_series_equal(vanilla[first].iloc[0], corrected[first].iloc[0])
    assert not np.allclose(vanilla["share_audio"].iloc[1], corrected["share_audio"].iloc[1])


@pytest.mark.parametrize(("air", "anchor"), [("last_batch", "frozen"), ("epoch", "running")])
def test_air_and_anchor_options(air: str, anchor: str) -> None:
    model = make()
    rq = ap.RollingQ(16, modalities=("audio", "video")).attach(model, "fusion")
    trainer = Trainer(
        model,
        toy_data(32, seed=1),
        modalities=model.fusion_layout(),
        rollingq=rq,
        config=config(epochs=1, air=air, anchor=anchor),
    )
    row = trainer.fit().iloc[0]
    assert row["rollingq_rotated"]
    if anchor == "running":
        assert math.isnan(row["rollingq_running_vs_frozen_deg"])
    else:  # the last batch alone: its AIR differs from the epoch's
        assert row["rollingq_air"] != pytest.approx(row["air"])


def test_learning_rate_schedule() -> None:
    assert _learning_rate(1.0, 0, 4, 20) == pytest.approx(0.25)
    assert _learning_rate(1.0, 3, 4, 20) == pytest.approx(1.0)
    assert _learning_rate(1.0, 12, 4, 20) == pytest.approx(0.5)
    assert _learning_rate(1.0, 20, 4, 20) == pytest.approx(0.0)


def test_tensorboard_scalars(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = make()
    Trainer(
        model,
        toy_data(16, seed=1),
        modalities=model.fusion_layout(),
        out_dir=tmp_path,
        config=config(tensorboard=True),
    ).fit()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("share_audio")] == pytest.approx(
        pd.read_csv(tmp_path / METRICS)["share_audio"].tolist(), abs=1e-6
    )


# -- crash safety and resume ---------------------------------------------------------------------
def test_resume_after_sigkill_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run(whole).returncode == 0
    crash = run(killed, "--kill-epoch", "2", "--kill-batch", "3")
    assert crash.returncode == -9  # SIGKILL, mid-epoch 2
    partial = pd.read_csv(killed / METRICS)
    assert partial["epoch"].tolist() == [0, 1]  # never a half-written row
    assert load_checkpoint(killed / CHECKPOINT)["epoch"] == 2
    resumed = run(killed)
    assert resumed.returncode == 0, resumed.stderr
    expected, actual = pd.read_csv(whole / METRICS), pd.read_csv(killed / METRICS)
    pd.testing.assert_frame_equal(numeric(actual), numeric(expected))
    rotation = torch.load(killed / "rotation_rank0.pt", weights_only=True)
    uninterrupted = torch.load(whole / "rotation_rank0.pt", weights_only=True)
    assert torch.equal(rotation["rotation"], uninterrupted["rotation"])


# random kill points (seeded): (epoch, batch) of 4 epochs × 8 batches
KILL_POINTS = [
    tuple(int(v) for v in point)
    for point in np.random.default_rng(2026).integers([0, 0], [4, 8], size=(3, 2))
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("whole")
    assert run(out).returncode == 0
    return out


@pytest.mark.parametrize(
    "where", [*(f"batch {e} {b}" for e, b in KILL_POINTS), "in save 2", "in save 3"]
)
def test_a_kill_at_a_random_point_loses_at_most_the_current_epoch(
    tmp_path: Path, uninterrupted: Path, where: str
) -> None:
    """SIGKILL at seeded random batches, and inside a checkpoint write (half of it in the
    temporary file): the files left are whole (rows of finished epochs only, the previous
    checkpoint), and resuming ends with the uninterrupted run's metrics, every number."""
    words = where.split()
    if words[0] == "batch":
        epoch = int(words[1])
        args = ["--kill-epoch", words[1], "--kill-batch", words[2]]
    else:
        # atomic writes: 1st the metrics file's creation, 2nd the checkpoint after epoch 0 (the
        # run dies with no checkpoint and must start over cleanly), 3rd the one after epoch 1
        # (the checkpoint of epoch 0 stays, epoch 1's row is dropped on resume)
        epoch = 1
        args = ["--kill-in-save", words[2]]
    crash = run(tmp_path, *args)
    assert crash.returncode == -9, crash.stderr
    if (tmp_path / METRICS).exists():
        rows = pd.read_csv(tmp_path / METRICS)["epoch"].tolist()
        assert rows == list(range(len(rows))) and len(rows) in (epoch, epoch + 1)
    if (tmp_path / CHECKPOINT).exists():
        assert load_checkpoint(tmp_path / CHECKPOINT)["epoch"] == epoch
    resumed = run(tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    expected, actual = pd.read_csv(uninterrupted / METRICS), pd.read_csv(tmp_path / METRICS)
    pd.testing.assert_frame_equal(numeric(actual), numeric(expected))


def test_a_corrupt_or_foreign_checkpoint_is_refused(tmp_path: Path) -> None:
    model = make()
    path = tmp_path / CHECKPOINT

    def trainer() -> Trainer:
        return Trainer(
            model,
            toy_data(16, seed=1),
            modalities=model.fusion_layout(),
            out_dir=tmp_path,
            config=config(),
        )

    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ap.AttnProbeError, match="can load safely"):
        trainer().fit()

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("arbitrary code ran",))

    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ap.AttnProbeError, match="safely"):
        trainer().fit()
    torch.save({"model": {}}, path)
    with pytest.raises(ap.AttnProbeError, match="not an attnprobe training checkpoint"):
        trainer().fit()
    other = tmp_path / "other"
    rq_model = make()
    ap.RollingQ(16, modalities=("audio", "video")).attach(rq_model, "fusion")
    Trainer(
        rq_model,
        toy_data(16, seed=1),
        modalities=rq_model.fusion_layout(),
        out_dir=other,
        config=config(epochs=1),
    ).fit()
    with pytest.raises(ap.AttnProbeError, match="does not fit this model"):
        Trainer(
            make(),
            toy_data(16, seed=1),
            modalities=model.fusion_layout(),
            out_dir=other,
            config=config(),
        ).fit()


# -- DDP ---------------------------------------------------------------------------------------
def test_torchrun_two_processes_equal_one_process(tmp_path: Path) -> None:
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert run(single, "--dropout", "0", "--batch", "8").returncode == 0
    result = run(ddp, "--dropout", "0", "--batch", "4", torchrun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = pd.read_csv(single / METRICS), pd.read_csv(ddp / METRICS)
    pd.testing.assert_frame_equal(numeric(two), numeric(one), atol=1e-5, rtol=1e-5)
    ranks = [torch.load(ddp / f"rotation_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert torch.equal(ranks[0]["rotation"], ranks[1]["rotation"])  # the same bits on each rank
    assert int(ranks[0]["num_rotations"]) == 2
    reference = torch.load(single / "rotation_rank0.pt", weights_only=True)["rotation"]
    torch.testing.assert_close(ranks[0]["rotation"], reference, atol=1e-5, rtol=1e-5)


def test_bad_setups_are_explained() -> None:
    model = make()
    data = toy_data(16, seed=1)
    with pytest.raises(ap.errors.ProbeConfigError, match="attach it first"):
        Trainer(
            model,
            data,
            modalities=model.fusion_layout(),
            rollingq=ap.RollingQ(16, modalities=("audio", "video")),
        )
    with pytest.raises(ap.errors.ModalityLayoutError):
        Trainer(model, data, modalities=model.fusion_layout(), inputs=("audio", "text"))
    with pytest.raises(ap.errors.ProbeConfigError, match="anchor"):
        Trainer(model, data, modalities=model.fusion_layout(), config=TrainConfig(anchor="fast"))  # type: ignore[arg-type]
    bad = [((torch.randn(4, 6),), "x") for _ in range(8)]
    with pytest.raises(ap.errors.ProbeConfigError, match="collating failed"):
        Trainer(model, bad, modalities=model.fusion_layout(), config=config()).fit()


def test_resuming_with_other_settings_warns(tmp_path: Path) -> None:
    model = make()
    data = toy_data(16, seed=1)
    Trainer(
        model, data, modalities=model.fusion_layout(), out_dir=tmp_path, config=config(epochs=1)
    ).fit()
    again = Trainer(
        model,
        data,
        modalities=model.fusion_layout(),
        out_dir=tmp_path,
        config=config(epochs=2, lr=0.1),
    )
    with pytest.warns(ap.AttnProbeWarning, match=r"\['epochs', 'lr'\]"):
        assert len(again.fit()) == 2


def test_sparse_evaluation_keeps_one_csv_header(tmp_path: Path) -> None:
    """With eval_every > 1 the evaluation columns appear after the first rows; the file is
    rewritten once with every column, and later rows append under that header."""
    model = make(unimodal_heads=True)
    trainer = Trainer(
        model,
        toy_data(32, seed=1),
        modalities=model.fusion_layout(),
        eval_data=toy_data(16, seed=2),
        out_dir=tmp_path,
        config=config(epochs=5, eval_every=2),
    )
    metrics = trainer.fit()
    on_disk = pd.read_csv(tmp_path / METRICS)
    assert list(on_disk.columns) == list(metrics.columns)
    assert on_disk["eval_accuracy"].notna().tolist() == [False, True, False, True, True]
    pd.testing.assert_frame_equal(numeric(on_disk), numeric(metrics), check_dtype=False)


def test_a_model_without_attention_trains_with_the_same_recipe() -> None:
    """layer=None (the concatenation baseline): same data order, evaluation columns, no
    attention columns."""
    torch.manual_seed(0)
    concat = ConcatFusion({"audio": 6, "video": 8}, {"audio": 4, "video": 3}, 4, dim=16, depth=1)
    trainer = Trainer(
        concat,
        toy_data(32, seed=1),
        modalities=None,
        layer=None,
        eval_data=toy_data(16, seed=2),
        config=config(),
    )
    metrics = trainer.fit()
    assert "eval_accuracy_audio_corrupted" in metrics and "share_audio" not in metrics
    assert trainer.history.to_frame().empty
    with pytest.raises(ap.errors.ProbeConfigError, match="layer=None"):
        Trainer(concat, toy_data(32, seed=1), modalities=None, layer="fusion")
