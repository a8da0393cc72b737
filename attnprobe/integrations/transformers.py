"""attnprobe's diagnostics and RollingQ as HuggingFace ``transformers.Trainer`` callbacks.

`AttnProbeCallback` probes one attention layer of the trained model during every training epoch;
`RollingQCallback`, registered after it, runs the RollingQ check at every epoch's end. Both wrap
the framework-free callbacks of `attnprobe.callbacks`. Register them with ``attach(trainer)``:
the epoch's columns then go through ``trainer.log`` — into ``trainer.state.log_history`` and to
every ``report_to`` backend (TensorBoard, W&B, MLflow, …). (A ``TrainerCallback`` is handed the
model, not the trainer, and the reporting callbacks run before user callbacks, so a callback
passed in ``callbacks=[...]`` only adds its columns to ``state.log_history``.)

The rotation and its counter are buffers of the model (`attnprobe.RollingQ`): the model's
checkpoints keep them, and ``resume_from_checkpoint`` restores them. The callbacks' own state
(their rows; within an epoch, its statistics so far) goes into each checkpoint folder beside
``trainer_state.json`` (``attnprobe-<layer>.pt``, ``attnprobe-rollingq-<layer>.pt``, read with
``torch.load(weights_only=True)``) and comes back when training resumes from that folder, also
from a checkpoint written in the middle of an epoch.

Examples:
    >>> from attnprobe.integrations.transformers import AttnProbeCallback
    >>> AttnProbeCallback("fusion", {"cls": 1, "audio": 4, "video": 3}).prefix
    'attnprobe/'
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import TrainerCallback

from attnprobe.callbacks import AttentionDiagnostics, numeric_columns
from attnprobe.callbacks import RollingQCallback as _RollingQCallback
from attnprobe.errors import AttnProbeWarning, ProbeConfigError
from attnprobe.labels import ModalityLayout
from attnprobe.rollingq import RollingQ

__all__ = ["AttnProbeCallback", "RollingQCallback"]


class _Logging(TrainerCallback):  # type: ignore[misc]
    prefix = "attnprobe/"

    def __init__(self, file: str) -> None:
        self.trainer: Any = None
        self.rows: list[dict[str, Any]] = []
        self.file = file
        """Name of this callback's rows in a checkpoint folder."""

    def attach(self, trainer: Any) -> Any:
        """Register this callback with ``trainer`` (``trainer.add_callback``) and log through
        it; returns the callback."""
        trainer.add_callback(self)
        self.trainer = trainer
        return self

    def _log(self, state: Any, epoch: int, columns: Mapping[str, Any]) -> None:
        self.rows.append({"epoch": epoch, **columns})
        values = numeric_columns(columns, self.prefix)
        if self.trainer is not None:
            self.trainer.log(values)
        else:
            state.log_history.append({**values, "epoch": state.epoch, "step": state.global_step})

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of this callback (rows: plain Python values)."""
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rows = [dict(r) for r in state.get("rows", [])]

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Write this callback's state into the checkpoint folder the Trainer just wrote (every
        rank computes it: the statistics so far are summed over ranks; the main one writes)."""
        saved = self.state_dict()
        folder = _checkpoint(args, state)
        if args.should_save and folder.is_dir():
            buffer = io.BytesIO()
            torch.save(saved, buffer)
            tmp = folder / f".{self.file}.tmp"
            tmp.write_bytes(buffer.getvalue())
            os.replace(tmp, folder / self.file)

    def _restore(self, args: Any, state: Any) -> None:
        """Resumed from a checkpoint (``state.global_step > 0`` at the start of training):
        read the state saved with it."""
        if not state.global_step:
            self.load_state_dict({})
            return
        path = _checkpoint(args, state) / self.file
        if not path.exists():
            warnings.warn(
                f"{type(self).__name__}: training resumes at step {state.global_step} but "
                f"{path} does not exist, so the rows of the earlier epochs are not restored "
                "(their columns are still in trainer.state.log_history); resume from a "
                "checkpoint folder under args.output_dir written with this callback attached.",
                AttnProbeWarning,
                stacklevel=3,
            )
            self.load_state_dict({})
            return
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def _checkpoint(args: Any, state: Any) -> Path:
    """The checkpoint folder of the current step, as ``transformers.Trainer`` names it."""
    return Path(args.output_dir) / f"checkpoint-{state.global_step}"


def _epoch(state: Any) -> int:
    """The index of the epoch that starts: ``state.epoch`` counts finished epochs then, with
    the fraction of the current one done when training resumes from a checkpoint written
    within it."""
    return math.floor(float(state.epoch or 0.0) + 1e-6)


class AttnProbeCallback(_Logging):
    """Probe ``layer`` of the trained model during every training epoch and log its attention
    columns at the epoch's end (`attnprobe.metrics.attention_columns`, names prefixed
    ``attnprobe/``).

    Args:
        layer: path of the attention module in the model the Trainer trains.
        modalities: its token layout.
        query: the query group diagnosed.
        exclude: key groups left out of the shares and the AIR.

    ``rows`` holds one dict of columns per epoch; ``diagnostics`` the
    `attnprobe.callbacks.AttentionDiagnostics` (its ``stats``, ``result``, ``history``).
    """

    def __init__(
        self,
        layer: str,
        modalities: ModalityLayout | Mapping[str, int],
        *,
        query: str = "cls",
        exclude: Sequence[str] = ("cls",),
    ) -> None:
        super().__init__(f"attnprobe-{layer}.pt")
        self.diagnostics = AttentionDiagnostics(layer, modalities, query=query, exclude=exclude)
        self._current: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "diagnostics": self.diagnostics.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.diagnostics.load_state_dict(state.get("diagnostics", {}))

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs.get("model")
        if model is None:
            raise ProbeConfigError("AttnProbeCallback: the Trainer passed no model to callbacks.")
        self._restore(args, state)
        self.diagnostics.on_fit_start(model)

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._current = _epoch(state)
        self.diagnostics.on_epoch_start(self._current)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.diagnostics.unpause()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if control.should_evaluate:  # the Trainer evaluates next: not training batches
            self.diagnostics.pause()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        assert self._current is not None
        epoch = self._current
        self._log(state, epoch, self.diagnostics.on_epoch_end(epoch, {}))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.diagnostics.on_fit_end()


class RollingQCallback(_Logging):
    """The RollingQ check at every training epoch's end, on what an `AttnProbeCallback`
    collected (register it after that callback), its columns logged the same way.

    Args:
        rollingq: the corrector, attached to the probed layer (`attnprobe.RollingQ.attach`).
        probe: the `AttnProbeCallback` of that layer.
        anchor: ``"running"`` (the epoch's statistics) or ``"frozen"`` (a pass over
            ``anchor_data`` with the model frozen, as the reference).
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
        if not isinstance(probe, AttnProbeCallback):
            raise ProbeConfigError(
                f"RollingQCallback: expected the AttnProbeCallback of the corrected layer as "
                f"probe, received {type(probe).__name__}."
            )
        super().__init__(f"attnprobe-rollingq-{probe.diagnostics.layer}.pt")
        self.probe = probe
        self.core = _RollingQCallback(
            rollingq, probe.diagnostics, anchor=anchor, anchor_data=anchor_data, inputs=inputs
        )

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._restore(args, state)
        self.core.on_fit_start(kwargs["model"])

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        epoch = self.probe._current
        assert epoch is not None
        with torch.no_grad():
            self._log(state, epoch, self.core.on_epoch_end(epoch, {}))
