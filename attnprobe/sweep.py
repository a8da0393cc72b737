"""`noise_sweep`: run a model under a probe with each modality corrupted at noise levels λ.

The measurement side of dynamic adaptability (``docs/concepts/adaptability.md``): it runs the
model (through `attnprobe.runner.run_probed`) and hands the per-sample shares and hits to
`attnprobe.analysis.NoiseSweep`, which holds the analysis — the share per level, the
correlations of share and quality, ``ΔM``. The model and its input structure are the user's: a
small function maps a batch, the modality to corrupt and the level to the model's inputs and
targets, typically with `attnprobe.corruption.corrupt` (``x̃ = (1 − λ)·x + λ·ε·σ_x``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from attnprobe._calls import call_model
from attnprobe.analysis.adaptability import NoiseSweep
from attnprobe.errors import AnalysisError
from attnprobe.labels import InputLayout, ModalityLayout
from attnprobe.metrics import shares
from attnprobe.runner import run_probed

if TYPE_CHECKING:
    pass

__all__ = ["Prepare", "noise_sweep"]

Prepare = Callable[[Any, str | None, float, torch.Generator], tuple[Any, Tensor | None]]
"""``prepare(batch, modality, level, generator) -> (inputs, targets)``: the model's inputs with
``modality`` corrupted at ``level`` (``modality`` None or ``level`` 0: clean), and the targets
(class indices) or None."""


def _logits(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if hasattr(output, "logits") and isinstance(output.logits, Tensor):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise AnalysisError(
        f"noise_sweep: expected the model to return logits (a tensor, a tuple starting with "
        f"one, or an object with .logits), received {type(output).__name__}; pass "
        "logits=lambda output: ... to extract them."
    )


def _hits(
    prepare: Prepare,
    modality: str,
    level: float,
    generator: torch.Generator,
    logits: Callable[[Any], Tensor],
    model: nn.Module,
    batch: Any,
) -> Tensor | None:
    """One batch of the sweep: ``[B]`` 1.0 where the prediction is right (None without
    targets)."""
    inputs, targets = prepare(batch, modality, level, generator)
    output = call_model(model, inputs)
    if targets is None:
        return None
    predicted = logits(output).argmax(-1)  # (B,)
    return (predicted.cpu() == targets.cpu()).float()


def noise_sweep(
    model: nn.Module,
    batches: Iterable[Any],
    prepare: Prepare,
    *,
    modalities: ModalityLayout | Mapping[str, int] | InputLayout,
    corrupted: Sequence[str],
    layer: str | None = None,
    query: str = "cls",
    levels: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    exclude: Sequence[str] = ("cls",),
    logits: Callable[[Any], Tensor] | None = None,
    seed: int = 0,
) -> NoiseSweep:
    """Corrupt each modality in turn at each level, and record per-sample attention shares and
    accuracy (``docs/concepts/adaptability.md``).

    Args:
        model: the model (run in eval mode under ``torch.no_grad()``; its mode is restored).
        batches: the evaluation batches; iterated once per (modality, level), so a list or a
            ``DataLoader`` without shuffling.
        prepare: ``prepare(batch, modality, level, generator) -> (inputs, targets)``: the
            model's inputs (a tuple of positional arguments, a mapping of keyword arguments or
            one tensor) with ``modality`` corrupted at ``level`` — typically with
            `attnprobe.corruption.corrupt` — and the class targets (or None). The generator is
            seeded per (modality, level).
        modalities: the layout of the probed layer's tokens (as for `attnprobe.probe`).
        corrupted: the modalities to corrupt, one at a time (names the ``prepare`` function
            understands and that are key groups of the layout).
        layer: the attention module whose shares are measured (default: the only one).
        query: the query group whose attention is measured (e.g. the fusion CLS token).
        levels: the noise levels ``λ``.
        exclude: key groups left out of shares (special tokens).
        logits: how to get logits from the model's output (default: the output, its first
            element or its ``.logits``).
        seed: seed of the corruption noise.

    Returns:
        A `attnprobe.analysis.NoiseSweep`: ``to_frame()`` (share and accuracy per level),
        ``adaptability()`` (correlations, ``ΔM``), ``samples_frame()``.

    Examples:
        >>> import torch, attnprobe as ap
        >>> from attnprobe.models import LateFusionTransformer
        >>> model = LateFusionTransformer({"audio": 6, "video": 8}, {"audio": 4, "video": 3}, 5)
        >>> g = torch.Generator().manual_seed(0)
        >>> data = [((torch.randn(8, 4, 6, generator=g), torch.randn(8, 3, 8, generator=g)),
        ...          torch.randint(0, 5, (8,), generator=g)) for _ in range(2)]
        >>> def prepare(batch, modality, level, generator):
        ...     (audio, video), y = batch
        ...     if modality == "audio":
        ...         audio = ap.corruption.corrupt(audio, level, generator)
        ...     if modality == "video":
        ...         video = ap.corruption.corrupt(video, level, generator)
        ...     return (audio, video), y
        >>> sweep = noise_sweep(model, data, prepare, modalities=model.fusion_layout(),
        ...                     corrupted=["audio"], layer="fusion", levels=[0.0, 1.0])
        >>> sweep.to_frame()[["corrupted", "level", "key_modality", "num_samples"]].shape
        (4, 4)
    """
    import pandas as pd

    levels_t = tuple(float(x) for x in levels)
    if not levels_t or any(not 0.0 <= x <= 1.0 for x in levels_t):
        raise AnalysisError(f"noise_sweep: expected levels in [0, 1], received {list(levels)}.")
    if not corrupted:
        raise AnalysisError("noise_sweep: expected at least one modality in corrupted=[...].")
    names = modalities.names if not isinstance(modalities, Mapping) else tuple(modalities)
    for name in [*corrupted, query]:
        if name not in names:
            raise AnalysisError(
                f"noise_sweep: {name!r} is not a group of the layout; groups: {list(names)}."
            )
    included = [g for g in names if g not in set(exclude)]
    for name in corrupted:
        if name not in included:
            raise AnalysisError(f"noise_sweep: corrupted modality {name!r} is in exclude.")
    rows: list[tuple[str, float, int, str, float, float]] = []
    for m_index, modality in enumerate(corrupted):
        for l_index, level in enumerate(levels_t):
            generator = torch.Generator().manual_seed(seed + 7919 * m_index + 104729 * l_index)
            run = run_probed(
                model,
                batches,
                call=functools.partial(
                    _hits, prepare, modality, level, generator, logits or _logits
                ),
                sync=False,  # per-sample rows stay per rank; a sweep may run on one rank only
                modalities=modalities,
                layers=layer,
                queries=query,
                per_sample=True,
                key_stats=False,
            )
            result = run.result
            if len(result.layers) != 1:
                raise AnalysisError(
                    f"noise_sweep: {len(result.layers)} layers were probed "
                    f"({[x.name for x in result.layers]}); pass layer=... to pick the fusion layer."
                )
            found = result.layers[0]
            groups = [g for g in found.key_groups if g in included]
            share = shares(found, query, groups, per_sample=True)  # (N, H, Gk')
            share = share.mean(1)  # (N, Gk'), mean over heads
            correct = [hits for hits in run.outputs if hits is not None]
            hits = torch.cat(correct) if correct else torch.full((len(share),), math.nan)
            if len(hits) != len(share):
                raise AnalysisError(
                    f"noise_sweep: {len(share)} samples reached the layer but there are "
                    f"{len(hits)} targets; prepare() must return one target per sample."
                )
            for i in range(len(share)):
                for k, group in enumerate(groups):
                    rows.append((modality, level, i, group, float(share[i, k]), float(hits[i])))
    samples = pd.DataFrame(
        rows, columns=["corrupted", "level", "sample", "key_modality", "share", "correct"]
    )
    return NoiseSweep(samples, query)
