"""Dynamic adaptability: does attention follow per-sample modality quality? (``METRICS.md``)

`noise_sweep` corrupts one modality at a time at noise levels λ, runs the model under a probe
that keeps per-sample masses, and returns the attention share every sample gives each modality,
the accuracy per level and corrupted modality, and the adaptability score: the Pearson and
Spearman correlations (scipy, with p-values) over (sample, level) pairs between the share given
to the corrupted modality and its quality ``1 − λ``, and ``ΔM_m = M_m(clean) − M_m(most
corrupted)``. A model whose attention is dynamic moves attention away from a corrupted
modality (positive correlation); one with "deactivated dynamics" (RollingQ, Ni et al. 2025,
arXiv 2506.11465) does not (correlation ≈ 0).

The model and its input structure are the user's: a small function maps a batch, the modality
to corrupt and the level to the model's inputs and targets. `corrupt` implements the default
corruption ``x̃ = (1 − λ)·x + λ·ε·σ_x``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from attnprobe._calls import call_model
from attnprobe._errors import AnalysisError
from attnprobe.labels import InputLayout, ModalityLayout
from attnprobe.probe import probe

__all__ = ["NoiseSweep", "corrupt", "noise_sweep"]

Prepare = Callable[[Any, str | None, float, torch.Generator], tuple[Any, Tensor | None]]
"""``prepare(batch, modality, level, generator) -> (inputs, targets)``: the model's inputs with
``modality`` corrupted at ``level`` (``modality`` None or ``level`` 0: clean), and the targets
(class indices) or None."""


def corrupt(x: Tensor, level: float | Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``x̃ = (1 − λ)·x + λ·ε·σ_x`` with ``ε ~ N(0, 1)`` and ``σ_x`` the standard deviation of
    each sample's features (``METRICS.md``, noise sweep; the paper's corruption protocol).

    Args:
        x: ``[B, ...]`` one modality's input.
        level: ``λ`` in ``[0, 1]``, one for the batch or a ``[B]`` tensor (one per sample):
            0 leaves a sample unchanged, 1 is pure noise of the same scale.
        generator: the random generator (seeded by `noise_sweep`).

    Example:
        >>> import torch
        >>> x = torch.randn(4, 3, 5)
        >>> bool(torch.equal(corrupt(x, 0.0), x))
        True
        >>> corrupt(x, 1.0, torch.Generator().manual_seed(0)).shape
        torch.Size([4, 3, 5])
        >>> y = corrupt(x, torch.tensor([0.0, 1.0, 0.5, 0.0]), torch.Generator().manual_seed(0))
        >>> bool(torch.equal(y[0], x[0])), bool(torch.equal(y[3], x[3]))
        (True, True)
    """
    sigma = x.flatten(1).std(dim=1).view(-1, *([1] * (x.dim() - 1)))  # (B, 1, ...)
    if not isinstance(level, Tensor):
        if not 0.0 <= level <= 1.0:
            raise AnalysisError(f"corrupt: expected a noise level in [0, 1], received {level}.")
        if level == 0.0:
            return x
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu")
        return (1.0 - level) * x + level * noise.to(x.device) * sigma
    if level.shape != (x.shape[0],):
        raise AnalysisError(
            f"corrupt: expected one level per sample (shape ({x.shape[0]},)), received shape "
            f"{tuple(level.shape)}; pass a float for one level for the whole batch."
        )
    if bool(((level < 0) | (level > 1) | level.isnan()).any()):
        raise AnalysisError(f"corrupt: expected noise levels in [0, 1], received {level.tolist()}.")
    lam = level.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))  # (B, 1, ...)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    return torch.where(lam == 0, x, (1.0 - lam) * x + lam * noise * sigma)  # level 0: untouched


@dataclass(frozen=True)
class NoiseSweep:
    """What `noise_sweep` measured."""

    samples: pd.DataFrame
    """One row per (corrupted modality, level, sample, key modality): ``corrupted``,
    ``level``, ``sample``, ``key_modality``, ``share``, ``correct`` (NaN without targets)."""
    query: str
    """The query group whose attention is measured."""

    def samples_frame(self) -> pd.DataFrame:
        """A copy of `samples`."""
        return self.samples.copy()

    def to_frame(self) -> pd.DataFrame:
        """Per corrupted modality, level and key modality: mean ``share`` with its standard
        error ``share_sem``, ``accuracy`` and ``num_samples``."""
        keys = ["corrupted", "level", "key_modality"]
        grouped = self.samples.groupby(keys, sort=False)
        frame = grouped["share"].agg(["mean", "std", "count"]).reset_index()
        frame = frame.rename(columns={"mean": "share", "count": "num_samples"})
        frame["share_sem"] = frame["std"] / np.sqrt(frame["num_samples"])
        frame["accuracy"] = grouped["correct"].mean().to_numpy()
        return frame[
            ["corrupted", "level", "key_modality", "share", "share_sem", "accuracy", "num_samples"]
        ]

    def adaptability(self) -> pd.DataFrame:
        """Per corrupted modality ``m``: Pearson ``r`` and Spearman ``rho`` (with p-values) over
        (sample, level) pairs between the share given to ``m`` and its quality ``1 − λ``, and
        ``delta_mass``, the mean share of ``m`` at the lowest level minus that at the highest
        (``METRICS.md``'s ``ΔM_m = M_m(clean) − M_m(m corrupted)`` taken on shares, so that
        key groups left out of shares, e.g. ``cls``, do not enter it)."""
        from scipy import stats  # loads on first use: `import attnprobe` stays light

        rows = []
        for modality, part in self.samples.groupby("corrupted", sort=False):
            own = part[part["key_modality"] == modality]
            share = own["share"].to_numpy(dtype=float)
            quality = 1.0 - own["level"].to_numpy(dtype=float)
            finite = np.isfinite(share)
            share, quality = share[finite], quality[finite]
            if len(share) < 3 or np.ptp(share) == 0 or np.ptp(quality) == 0:
                pearson = spearman = (math.nan, math.nan)
            else:
                p = stats.pearsonr(quality, share)
                s = stats.spearmanr(quality, share)
                pearson = (float(p.statistic), float(p.pvalue))
                spearman = (float(s.statistic), float(s.pvalue))
            means = own.groupby("level")["share"].mean()
            rows.append(
                (
                    modality,
                    pearson[0],
                    pearson[1],
                    spearman[0],
                    spearman[1],
                    float(means.iloc[0] - means.iloc[-1]),
                    int(finite.sum()),
                )
            )
        return pd.DataFrame(
            rows,
            columns=[
                "corrupted",
                "pearson_r",
                "pearson_p",
                "spearman_rho",
                "spearman_p",
                "delta_mass",
                "num_pairs",
            ],
        )

    def __repr__(self) -> str:
        levels = [float(x) for x in sorted(self.samples["level"].unique())]
        return (
            f"NoiseSweep(query={self.query!r}, corrupted={list(self.samples['corrupted'].unique())}"
            f", levels={levels})"
        )


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
    accuracy (``METRICS.md``, "Dynamic adaptability").

    Args:
        model: the model (run in eval mode under ``torch.no_grad()``; its mode is restored).
        batches: the evaluation batches; iterated once per (modality, level), so a list or a
            ``DataLoader`` without shuffling.
        prepare: ``prepare(batch, modality, level, generator) -> (inputs, targets)``: the
            model's inputs (a tuple of positional arguments, a mapping of keyword arguments or
            one tensor) with ``modality`` corrupted at ``level`` — typically with `corrupt` —
            and the class targets (or None). The generator is seeded per (modality, level).
        modalities: the layout of the probed layer's tokens (as for `probe`).
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
        A `NoiseSweep`: ``to_frame()`` (share and accuracy per level), ``adaptability()``
        (correlations, ``ΔM``), ``samples_frame()``.
    """
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
    was_training = model.training
    model.eval()
    try:
        for m_index, modality in enumerate(corrupted):
            for l_index, level in enumerate(levels_t):
                generator = torch.Generator().manual_seed(seed + 7919 * m_index + 104729 * l_index)
                correct: list[Tensor] = []
                with (
                    probe(
                        model,
                        modalities=modalities,
                        layers=layer,
                        queries=query,
                        per_sample=True,
                        key_stats=False,
                    ) as p,
                    torch.no_grad(),
                ):
                    for batch in batches:
                        inputs, targets = prepare(batch, modality, level, generator)
                        output = call_model(model, inputs)
                        if targets is not None:
                            predicted = (logits or _logits)(output).argmax(-1)
                            correct.append((predicted.cpu() == targets.cpu()).float())
                result = p.result()
                if len(result.layers) != 1:
                    raise AnalysisError(
                        f"noise_sweep: {len(result.layers)} layers were probed "
                        f"({list(result.names)}); pass layer=... to pick the fusion layer."
                    )
                found = result.layers[0]
                assert found.sample_mass is not None
                mass = found.sample_mass[:, :, 0].double()  # (N, H, Gk) for the query group
                keep = torch.tensor([g in included for g in found.key_groups])
                share = mass[..., keep] / mass[..., keep].sum(-1, keepdim=True)  # (N, H, Gk')
                share = share.mean(1)  # (N, Gk'), mean over heads
                hits = torch.cat(correct) if correct else torch.full((len(share),), math.nan)
                if len(hits) != len(share):
                    raise AnalysisError(
                        f"noise_sweep: {len(share)} samples reached the layer but there are "
                        f"{len(hits)} targets; prepare() must return one target per sample."
                    )
                groups = [g for g in found.key_groups if g in included]
                for i in range(len(share)):
                    for k, group in enumerate(groups):
                        rows.append((modality, level, i, group, float(share[i, k]), float(hits[i])))
    finally:
        model.train(was_training)
    samples = pd.DataFrame(
        rows, columns=["corrupted", "level", "sample", "key_modality", "share", "correct"]
    )
    return NoiseSweep(samples, query)
