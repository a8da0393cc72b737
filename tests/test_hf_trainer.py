"""attnprobe's callbacks in a real HuggingFace ``transformers.Trainer`` on the CPU: the same data
order, schedule and seeds give the bundled `Trainer`'s attention columns and rotations, and the
columns reach the Trainer's log history."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import transformers

from attnprobe._batches import collate as _collate
from attnprobe._batches import mix as _mix
from attnprobe.integrations.transformers import AttnProbeCallback, RollingQCallback
from attnprobe.training import TrainConfig, Trainer, _learning_rate
from tests.test_callbacks import (
    BATCH,
    COLUMNS,
    EPOCHS,
    SEED,
    assert_same_columns,
    data,
    merged,
    model_and_corrector,
)
from tests.test_lightning import EpochOrder


class EpochLoader(torch.utils.data.DataLoader[Any]):
    """A DataLoader whose ``set_epoch`` (called by the HF Trainer) reaches its sampler."""

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)  # type: ignore[attr-defined]


class Reseed(transformers.TrainerCallback):
    """The bundled Trainer's epoch start: the data order of the epoch (also when training
    resumes within an epoch, where the Trainer's ``set_epoch`` does not reach the sampler
    behind the batches it skips) and dropout reseeded at the epoch's first step
    (``on_epoch_begin`` would be too early for that: on resuming, the Trainer restores the RNG
    state of the checkpoint after it)."""

    def __init__(self, order: EpochOrder) -> None:
        self.order = order

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.order.set_epoch(math.floor(state.epoch + 1e-6))

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        per_epoch = state.max_steps // EPOCHS
        if state.global_step % per_epoch == 0:
            torch.manual_seed(_mix(SEED, state.global_step // per_epoch, 0))


class Recipe(transformers.Trainer):
    """The bundled Trainer's batches and losses inside the HF Trainer."""

    def __init__(self, model: torch.nn.Module, items: list[Any], **kwargs: Any) -> None:
        self.items = items
        self.order = EpochOrder(len(items))
        super().__init__(model=model, **kwargs)

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        return torch.utils.data.DataLoader(
            self.items,  # type: ignore[arg-type]
            batch_size=BATCH,
            collate_fn=lambda chunk: dict(zip(("inputs", "target"), _collate(chunk), strict=True)),
            generator=torch.Generator(),  # its base seed must not draw from the global RNG
        )

    def get_train_dataloader(self) -> Any:
        return EpochLoader(
            self.items,  # type: ignore[arg-type]
            batch_size=BATCH,
            sampler=self.order,
            collate_fn=lambda chunk: dict(zip(("inputs", "target"), _collate(chunk), strict=True)),
            generator=torch.Generator(),
        )

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False, **_: Any) -> Any:
        out = model(*inputs["inputs"])
        target = inputs["target"]
        loss = F.cross_entropy(out.logits, target)
        for extra in out.unimodal_logits.values():
            loss = loss + F.cross_entropy(extra, target)
        return (loss, {"logits": out.logits}) if return_outputs else loss


def hf_trainer(
    out: Any, anchor: str, report_to: list[str] | None = None, **saving: Any
) -> tuple[Recipe, AttnProbeCallback, RollingQCallback, Any]:
    """The bundled Trainer's recipe in a ``transformers.Trainer`` writing to ``out``, with
    attnprobe's callbacks attached; returns the trainer, the callbacks and the corrector."""
    model, rq = model_and_corrector()
    items = data()
    config = TrainConfig(epochs=EPOCHS, batch_size=BATCH)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    steps = EPOCHS * math.ceil(len(items) / BATCH)
    warmup = config.warmup_epochs * steps / EPOCHS
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _learning_rate(config.lr, step, warmup, steps) / config.lr
    )
    args = transformers.TrainingArguments(
        output_dir=str(out),
        num_train_epochs=EPOCHS,
        per_device_train_batch_size=BATCH,
        max_grad_norm=0.0,  # the bundled Trainer does not clip
        report_to=report_to or [],
        **{"save_strategy": "no", **saving},
        logging_strategy="no",
        use_cpu=True,
        seed=SEED,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = Recipe(model, items, args=args, optimizers=(optimizer, scheduler), eval_dataset=items)
    trainer.add_callback(Reseed(trainer.order))
    frozen = [items[i : i + BATCH] for i in range(0, len(items), BATCH)]
    probe = AttnProbeCallback("fusion", model.fusion_layout()).attach(trainer)
    rolling = RollingQCallback(
        rq,
        probe,
        anchor=anchor,  # type: ignore[arg-type]
        anchor_data=lambda: (_collate(chunk)[0] for chunk in frozen),
    ).attach(trainer)
    return trainer, probe, rolling, rq


def hf_run(
    tmp_path: Any, anchor: str, report_to: list[str] | None = None
) -> tuple[AttnProbeCallback, RollingQCallback, Any]:
    trainer, probe, rolling, _ = hf_trainer(tmp_path, anchor, report_to)
    trainer.train()
    return probe, rolling, trainer


@pytest.mark.parametrize("anchor", ["running", "frozen"])
def test_the_hf_trainer_matches_the_bundled_trainer(tmp_path: Any, anchor: str) -> None:
    model, rq = model_and_corrector()
    expected = Trainer(
        model,
        data(),
        modalities=model.fusion_layout(),
        rollingq=rq,
        config=TrainConfig(epochs=EPOCHS, batch_size=BATCH, progress=False, anchor=anchor),  # type: ignore[arg-type]
    ).fit()
    probe, rolling, trainer = hf_run(tmp_path, anchor)
    assert len(probe.rows) == len(rolling.rows) == EPOCHS
    rows = merged(probe, rolling)
    assert_same_columns(rows, expected)
    logged = [e for e in trainer.state.log_history if "attnprobe/air" in e]
    assert [e["attnprobe/air"] for e in logged] == pytest.approx(expected["air"].tolist(), abs=1e-6)
    assert sum("attnprobe/rollingq_rotated" in e for e in trainer.state.log_history) == EPOCHS


def test_the_columns_reach_a_report_to_backend(tmp_path: Any) -> None:
    """report_to=["tensorboard"]: HF's TensorBoardCallback writes every epoch's attnprobe
    columns (under train/, as it names training logs)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    probe, _, _ = hf_run(tmp_path, "running", report_to=["tensorboard"])
    folders = {path.parent for path in tmp_path.rglob("events.out.tfevents.*")}
    assert len(folders) == 1
    events = EventAccumulator(str(folders.pop()))
    events.Reload()
    air = [e.value for e in events.Scalars("train/attnprobe/air")]
    assert air == pytest.approx([row["air"] for row in probe.rows], abs=1e-6)
    assert len(events.Scalars("train/attnprobe/rollingq_num_rotations")) == EPOCHS


def run(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(__file__).resolve().parent / "_hf_run.py"
    return subprocess.run(
        [sys.executable, str(script), str(out), *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("saving", "kill", "checkpoints"),
    [
        ((), ("1", "2"), ["checkpoint-6"]),
        (("--save-steps", "5"), ("1", "5"), ["checkpoint-10", "checkpoint-5"]),
    ],
    ids=["epoch-end-checkpoint", "mid-epoch-checkpoint"],
)
def test_a_killed_hf_run_resumes_from_its_checkpoint(
    tmp_path: Path, saving: tuple[str, ...], kill: tuple[str, str], checkpoints: list[str]
) -> None:
    """SIGKILL in the middle of epoch 1; ``resume_from_checkpoint`` (the end of epoch 0, or
    step 10: four batches into epoch 1, past its middle) restores the model with its rotation
    and counter, and the callbacks' state (rows; the statistics of the epoch so far): the run
    ends with the uninterrupted run's rows, log history entries and rotation."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run(whole).returncode == 0
    crash = run(killed, "--kill-epoch", kill[0], "--kill-batch", kill[1], *saving)
    assert crash.returncode == -9, crash.stderr[-2000:]
    assert not (killed / "rows.json").exists()
    saved = sorted(p.name for p in killed.glob("checkpoint-*"))
    assert saved == checkpoints, saved  # 48 samples / 8 per batch: 6 steps per epoch
    assert (killed / checkpoints[-1] / "attnprobe-fusion.pt").exists()
    resumed = run(killed, *saving)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected = json.loads((whole / "rows.json").read_text())
    actual = json.loads((killed / "rows.json").read_text())
    assert [r["epoch"] for r in actual] == list(range(EPOCHS))
    assert_same_columns(actual, pd.DataFrame(expected))
    logged = json.loads((killed / "logged.json").read_text())
    want_logged = json.loads((whole / "logged.json").read_text())
    assert [e["step"] for e in logged] == [e["step"] for e in want_logged]
    for want, got in zip(want_logged, logged, strict=True):
        assert got == pytest.approx(want, abs=1e-6)
    a = torch.load(whole / "rotation.pt", weights_only=True)
    b = torch.load(killed / "rotation.pt", weights_only=True)
    assert int(b["count"]) == int(a["count"]) >= 1
    torch.testing.assert_close(b["rotation"], a["rotation"], atol=1e-6, rtol=0)

    from attnprobe.app.report import report

    # the output_dir: its last checkpoint's trainer_state.json (with --save-steps 5 the last
    # one is at step 15, before the last epoch's end)
    result = report(whole if saving else killed)
    final = result.runs.iloc[0]
    assert final["epochs"] == EPOCHS
    for column in COLUMNS:
        assert final[column] == pytest.approx(expected[-1][column], abs=1e-6), column


def test_evaluation_within_an_epoch_is_not_counted(tmp_path: Path) -> None:
    """With an evaluation every 2 steps (3 per epoch), the callbacks' columns are those of the
    run without evaluation: the probe pauses over the evaluation passes."""
    probe, rolling, _ = hf_run(tmp_path / "plain", "running")
    trainer, with_eval, rolling_eval, _ = hf_trainer(
        tmp_path / "eval",
        "running",
        eval_strategy="steps",
        eval_steps=2,
        prediction_loss_only=True,
        label_names=["target"],  # so that evaluation computes the loss with compute_loss
    )
    trainer.train()
    evaluated = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert len(evaluated) == 3 * EPOCHS
    assert_same_columns(merged(with_eval, rolling_eval), pd.DataFrame(merged(probe, rolling)))
