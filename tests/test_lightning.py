"""attnprobe's callbacks in a real ``lightning.Trainer`` on the CPU: the same data order,
schedule and seeds give the bundled `Trainer`'s attention columns and rotations."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from attnprobe._batches import collate as _collate
from attnprobe._batches import epoch_order as _order
from attnprobe._batches import mix as _mix
from attnprobe.integrations.lightning import AttnProbeCallback, RollingQCallback
from attnprobe.training import TrainConfig, Trainer, _learning_rate
from tests.test_callbacks import (
    BATCH,
    EPOCHS,
    SEED,
    assert_same_columns,
    data,
    merged,
    model_and_corrector,
)


class EpochOrder(torch.utils.data.Sampler[int]):
    """The Trainer's data order: a permutation seeded by (seed, epoch); Lightning calls
    ``set_epoch`` before every epoch."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Any:
        return iter(_order(self.n, SEED, self.epoch).tolist())

    def __len__(self) -> int:
        return self.n


class Recipe(L.LightningModule):
    """The Trainer's recipe as a LightningModule: SGD with momentum, the warm-up + cosine
    schedule per step, dropout reseeded at every epoch start, unimodal heads' loss."""

    def __init__(self) -> None:
        super().__init__()
        self.model, self.rollingq = model_and_corrector()
        self.items = data()
        self.config = TrainConfig(epochs=EPOCHS, batch_size=BATCH)

    def train_dataloader(self) -> torch.utils.data.DataLoader[Any]:
        return torch.utils.data.DataLoader(
            self.items,  # type: ignore[arg-type]
            batch_size=BATCH,
            sampler=EpochOrder(len(self.items)),
            collate_fn=_collate,
            generator=torch.Generator(),  # its base seed must not draw from the global RNG
        )

    def forward(self, *inputs: torch.Tensor) -> Any:  # the frozen anchor pass calls it
        return self.model(*inputs)

    def on_train_epoch_start(self) -> None:
        torch.manual_seed(_mix(SEED, self.current_epoch, 0))

    def training_step(self, batch: Any, index: int) -> torch.Tensor:
        inputs, target = batch
        out = self(*inputs)
        loss = F.cross_entropy(out.logits, target)
        for extra in out.unimodal_logits.values():
            loss = loss + F.cross_entropy(extra, target)
        return loss

    def configure_optimizers(self) -> Any:
        c = self.config
        optimizer = torch.optim.SGD(
            self.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay
        )
        steps = EPOCHS * math.ceil(len(self.items) / BATCH)
        warmup = c.warmup_epochs * steps / EPOCHS

        def schedule(step: int) -> float:
            return _learning_rate(c.lr, step, warmup, steps) / c.lr

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        every_step = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": every_step}


def lightning_trainer(callbacks: list[Any], **options: Any) -> Any:
    settings: dict[str, Any] = {
        "max_epochs": EPOCHS,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    return L.Trainer(callbacks=callbacks, **{**settings, **options})


def callbacks_for(module: Recipe, anchor: str) -> tuple[AttnProbeCallback, RollingQCallback]:
    items = module.items
    frozen = [items[i : i + BATCH] for i in range(0, len(items), BATCH)]
    probe = AttnProbeCallback("model.fusion", module.model.fusion_layout())
    rolling = RollingQCallback(
        module.rollingq,
        probe,
        anchor=anchor,  # type: ignore[arg-type]
        anchor_data=lambda: (_collate(chunk)[0] for chunk in frozen),
    )
    return probe, rolling


def fit(module: Recipe, anchor: str, **options: Any) -> tuple[AttnProbeCallback, RollingQCallback]:
    probe, rolling = callbacks_for(module, anchor)
    lightning_trainer([probe, rolling], **options).fit(module)
    return probe, rolling


@pytest.mark.parametrize("anchor", ["running", "frozen"])
def test_lightning_matches_the_trainer(anchor: str) -> None:
    model, rq = model_and_corrector()
    expected = Trainer(
        model,
        data(),
        modalities=model.fusion_layout(),
        rollingq=rq,
        config=TrainConfig(epochs=EPOCHS, batch_size=BATCH, progress=False, anchor=anchor),  # type: ignore[arg-type]
    ).fit()
    module = Recipe()
    probe, rolling = fit(module, anchor)
    assert len(probe.rows) == len(rolling.rows) == EPOCHS
    assert int(module.rollingq.num_rotations) >= 1
    rows = merged(probe, rolling)
    assert_same_columns(rows, expected)


def test_metrics_reach_lightnings_loggers(tmp_path: Any) -> None:
    from lightning.pytorch.loggers import CSVLogger

    module = Recipe()
    probe, rolling = fit(
        module, "running", logger=CSVLogger(tmp_path, name="run"), log_every_n_steps=1
    )
    frame = pd.read_csv(next(tmp_path.rglob("metrics.csv")))
    for column in ("attnprobe/share_audio", "attnprobe/air", "attnprobe/rollingq_rotated"):
        assert column in frame.columns
        assert frame[column].notna().sum() == EPOCHS
    fusion = module.model.get_submodule("fusion")
    assert not any("probe" in repr(h).lower() for h in fusion._forward_hooks.values())

    from attnprobe.app.report import report

    result = report(tmp_path)  # finds run/version_0, reads its CSVLogger file
    final = result.runs.iloc[0]
    assert (final["run"], final["epochs"]) == ("run/version_0", EPOCHS)
    last = merged(probe, rolling)[-1]
    for column in ("air", "share_audio", "key_gap", "rollingq_num_rotations"):
        assert final[column] == pytest.approx(last[column], abs=1e-6), column  # float32 CSV
    assert "share_over_training.png" in {p.name for p in result.figures}


class Validated(Recipe):
    """The recipe with a validation loop over the training items."""

    def val_dataloader(self) -> torch.utils.data.DataLoader[Any]:
        return torch.utils.data.DataLoader(
            self.items,  # type: ignore[arg-type]
            batch_size=BATCH,
            collate_fn=_collate,
            generator=torch.Generator(),
        )

    def validation_step(self, batch: Any, index: int) -> None:
        inputs, target = batch
        self.log("val_loss", F.cross_entropy(self(*inputs).logits, target))


def test_validation_within_an_epoch_is_not_counted() -> None:
    """Validating twice per epoch leaves the callbacks' columns those of the run without
    validation: the probe pauses over the validation passes."""
    probe, rolling = fit(Recipe(), "running")
    validated = Validated()
    with_val, rolling_val = fit(validated, "running", val_check_interval=0.5)
    assert validated.trainer.callback_metrics["val_loss"] > 0  # validation did run
    assert_same_columns(merged(with_val, rolling_val), pd.DataFrame(merged(probe, rolling)))


def run(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(__file__).resolve().parent / "_lightning_run.py"
    return subprocess.run(
        [sys.executable, str(script), str(out), *args], capture_output=True, text=True, timeout=300
    )


def test_a_killed_lightning_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    """SIGKILL in the middle of epoch 1; resumed from Lightning's last checkpoint (end of
    epoch 0), the run ends with the uninterrupted run's rows and rotation."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run(whole).returncode == 0
    crash = run(killed, "--kill-epoch", "1", "--kill-batch", "2")
    assert crash.returncode == -9, crash.stderr[-2000:]
    assert (killed / "last.ckpt").exists() and not (killed / "rows.json").exists()
    resumed = run(killed)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected = json.loads((whole / "rows.json").read_text())
    actual = json.loads((killed / "rows.json").read_text())
    assert [r["epoch"] for r in actual] == list(range(EPOCHS))
    assert_same_columns(actual, pd.DataFrame(expected))
    a = torch.load(whole / "rotation.pt", weights_only=True)
    b = torch.load(killed / "rotation.pt", weights_only=True)
    assert int(b["count"]) == int(a["count"]) >= 1
    torch.testing.assert_close(b["rotation"], a["rotation"], atol=1e-6, rtol=0)
