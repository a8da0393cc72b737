"""Run a model over batches for evaluation, with or without a probe attached.

`run_probed` is the one loop behind every evaluation pass of the library — the frozen pass of
RollingQ (`attnprobe.rollingq.anchor_statistics`), the noise sweep (`attnprobe.noise_sweep`),
`attnprobe.self_check` and the training wrapper's evaluation: the model in eval mode, no
gradients, a probe attached, the model called on every batch, the probe's statistics summed over
DDP ranks, and the model's train/eval mode restored afterwards, also after an exception.
`run_model` is the same loop without a probe.

Examples:
    >>> import torch
    >>> from attnprobe.models import LateFusionTransformer
    >>> from attnprobe.runner import run_probed
    >>> model = LateFusionTransformer({"audio": 6, "video": 8}, {"audio": 4, "video": 3}, 5)
    >>> batches = [(torch.randn(8, 4, 6), torch.randn(8, 3, 8)) for _ in range(3)]
    >>> run = run_probed(model, batches, modalities=model.fusion_layout(), layers="fusion")
    >>> run.layer_names, run.result.layers[0].num_queries.tolist(), model.training
    (('fusion',), [24.0, 120.0, 96.0], True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attnprobe._calls import call_model
from attnprobe._probe import probe
from attnprobe.results import ProbeResult

__all__ = ["Call", "ProbedRun", "run_model", "run_probed"]

Call = Callable[[nn.Module, Any], Any]
"""``call(model, batch) -> anything``: runs the model on one batch itself (so that the probe
records it) and returns what the caller wants to keep from it, e.g. the number of correct
predictions."""


@dataclass(frozen=True)
class ProbedRun:
    """What `run_probed` returns."""

    result: ProbeResult
    """The probe's statistics over every batch (summed over DDP ranks unless ``sync=False``)."""
    layer_names: tuple[str, ...]
    """Paths of the probed modules (`attnprobe.Probe.layer_names`; ``""`` is the model
    itself)."""
    outputs: tuple[Any, ...]
    """What ``call`` returned for each batch, in order; empty when no ``call`` was given (the
    model's own outputs are not kept: they can be large)."""


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside; the previous train/eval mode restored on exit."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _run(model: nn.Module, batches: Iterable[Any], call: Call | None) -> tuple[Any, ...]:
    if call is None:
        for batch in batches:
            call_model(model, batch)
        return ()
    return tuple(call(model, batch) for batch in batches)


def run_model(
    model: nn.Module, batches: Iterable[Any], *, call: Call | None = None
) -> tuple[Any, ...]:
    """Run ``model`` on every batch in eval mode without gradients, restoring its mode after.

    The loop of `run_probed` without a probe (e.g. for a model with no attention layer to
    probe, evaluated like one with).

    Args:
        model: the model (its train/eval mode is restored, also after an exception).
        batches: one item per forward: a mapping (``model(**batch)``), a tuple
            (``model(*batch)``) or anything else (``model(batch)``).
        call: ``call(model, batch)`` instead of the call above; its return values are
            returned.

    Returns:
        What ``call`` returned for each batch (empty without ``call``).

    Examples:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Dropout(0.5))
        >>> x = torch.ones(2, 3)
        >>> outs = run_model(model, [x], call=lambda m, b: bool(torch.equal(m(b), b)))
        >>> outs, model.training
        ((True,), True)
    """
    with _evaluating(model):
        return _run(model, batches, call)


def run_probed(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    call: Call | None = None,
    sync: bool = True,
    **probe_options: Any,
) -> ProbedRun:
    """Run ``model`` on every batch under a probe, in eval mode without gradients.

    In order: the model switched to eval mode (dropout off), ``torch.no_grad()``, a probe
    ``attnprobe.probe(model, **probe_options)`` attached, the model called on each batch, the
    probe closed, `attnprobe.Probe.sync` (the statistics summed over DDP ranks; a no-op without
    ``torch.distributed``), the result taken, and the model's previous train/eval mode restored —
    also when a batch, ``call`` or the probe raises.

    Args:
        model: the model to run (a DDP wrapper is unwrapped by the probe).
        batches: one item per forward, iterated once: a mapping (``model(**batch)``), a tuple
            (``model(*batch)``) or anything else (``model(batch)``).
        call: ``call(model, batch)`` runs the model on a batch itself instead, for callers that
            need the outputs (accuracy, logits); its return values end up in
            `ProbedRun.outputs`. It must call ``model`` (the probe records those calls).
        sync: call `attnprobe.Probe.sync` before taking the result. Every rank must then run
            `run_probed`; pass False for a pass on one rank only, or to keep each rank's own
            statistics.
        **probe_options: the options of `attnprobe.probe` (``modalities`` is required;
            ``layers``, ``queries``, ``key_stats``, ``per_sample``, ``store_maps``, ...).

    Returns:
        A `ProbedRun`: the probe's ``result``, the probed ``layers`` and the ``outputs`` of
        ``call``.

    Raises:
        CaptureError: a selected layer produced no capture (as `attnprobe.Probe.result`).

    Examples:
        >>> import torch
        >>> from attnprobe.models import FusionAttention
        >>> layer = FusionAttention(dim=8)
        >>> batches = [torch.randn(4, 5, 8) for _ in range(2)]
        >>> run = run_probed(layer, batches, modalities={"cls": 1, "audio": 2, "video": 3},
        ...                  queries="cls", call=lambda m, x: m(x).shape[0])
        >>> run.outputs, run.result.layers[0].num_queries.tolist(), layer.training
        ((4, 4), [8.0], True)
    """
    with _evaluating(model):
        with probe(model, **probe_options) as p:
            outputs = _run(model, batches, call)
        if sync:
            p.sync()
        result = p.result()
    return ProbedRun(result, p.layer_names, outputs)
