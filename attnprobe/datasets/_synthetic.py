"""The controlled synthetic multimodal benchmark (``docs/guides/datasets.md``).

Two modalities of token sequences built from class prototypes, ``x_m = s_m·P_m[c_m(y)] +
σ_m·ε``, named by what they know: ``coarse`` (``a`` in the formulas below) and ``fine``
(``b``). One knob per property of the balanced-multimodal-learning literature:

- **dataset-level dominance**: modality ``a`` has a high signal-to-noise ratio (learned fast),
  ``b`` a low one;
- **complementarity**: ``a`` carries only a coarse label (``y // (C / coarse_classes)``), so
  ``a`` alone tops out at ``coarse_classes / C`` of the classes told apart within a coarse
  group; ``b`` carries the full label but weakly, so both together beat either one;
- **token counts**: ``L_a`` and ``L_b`` differ;
- **learning-speed asymmetry** (optional, ``sign_flip``): ``b``'s signal gets a random sign
  per sample, so its class evidence is non-linear (an XOR of the sign and the prototype);
- **per-sample quality**: a fraction of the *training* samples has one modality corrupted at a
  uniform level ``λ`` (``x̃ = (1 − λ)·x + λ·ε·σ_x``), recorded in ``quality``.

The prototypes are drawn from ``seed`` alone, the samples from ``(seed, split)``, so the
splits of one seed share a task and never share a sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnprobe.datasets._base import MultimodalDataset
from attnprobe.errors import AttnProbeError

__all__ = ["SPLITS", "SyntheticConfig", "synthetic"]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SyntheticConfig:
    """The knobs of `synthetic` (defaults: the settings of the bundled RollingQ example)."""

    num_classes: int = 8
    coarse_classes: int = 4
    """Classes modality ``a`` tells apart (it sees ``y // (num_classes / coarse_classes)``)."""
    lengths: tuple[int, int] = (8, 16)
    """Tokens ``(L_a, L_b)``."""
    dims: tuple[int, int] = (16, 16)
    """Token features ``(d_a, d_b)``."""
    signal: tuple[float, float] = (1.0, 0.25)
    """Prototype scales ``(s_a, s_b)`` (prototype entries are N(0, 1))."""
    noise: tuple[float, float] = (1.0, 1.0)
    """Token noise ``(σ_a, σ_b)``."""
    sign_flip: bool = False
    """Give ``b``'s signal a random sign per sample (non-linear class evidence)."""
    corrupt_fraction: float = 0.3
    """Fraction of *training* samples with one modality (at random) corrupted at ``λ ~ U(0,
    1)``; validation and test samples are clean (corrupt them with
    `MultimodalDataset.corrupted`)."""
    names: tuple[str, str] = ("coarse", "fine")
    """Modality names: ``a`` (strong, coarse label) and ``b`` (weak, full label)."""
    sizes: tuple[int, int, int] = (4000, 1000, 2000)
    """Samples in the train, val and test splits."""

    def __post_init__(self) -> None:
        if self.num_classes < 2 or self.coarse_classes < 1:
            raise AttnProbeError(
                f"SyntheticConfig: expected num_classes >= 2 and coarse_classes >= 1, received "
                f"{self.num_classes} and {self.coarse_classes}."
            )
        if self.num_classes % self.coarse_classes:
            raise AttnProbeError(
                f"SyntheticConfig: num_classes ({self.num_classes}) must be a multiple of "
                f"coarse_classes ({self.coarse_classes})."
            )
        if min(*self.lengths, *self.dims, *self.sizes) < 1 or min(self.noise) < 0:
            raise AttnProbeError(
                f"SyntheticConfig: expected positive lengths, dims and sizes and noise >= 0, "
                f"received lengths={self.lengths}, dims={self.dims}, sizes={self.sizes}, "
                f"noise={self.noise}."
            )
        if not 0.0 <= self.corrupt_fraction <= 1.0 or len(set(self.names)) != 2:
            raise AttnProbeError(
                f"SyntheticConfig: expected corrupt_fraction in [0, 1] and two distinct names, "
                f"received {self.corrupt_fraction} and {self.names}."
            )


def synthetic(
    split: str = "train",
    *,
    seed: int = 0,
    num_samples: int | None = None,
    config: SyntheticConfig | None = None,
) -> MultimodalDataset:
    """One split of the synthetic benchmark.

    Args:
        split: ``"train"`` (with the per-sample corruption of ``config.corrupt_fraction``),
            ``"val"`` or ``"test"`` (clean).
        seed: the task (prototypes) and, with the split, the samples.
        num_samples: samples (default ``config.sizes`` for the split), balanced over classes.
        config: the knobs (`SyntheticConfig`).

    Examples:
        >>> import attnprobe.datasets as ds
        >>> test = ds.synthetic("test", seed=1, num_samples=80)
        >>> test.lengths, test.num_classes
        ({'coarse': 8, 'fine': 16}, 8)
        >>> float(test.quality["coarse"].min())  # test samples are clean
        1.0
    """
    cfg = config or SyntheticConfig()
    if split not in SPLITS:
        raise AttnProbeError(f"synthetic: expected split in {list(SPLITS)}, received {split!r}.")
    n = cfg.sizes[SPLITS.index(split)] if num_samples is None else num_samples
    if n < 1:
        raise AttnProbeError(f"synthetic: expected num_samples >= 1, received {n}.")
    task = torch.Generator().manual_seed(seed)
    per_coarse = cfg.num_classes // cfg.coarse_classes
    (la, lb), (da, db) = cfg.lengths, cfg.dims
    proto_a = torch.randn(cfg.coarse_classes, la, da, generator=task)  # (C_coarse, La, da)
    proto_b = torch.randn(cfg.num_classes, lb, db, generator=task)  # (C, Lb, db)
    g = torch.Generator().manual_seed(seed * 1_000_003 + 7_919 * (SPLITS.index(split) + 1))
    y = torch.arange(n) % cfg.num_classes
    y = y[torch.randperm(n, generator=g)]  # (N,) balanced, shuffled
    (sa, sb), (na, nb) = cfg.signal, cfg.noise
    xa = sa * proto_a[y // per_coarse] + na * torch.randn(n, la, da, generator=g)  # (N, La, da)
    sign = torch.ones(n, 1, 1)
    if cfg.sign_flip:
        sign = torch.randint(0, 2, (n, 1, 1), generator=g).float() * 2 - 1  # (N, 1, 1) ±1
    xb = sb * sign * proto_b[y] + nb * torch.randn(n, lb, db, generator=g)  # (N, Lb, db)
    a, b = cfg.names
    data = MultimodalDataset(f"synthetic/{split}", {a: xa, b: xb}, y, cfg.num_classes)
    if split == "train" and cfg.corrupt_fraction > 0:
        data = data.corrupted(fraction=cfg.corrupt_fraction, seed=seed * 1_000_003 + 1)
    return data
