"""attnprobe's diagnostics and RollingQ as ``lightning.pytorch`` callbacks.

`AttnProbeCallback` probes one attention layer of the LightningModule during every training
epoch and logs the epoch's attention columns (`attnprobe.metrics.attention_columns`) through
the module's own ``log_dict``, so that every Lightning logger (CSV, TensorBoard, W&B, MLflow)
receives them; `RollingQCallback` runs the RollingQ check after it at every epoch's end and logs
its columns. Both wrap the framework-free callbacks of `attnprobe.callbacks`.

The rotation and its counter are buffers of the model (`attnprobe.RollingQ`), so Lightning's
checkpoints save and restore them; the rows of the epochs so far, and within an epoch the
statistics of its batches so far, are the callback's state in the checkpoint.

Under DDP every rank logs the same values: the probe's statistics are summed over ranks
(`attnprobe.Probe.sync`) and the rotation is broadcast from rank 0 before the columns are
computed. They are logged with ``sync_dist=True``: Lightning's mean over ranks of equal values
returns them unchanged, and it does not warn that epoch-level values are not synced.

Examples:
    >>> import lightning.pytorch as L
    >>> from attnprobe.integrations.lightning import AttnProbeCallback
    >>> AttnProbeCallback("model.fusion", {"cls": 1, "audio": 4, "video": 3}).layer
    'model.fusion'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as L
import torch

from attnprobe.callbacks import AttentionDiagnostics, numeric_columns
from attnprobe.callbacks import RollingQCallback as _RollingQCallback
from attnprobe.errors import ProbeConfigError
from attnprobe.labels import ModalityLayout
from attnprobe.rollingq import RollingQ

__all__ = ["AttnProbeCallback", "RollingQCallback"]


class AttnProbeCallback(L.Callback):
    """Probe ``layer`` of the LightningModule during every training epoch and log its
    attention columns at the epoch's end.

    Args:
        layer: path of the attention module inside the LightningModule (e.g.
            ``"model.fusion"``).
        modalities: its token layout.
        query: the query group diagnosed.
        exclude: key groups left out of the shares and the AIR.
        prefix: prefix of the logged names.

    After each epoch, ``rows`` holds the columns logged so far (one dict per epoch) and
    ``diagnostics`` the `attnprobe.callbacks.AttentionDiagnostics` (its ``stats``, ``result``,
    ``history``).
    """

    def __init__(
        self,
        layer: str,
        modalities: ModalityLayout | Mapping[str, int],
        *,
        query: str = "cls",
        exclude: Sequence[str] = ("cls",),
        prefix: str = "attnprobe/",
    ) -> None:
        super().__init__()
        self.layer = layer
        self.prefix = prefix
        self.diagnostics = AttentionDiagnostics(layer, modalities, query=query, exclude=exclude)
        self.rows: list[dict[str, Any]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.diagnostics.on_fit_start(pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.diagnostics.on_epoch_start(trainer.current_epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        columns = self.diagnostics.on_epoch_end(epoch, {})
        self.rows.append({"epoch": epoch, **columns})
        pl_module.log_dict(
            numeric_columns(columns, self.prefix), on_step=False, on_epoch=True, sync_dist=True
        )

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.diagnostics.pause()  # validation within the epoch: not a training batch

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.diagnostics.unpause()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.diagnostics.on_fit_end()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.diagnostics.on_fit_end()

    def state_dict(self) -> dict[str, Any]:
        """The rows so far and the diagnostics' state (within an epoch, its statistics so far,
        summed over ranks: Lightning calls this on every rank when it checkpoints)."""
        return {"rows": [dict(r) for r in self.rows], "diagnostics": self.diagnostics.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state_dict.get("rows", [])]
        self.diagnostics.load_state_dict(state_dict.get("diagnostics", {}))


class RollingQCallback(L.Callback):
    """The RollingQ check at every training epoch's end, on what an `AttnProbeCallback`
    collected (list it after that callback), its columns logged like the diagnostics.

    Args:
        rollingq: the corrector, attached to the probed layer (`attnprobe.RollingQ.attach`).
        probe: the `AttnProbeCallback` of that layer.
        anchor: ``"running"`` (the epoch's statistics) or ``"frozen"`` (a pass over
            ``anchor_data`` with the model frozen, as the reference: the LightningModule is
            called on each batch's inputs, so it needs a ``forward``).
        anchor_data: the frozen pass's batches (an iterable, or a function returning one).
        inputs: ``inputs(batch) -> model inputs`` when the batches also hold targets.
    """

    def __init__(
        self,
        rollingq: RollingQ,
        probe: AttnProbeCallback,
        *,
        anchor: Literal["running", "frozen"] = "running",
        anchor_data: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
        inputs: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(probe, AttnProbeCallback):
            raise ProbeConfigError(
                f"RollingQCallback: expected the AttnProbeCallback of the corrected layer as "
                f"probe, received {type(probe).__name__}."
            )
        self.probe = probe
        self.core = _RollingQCallback(
            rollingq, probe.diagnostics, anchor=anchor, anchor_data=anchor_data, inputs=inputs
        )
        self.rows: list[dict[str, Any]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.core.on_fit_start(pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        with torch.no_grad():
            row = self.core.on_epoch_end(epoch, {})
        self.rows.append({"epoch": epoch, **row})
        pl_module.log_dict(
            numeric_columns(row, self.probe.prefix), on_step=False, on_epoch=True, sync_dist=True
        )

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state_dict.get("rows", [])]
