"""The framework-free callbacks (`attnprobe.callbacks`): a plain training loop with them gives
the bundled `Trainer`'s attention columns and rotations, epoch by epoch."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import attnprobe as ap
from attnprobe._batches import collate as _collate
from attnprobe._batches import epoch_order as _order
from attnprobe._batches import mix as _mix
from attnprobe.callbacks import (
    AttentionDiagnostics,
    Callback,
    Callbacks,
    RollingQCallback,
    RunFiles,
)
from attnprobe.models import LateFusionTransformer
from attnprobe.training import TrainConfig, Trainer, _learning_rate

EPOCHS, BATCH, SEED = 3, 8, 0
COLUMNS = ("share_audio", "share_video", "air", "key_gap", "rollingq_num_rotations")


def data() -> list[tuple[tuple[torch.Tensor, torch.Tensor], int]]:
    g = torch.Generator().manual_seed(0)
    # audio carries the label, video is noise: attention drifts towards audio
    items = []
    for i in range(48):
        label = i % 4
        audio = torch.randn(4, 6, generator=g) + label
        items.append(((audio, torch.randn(3, 8, generator=g)), label))
    return items


def model_and_corrector() -> tuple[LateFusionTransformer, ap.RollingQ]:
    torch.manual_seed(0)
    model = LateFusionTransformer(
        {"audio": 6, "video": 8}, {"audio": 4, "video": 3}, 4, dim=16, unimodal_heads=True
    )
    rq = ap.RollingQ(16, modalities=("audio", "video"), beta=0.0).attach(model, "fusion")
    return model, rq


def assert_same_columns(rows: list[dict[str, Any]], expected: Any) -> None:
    """Each epoch's row has the bundled Trainer's `COLUMNS` (``expected``, its metrics frame)
    to 1e-6."""
    assert len(rows) == len(expected)
    for epoch, row in enumerate(rows):
        for column in COLUMNS:
            assert row[column] == pytest.approx(expected[column].iloc[epoch], abs=1e-6), (
                epoch,
                column,
            )


def merged(probe: Any, rolling: Any) -> list[dict[str, Any]]:
    """One row per epoch from a framework's two callbacks (their ``rows``)."""
    return [{**a, **b} for a, b in zip(probe.rows, rolling.rows, strict=True)]


def plain_loop(anchor: str, out_dir: Path | None = None) -> list[dict[str, float]]:
    """The Trainer's recipe written out as a user would, with the callbacks (same data order,
    learning-rate schedule, dropout seeds, loss); with ``out_dir``, `RunFiles` writes the run
    there."""
    items = data()
    model, rq = model_and_corrector()
    config = TrainConfig(epochs=EPOCHS, batch_size=BATCH)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    steps = EPOCHS * math.ceil(len(items) / BATCH)
    diagnostics = AttentionDiagnostics("fusion", model.fusion_layout())
    frozen = [items[i : i + BATCH] for i in range(0, len(items), BATCH)]
    rolling = RollingQCallback(
        rq,
        diagnostics,
        anchor=anchor,  # type: ignore[arg-type]
        anchor_data=lambda: (_collate(chunk)[0] for chunk in frozen),
    )
    rows, step = [], 0
    files = [] if out_dir is None else [RunFiles(out_dir, diagnostics=diagnostics)]
    with Callbacks(diagnostics, rolling, *files).fit(model) as run:
        for epoch in range(EPOCHS):
            torch.manual_seed(_mix(SEED, epoch, 0))
            model.train()
            run.epoch_start(epoch)
            order = _order(len(items), SEED, epoch).tolist()
            for begin in range(0, len(items), BATCH):
                inputs, target = _collate([items[i] for i in order[begin : begin + BATCH]])
                for group in optimizer.param_groups:
                    group["lr"] = _learning_rate(
                        config.lr, step, config.warmup_epochs * steps / EPOCHS, steps
                    )
                out = model(*inputs)
                loss = F.cross_entropy(out.logits, target)
                for extra in out.unimodal_logits.values():
                    loss = loss + F.cross_entropy(extra, target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                run.batch_end(loss)
            rows.append(run.epoch_end(epoch, train_loss=loss.item()))
    return rows


@pytest.mark.parametrize("anchor", ["running", "frozen"])
def test_a_plain_loop_with_callbacks_matches_the_trainer(anchor: str) -> None:
    model, rq = model_and_corrector()
    trainer = Trainer(
        model,
        data(),
        modalities=model.fusion_layout(),
        rollingq=rq,
        config=TrainConfig(epochs=EPOCHS, batch_size=BATCH, progress=False, anchor=anchor),  # type: ignore[arg-type]
    )
    expected = trainer.fit()
    got = plain_loop(anchor)
    assert int(expected["rollingq_num_rotations"].iloc[-1]) >= 1  # the check did rotate
    assert_same_columns(got, expected)
    for epoch, row in enumerate(got):
        angle = expected["rollingq_angle_deg"].iloc[epoch]
        assert row["rollingq_angle_deg"] == pytest.approx(angle, abs=1e-6, nan_ok=True)


def test_attnprobe_report_reads_the_run_files_of_a_plain_loop(tmp_path: Path) -> None:
    """`RunFiles` in one's own loop writes what ``attnprobe report`` reads: its summary holds
    the loop's last row, and the attention figures are drawn."""
    from attnprobe.app.report import report

    rows = plain_loop("running", tmp_path / "mine-seed0")
    assert (tmp_path / "mine-seed0" / "attention.csv").exists()
    result = report(tmp_path)
    final = result.runs.iloc[0]
    assert (final["method"], final["epochs"]) == ("mine", EPOCHS)
    for column in ("air", "share_audio", "key_gap", "train_loss", "rollingq_num_rotations"):
        assert final[column] == pytest.approx(rows[-1][column], abs=1e-12), column
    assert {p.name for p in result.figures} >= {"share_over_training.png", "air_key_gap.png"}


def test_callbacks_release_the_probe_when_the_loop_raises() -> None:
    model, _ = model_and_corrector()  # the corrector's own hooks stay: it is attached
    fusion = model.get_submodule("fusion")
    before = (dict(fusion._forward_hooks), dict(fusion._forward_pre_hooks))
    diagnostics = AttentionDiagnostics("fusion", model.fusion_layout())
    with pytest.raises(RuntimeError, match="boom"), Callbacks(diagnostics).fit(model) as run:
        run.epoch_start(0)
        model(torch.randn(2, 4, 6), torch.randn(2, 3, 8))
        assert len(fusion._forward_hooks) > len(before[0])  # the probe's
        raise RuntimeError("boom")
    assert (dict(fusion._forward_hooks), dict(fusion._forward_pre_hooks)) == before


def test_pinned_errors() -> None:
    model, rq = model_and_corrector()
    diagnostics = AttentionDiagnostics("fusion", model.fusion_layout())
    with pytest.raises(ap.errors.ProbeConfigError, match="anchor_data"):
        RollingQCallback(rq, diagnostics, anchor="frozen")
    with pytest.raises(ap.errors.ProbeConfigError, match="Callback instances"):
        Callbacks(object())  # type: ignore[arg-type]
    with pytest.raises(ap.errors.ProbeConfigError, match="before on_fit_start"):
        diagnostics.on_epoch_start(0)
    other, _ = model_and_corrector()
    with pytest.raises(ap.errors.ProbeConfigError, match="not part of the model"):
        Callbacks(diagnostics, RollingQCallback(rq, diagnostics)).fit(other)
    with pytest.raises(ap.errors.ModalityLayoutError, match="text"):
        AttentionDiagnostics("fusion", model.fusion_layout(), query="text")


def test_a_callback_of_ones_own_gets_every_event() -> None:
    events: list[str] = []

    class Log(Callback):
        def on_fit_start(self, model: torch.nn.Module) -> None:
            events.append("fit_start")

        def on_epoch_start(self, epoch: int) -> None:
            events.append(f"epoch_start {epoch}")

        def on_batch_end(self, batch: int, loss: torch.Tensor | None) -> None:
            events.append(f"batch_end {batch} {loss is not None and not loss.requires_grad}")

        def on_epoch_end(self, epoch: int, row: Any) -> dict[str, float]:
            events.append(f"epoch_end {epoch} {sorted(row)}")
            return {"seen": 1.0}

        def on_fit_end(self) -> None:
            events.append("fit_end")

    model, _ = model_and_corrector()
    with Callbacks(Log()).fit(model) as run:
        run.epoch_start(0)
        run.batch_end(torch.ones((), requires_grad=True) * 2)
        run.batch_end()
        assert run.epoch_end(0, loss=0.5) == {"epoch": 0, "loss": 0.5, "seen": 1.0}
    assert events == [
        "fit_start",
        "epoch_start 0",
        "batch_end 0 True",
        "batch_end 1 False",
        "epoch_end 0 ['epoch', 'loss']",
        "fit_end",
    ]
