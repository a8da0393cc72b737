"""`MultimodalDataset`: per-modality token tensors, targets and per-sample quality."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from attnprobe.corruption import Protocol, corrupt
from attnprobe.errors import AttnProbeError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["MultimodalDataset"]


def _fail(message: str) -> AttnProbeError:
    return AttnProbeError(f"MultimodalDataset: {message}")


@dataclass(frozen=True, eq=False)
class MultimodalDataset:
    """A classification set with one token tensor per modality and the known per-sample
    quality of each modality.

    Items are ``((x_1[i], ..., x_M[i]), target[i])``, the format `attnprobe.training.Trainer`
    and a ``DataLoader`` take. ``quality[m][i]`` is the fraction of modality ``m``'s signal left
    in sample ``i``: 1 for a clean sample, ``(1 − λ)`` after `corrupted` at level ``λ`` (the
    corruption ``x̃ = (1 − λ)·x + λ·ε·σ_x`` of `attnprobe.corruption.corrupt`;
    ``docs/concepts/adaptability.md``); it is the ground truth an adaptive fusion layer should
    follow.

    Examples:
        >>> import attnprobe.datasets as ds
        >>> test = ds.synthetic("test", num_samples=64)
        >>> test
        MultimodalDataset('synthetic/test', 64 samples, 8 classes, coarse=[8, 16], fine=[16, 16])
        >>> (coarse, fine), y = test[0]
        >>> tuple(coarse.shape), tuple(fine.shape), int(y) in range(8)
        ((8, 16), (16, 16), True)
        >>> noisy = test.corrupted("fine", 1.0)  # every sample's fine tokens replaced by noise
        >>> float(noisy.quality["fine"].max()), float(noisy.quality["coarse"].min())
        (0.0, 1.0)
    """

    name: str
    inputs: Mapping[str, Tensor]
    """Per modality ``[N, L_m, d_m]`` float32 tokens, in the order a model takes them."""
    targets: Tensor
    """``[N]`` int64 class indices."""
    num_classes: int
    quality: Mapping[str, Tensor] = field(default_factory=dict)
    """Per modality ``[N]`` float32 in ``[0, 1]`` (missing modalities: all 1)."""

    def __post_init__(self) -> None:
        if not self.inputs:
            raise _fail("expected at least one modality in inputs, received none.")
        n = self.targets.shape[0] if self.targets.dim() == 1 else -1
        if n < 0 or self.targets.dtype != torch.int64:
            raise _fail(
                f"expected targets as an int64 tensor of shape [N], received dtype "
                f"{self.targets.dtype} and shape {tuple(self.targets.shape)}."
            )
        for m, x in self.inputs.items():
            if x.dim() != 3 or x.shape[0] != n or not x.is_floating_point():
                raise _fail(
                    f"expected inputs[{m!r}] as a float tensor [N={n}, L, d], received dtype "
                    f"{x.dtype} and shape {tuple(x.shape)}."
                )
        if n and not 0 <= int(self.targets.min()) <= int(self.targets.max()) < self.num_classes:
            raise _fail(
                f"expected targets in [0, {self.num_classes}), received values from "
                f"{int(self.targets.min())} to {int(self.targets.max())}."
            )
        unknown = set(self.quality) - set(self.inputs)
        if unknown:
            raise _fail(f"quality names modalities {sorted(unknown)} that have no inputs.")
        full = {m: self.quality.get(m, torch.ones(n)).float() for m in self.inputs}
        for m, q in full.items():
            if q.shape != (n,):
                raise _fail(f"expected quality[{m!r}] of shape [{n}], received {tuple(q.shape)}.")
        object.__setattr__(self, "inputs", dict(self.inputs))
        object.__setattr__(self, "quality", full)

    # -- shape -----------------------------------------------------------------------------
    @property
    def modalities(self) -> tuple[str, ...]:
        """Modality names, in input order."""
        return tuple(self.inputs)

    @property
    def lengths(self) -> dict[str, int]:
        """Tokens per modality (``lengths`` of `attnprobe.models.LateFusionTransformer`)."""
        return {m: int(x.shape[1]) for m, x in self.inputs.items()}

    @property
    def input_dims(self) -> dict[str, int]:
        """Token feature size per modality (``input_dims`` of the reference models)."""
        return {m: int(x.shape[2]) for m, x in self.inputs.items()}

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def __getitem__(self, index: int) -> tuple[tuple[Tensor, ...], Tensor]:
        return tuple(x[index] for x in self.inputs.values()), self.targets[index]

    def __repr__(self) -> str:
        shapes = ", ".join(f"{m}={list(x.shape[1:])}" for m, x in self.inputs.items())
        return (
            f"MultimodalDataset({self.name!r}, {len(self)} samples, {self.num_classes} classes, "
            f"{shapes})"
        )

    # -- views -------------------------------------------------------------------------------
    def batches(self, batch_size: int = 256) -> Iterator[tuple[tuple[Tensor, ...], Tensor]]:
        """``(inputs, targets)`` batches in order (for evaluation and `attnprobe.noise_sweep`)."""
        for start in range(0, len(self), batch_size):
            part = slice(start, start + batch_size)
            yield tuple(x[part] for x in self.inputs.values()), self.targets[part]

    def subset(self, indices: Sequence[int] | Tensor, name: str | None = None) -> MultimodalDataset:
        """The samples at ``indices`` (in that order)."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        return MultimodalDataset(
            name or self.name,
            {m: x[index] for m, x in self.inputs.items()},
            self.targets[index],
            self.num_classes,
            {m: q[index] for m, q in self.quality.items()},
        )

    def corrupted(
        self,
        modality: str | None = None,
        level: float | None = None,
        *,
        fraction: float = 1.0,
        seed: int = 0,
        protocol: Protocol = "mix",
    ) -> MultimodalDataset:
        """A copy with per-sample corruption ``x̃ = (1 − λ)·x + λ·ε·σ_x`` (``protocol="mix"``)
        or ``x̃ = x + λ·ε·σ_x`` (``"add"``; `attnprobe.corruption.corrupt`).

        Args:
            modality: the modality to corrupt; None: a uniformly random one per sample (the
                "mixed" split).
            level: ``λ`` in ``[0, 1]``; None: uniform in ``[0, 1]`` per sample.
            fraction: the fraction of samples corrupted (chosen at random; the others stay
                clean).
            seed: seeds the choice of samples, modalities, levels and the noise.
            protocol: ``"mix"`` (the RollingQ paper's) or ``"add"``.

        The quality of a corrupted modality is multiplied by ``1 − λ`` (with ``"add"`` a
        nominal quality: the signal is still there, under noise of ``λ`` times its scale).
        """
        if modality is not None and modality not in self.inputs:
            raise _fail(
                f"cannot corrupt {modality!r}: the modalities are {list(self.inputs)}; pass one "
                "of them, or None for a random one per sample."
            )
        if level is not None and not 0.0 <= level <= 1.0:
            raise _fail(f"expected a corruption level in [0, 1] or None, received {level}.")
        if not 0.0 <= fraction <= 1.0:
            raise _fail(f"expected fraction in [0, 1], received {fraction}.")
        g = torch.Generator().manual_seed(seed)
        n = len(self)
        chosen = torch.rand(n, generator=g) < fraction  # (N,)
        which = torch.randint(len(self.inputs), (n,), generator=g)  # (N,)
        if level is None:
            lam = torch.rand(n, generator=g, dtype=torch.float64)  # (N,) uniform levels
        else:
            lam = torch.full((n,), float(level), dtype=torch.float64)  # (N,)
        inputs, quality = {}, {}
        for k, (m, x) in enumerate(self.inputs.items()):
            hit = chosen & ((which == k) if modality is None else torch.tensor(m == modality))
            per_sample = torch.where(hit, lam, torch.zeros_like(lam))  # (N,)
            inputs[m] = corrupt(x, per_sample.float(), g, protocol) if bool(hit.any()) else x
            quality[m] = self.quality[m] * (1.0 - per_sample.float())
        return MultimodalDataset(self.name, inputs, self.targets, self.num_classes, quality)

    def to_frame(self) -> pd.DataFrame:
        """One row per sample: ``sample``, ``target`` and ``quality_<m>`` per modality."""
        import pandas as pd

        frame = pd.DataFrame({"sample": np.arange(len(self)), "target": self.targets.numpy()})
        for m, q in self.quality.items():
            frame[f"quality_{m}"] = q.double().numpy()
        return frame
