"""The callback protocol, its runner, and the diagnostics and RollingQ callbacks (see the
package's docstring)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from torch import Tensor, nn

from attnprobe._probe import Probe, probe
from attnprobe.analysis.history import History
from attnprobe.errors import CaptureError, ProbeConfigError
from attnprobe.functional import angle_between
from attnprobe.labels import ModalityLayout, as_layout
from attnprobe.metrics import attention_columns
from attnprobe.results import LayerResult, ProbeResult
from attnprobe.rollingq import RollingQ, anchor_statistics

__all__ = [
    "AttentionDiagnostics",
    "Callback",
    "Callbacks",
    "RollingQCallback",
    "numeric_columns",
    "rollingq_columns",
]


class Callback:
    """Base class of attnprobe's training callbacks: override the events you need.

    The loop calls, in order: `on_fit_start` once, then per epoch `on_epoch_start`,
    `on_batch_end` after every optimiser step and `on_epoch_end` (which receives the epoch's
    metrics row so far and returns the columns this callback adds to it), then `on_fit_end`
    once — also when the loop stops with an exception, to release what the callback holds.
    """

    def on_fit_start(self, model: nn.Module) -> None:
        """Training of ``model`` starts (or resumes)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Epoch ``epoch`` (from 0) starts."""

    def on_batch_end(self, batch: int, loss: Tensor | None) -> None:
        """Training batch ``batch`` of the epoch ended; ``loss`` is its detached loss, if any."""

    def on_epoch_end(self, epoch: int, row: Mapping[str, Any]) -> dict[str, Any]:
        """Epoch ``epoch`` ended: the columns this callback adds to its metrics ``row`` (which
        holds the loop's own columns and those of the callbacks called before this one)."""
        return {}

    def on_fit_end(self) -> None:
        """Training ended, normally or not."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of this callback (tensors and plain Python values only, so
        that ``torch.load(weights_only=True)`` reads it)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned."""


class Callbacks:
    """Several callbacks, called in the order given; `epoch_end` merges their columns.

    Args:
        callbacks: the callbacks (`AttentionDiagnostics` before the `RollingQCallback` that
            reads it).

    Examples:
        >>> import torch, attnprobe as ap
        >>> from attnprobe.callbacks import AttentionDiagnostics, Callbacks
        >>> from attnprobe.models import LateFusionTransformer
        >>> model = LateFusionTransformer({"audio": 6, "video": 8}, {"audio": 4, "video": 3}, 5)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> diagnostics = AttentionDiagnostics("fusion", model.fusion_layout())
        >>> with Callbacks(diagnostics).fit(model) as run:
        ...     run.epoch_start(0)
        ...     for _ in range(3):
        ...         loss = model(torch.randn(4, 4, 6), torch.randn(4, 3, 8)).logsumexp(-1).mean()
        ...         optimizer.zero_grad(); loss.backward(); optimizer.step()
        ...         run.batch_end(loss)
        ...     row = run.epoch_end(0)
        >>> sorted(row)
        ['air', 'cos_audio', 'cos_video', 'epoch', 'key_gap', 'share_audio', 'share_video']
    """

    def __init__(self, *callbacks: Callback) -> None:
        for callback in callbacks:
            if not isinstance(callback, Callback):
                raise ProbeConfigError(
                    f"Callbacks: expected attnprobe.callbacks.Callback instances, received "
                    f"{type(callback).__name__}; subclass Callback for your own."
                )
        self.callbacks = tuple(callbacks)
        self._batch = 0

    def fit(self, model: nn.Module) -> Callbacks:
        """`on_fit_start` of every callback; use the result as a context manager, whose exit
        calls `fit_end` (normally or after an exception)."""
        for callback in self.callbacks:
            callback.on_fit_start(model)
        return self

    def __enter__(self) -> Callbacks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fit_end()

    def epoch_start(self, epoch: int) -> None:
        self._batch = 0
        for callback in self.callbacks:
            callback.on_epoch_start(epoch)

    def batch_end(self, loss: Tensor | None = None) -> None:
        detached = loss.detach() if isinstance(loss, Tensor) else None
        for callback in self.callbacks:
            callback.on_batch_end(self._batch, detached)
        self._batch += 1

    def epoch_end(self, epoch: int, **columns: Any) -> dict[str, Any]:
        """The epoch's row: ``epoch``, the loop's own ``columns`` (e.g. the training loss), then
        every callback's columns, in order."""
        row: dict[str, Any] = {"epoch": epoch, **columns}
        for callback in self.callbacks:
            row.update(callback.on_epoch_end(epoch, row))
        return row

    def fit_end(self) -> None:
        errors: list[BaseException] = []
        for callback in self.callbacks:
            try:
                callback.on_fit_end()
            except BaseException as error:  # release the others first
                errors.append(error)
        if errors:
            raise errors[0]

    def state_dict(self) -> dict[str, Any]:
        return {str(i): c.state_dict() for i, c in enumerate(self.callbacks)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for i, callback in enumerate(self.callbacks):
            callback.load_state_dict(state.get(str(i), {}))


class AttentionDiagnostics(Callback):
    """Probe one attention layer during every training epoch and report its attention at the
    epoch's end.

    Args:
        layer: path of the attention module (e.g. ``"fusion"``).
        modalities: its token layout (e.g. ``model.fusion_layout()``).
        query: the query group diagnosed (the fusion CLS token).
        exclude: key groups left out of the shares and the AIR.
        key_stats: also collect key statistics (AIR, key gap, RollingQ need them).

    After `on_epoch_end`: `result` (the epoch's `ProbeResult`), `stats` (its layer),
    `air_stats` (what the RollingQ check reads: `stats`, or the batches after `split`) and
    `history` (one entry per epoch, with the optimiser step it ended at).

    The statistics are those of the training batches: evaluate within an epoch between
    `pause` and `unpause` (the framework integrations do it around validation).
    """

    def __init__(
        self,
        layer: str,
        modalities: ModalityLayout | Mapping[str, int],
        *,
        query: str = "cls",
        exclude: Sequence[str] = ("cls",),
        key_stats: bool = True,
    ) -> None:
        self.layer = layer
        self.layout = as_layout(modalities)
        self.query = query
        self.exclude = tuple(exclude)
        for name in (query, *self.exclude):
            self.layout.index(name)  # raises ModalityLayoutError naming the groups
        self.modalities = tuple(g for g in self.layout.names if g not in set(self.exclude))
        self.key_stats = key_stats
        self.model: nn.Module | None = None
        self.history = History(exclude=self.exclude)
        self.result: ProbeResult | None = None
        self.stats: LayerResult | None = None
        self.air_stats: LayerResult | None = None
        self.step = 0
        """Optimiser steps (`on_batch_end` calls) since training started."""
        self._probe: Probe | None = None
        self._epoch: int | None = None
        self._earlier: ProbeResult | None = None
        self._carried: tuple[int, ProbeResult] | None = None  # (epoch, its batches before a resume)
        self._paused = False

    def on_fit_start(self, model: nn.Module) -> None:
        self.model = model

    def on_epoch_start(self, epoch: int) -> None:
        if self.model is None:
            raise ProbeConfigError(
                "AttentionDiagnostics: on_epoch_start before on_fit_start; call "
                "Callbacks(...).fit(model) (or on_fit_start(model)) first."
            )
        self._close()
        self.stats = self.air_stats = self._earlier = None
        self._paused = False
        if self._carried is not None and self._carried[0] != epoch:
            self._carried = None
        self._epoch = epoch
        self._probe = probe(
            self.model,
            modalities=self.layout,
            layers=self.layer,
            queries=self.query,
            key_stats=self.key_stats,
        ).__enter__()

    def on_batch_end(self, batch: int, loss: Tensor | None) -> None:
        self.step += 1

    def pause(self) -> None:
        """Stop counting forward passes (e.g. for an evaluation within the epoch): the probe's
        hooks come off, its statistics stay. A no-op outside an epoch or when paused."""
        if self._probe is not None and not self._paused:
            self._probe.close()
            self._paused = True

    def unpause(self) -> None:
        """Count forward passes again after `pause` (a no-op otherwise)."""
        if self._probe is not None and self._paused:
            self._probe.attach()
        self._paused = False

    def split(self) -> None:
        """From here to the epoch's end, keep the statistics apart as `air_stats` (the
        reference code's RollingQ AIR, read on the last training batch only); `stats` still
        covers the whole epoch."""
        p = self._open("split")
        self._earlier = self._so_far(p)
        p.reset()

    def on_epoch_end(self, epoch: int, row: Mapping[str, Any]) -> dict[str, Any]:
        p = self._open(f"on_epoch_end({epoch})", epoch)
        try:
            p.sync()
            last = p.result()
        finally:
            self._close()
        if self._earlier is not None:  # split: the RollingQ AIR reads the batches after it
            result, self.air_stats = self._earlier.merge(last), last.layers[0]
        else:
            carried = self._carried[1] if self._carried is not None else None
            result = last if carried is None else carried.merge(last)
            self.air_stats = result.layers[0]
        self._carried = None
        self.result, self.stats = result, result.layers[0]
        self.history.add(result, epoch=epoch, step=self.step)
        if not self.key_stats:
            return {}
        return attention_columns(self.stats, self.query, self.modalities)

    def on_fit_end(self) -> None:
        self._close()

    def state_dict(self) -> dict[str, Any]:
        """The step count, and within an epoch the statistics of its batches so far (summed
        over ranks: under ``torch.distributed`` every rank must call it, as Lightning and the HF
        Trainer do when they checkpoint), so that a run resumed from a checkpoint written in
        the middle of an epoch ends that epoch with the statistics of all its batches."""
        state: dict[str, Any] = {"step": self.step}
        if self._probe is not None and self._epoch is not None:
            so_far = self._so_far(self._probe)
            if so_far is not None:
                state["epoch"], state["partial"] = self._epoch, so_far.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state.get("step", 0))
        self._carried = None
        if "partial" in state:
            partial = ProbeResult.from_state_dict(state["partial"])
            self._carried = (int(state["epoch"]), partial)

    def _so_far(self, p: Probe) -> ProbeResult | None:
        """This epoch's statistics so far (summed over ranks): those carried over a resume or
        kept by `split`, and the probe's since; None before the first batch."""
        p.sync()
        before = self._earlier
        if before is None and self._carried is not None:
            before = self._carried[1]
        now = _captured(p)
        if before is None or now is None:
            return now if before is None else before
        return before.merge(now)

    def _open(self, what: str, epoch: int | None = None) -> Probe:
        if self._probe is None or (epoch is not None and self._epoch != epoch):
            raise ProbeConfigError(
                f"AttentionDiagnostics: {what} outside the epoch; call on_epoch_start "
                f"({'Callbacks.epoch_start' if epoch is None else f'epoch {epoch}'}) first."
            )
        return self._probe

    def _close(self) -> None:
        p, self._probe = self._probe, None
        self._paused = False
        if p is not None:
            p.__exit__(None, None, None)


def _captured(p: Probe) -> ProbeResult | None:
    """The probe's result, or None before its layer has seen a batch."""
    try:
        return p.result()
    except CaptureError:
        return None


def numeric_columns(row: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric columns of a metrics row as floats (booleans as 0/1, NaN left out), names
    prefixed: what the framework integrations hand to their loggers.

    Examples:
        >>> numeric_columns({"air": 0.5, "rotated": True, "gap": float("nan"), "note": "x"}, "a/")
        {'a/air': 0.5, 'a/rotated': 1.0}
    """
    return {
        f"{prefix}{key}": float(value)
        for key, value in row.items()
        if isinstance(value, (bool, int, float))
        and not (isinstance(value, float) and math.isnan(value))
    }


def rollingq_columns(
    rollingq: RollingQ,
    stats: LayerResult,
    epoch: int,
    frozen: Callable[[], LayerResult] | None = None,
) -> dict[str, Any]:
    """The RollingQ check at an epoch's end (`RollingQ.step`) and its columns.

    With ``frozen`` (the anchor statistics of a frozen pass, computed only when a rotation is
    due), also ``rollingq_running_vs_frozen_deg``: the angle, mean over heads, between where the
    frozen anchor and the running one (``stats``) would rotate the epoch's mean query; NaN
    otherwise.
    """
    anchor = None
    difference = math.nan
    if frozen is not None and rollingq.due(stats):
        anchor = frozen()
        by_frozen = rollingq.plan(stats, anchor=anchor)
        by_running = rollingq.plan(stats)
        q = by_frozen.query_mean.unsqueeze(-1)  # (H', D, 1)
        difference = float(
            angle_between(
                (by_frozen.rotation @ q).squeeze(-1), (by_running.rotation @ q).squeeze(-1)
            ).mean()
        )
    row: dict[str, Any] = rollingq.step(stats, anchor=anchor, epoch=epoch).to_dict()
    row["rollingq_running_vs_frozen_deg"] = difference
    return row


class RollingQCallback(Callback):
    """The RollingQ check at every epoch's end, on what `AttentionDiagnostics` collected.

    Args:
        rollingq: the corrector, attached to the diagnosed layer (`RollingQ.attach`).
        diagnostics: the `AttentionDiagnostics` of that layer (listed before this callback).
        anchor: ``"running"``: the epoch's running statistics are the anchor (no extra pass);
            ``"frozen"``: a pass over ``anchor_data`` with the model frozen (the reference).
        anchor_data: for ``anchor="frozen"``, what to feed the model: an iterable of batches
            (re-iterated at every check) or a function returning one.
        inputs: ``inputs(batch) -> model inputs`` when the batches also hold targets.
    """

    def __init__(
        self,
        rollingq: RollingQ,
        diagnostics: AttentionDiagnostics,
        *,
        anchor: Literal["running", "frozen"] = "running",
        anchor_data: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
        inputs: Callable[[Any], Any] | None = None,
    ) -> None:
        if anchor not in ("running", "frozen"):
            raise ProbeConfigError(
                f"RollingQCallback: expected anchor 'running' or 'frozen', received {anchor!r}."
            )
        if anchor == "frozen" and anchor_data is None:
            raise ProbeConfigError(
                "RollingQCallback: anchor='frozen' needs anchor_data=<the batches of the frozen "
                "pass> (an iterable, or a function returning one); or use anchor='running'."
            )
        if not diagnostics.key_stats:
            raise ProbeConfigError(
                "RollingQCallback: the AttentionDiagnostics has key_stats=False; RollingQ needs "
                "the query and key statistics."
            )
        self.rollingq = rollingq
        self.diagnostics = diagnostics
        self.anchor = anchor
        self.anchor_data = anchor_data
        self.inputs = inputs

    def on_fit_start(self, model: nn.Module) -> None:
        if self.rollingq not in list(model.modules()):
            raise ProbeConfigError(
                "RollingQCallback: the RollingQ corrector is not part of the model; attach it "
                f"first: rollingq.attach(model, {self.diagnostics.layer!r})."
            )
        self.model = model

    def on_epoch_end(self, epoch: int, row: Mapping[str, Any]) -> dict[str, Any]:
        stats = self.diagnostics.air_stats
        if stats is None:
            raise ProbeConfigError(
                "RollingQCallback: no statistics from the AttentionDiagnostics this epoch; list "
                "the diagnostics before this callback."
            )
        frozen = self._frozen if self.anchor == "frozen" else None
        return rollingq_columns(self.rollingq, stats, epoch, frozen)

    def _frozen(self) -> LayerResult:
        data = self.anchor_data
        batches: Iterable[Any] = data() if callable(data) else data  # type: ignore[assignment]
        d = self.diagnostics
        return anchor_statistics(
            self.model,
            batches,
            modalities=d.layout,
            layer=d.layer,
            query=d.query,
            inputs=self.inputs,
        )
