"""The corruptions of the noise sweep, pure tensor math: mixing, ``x̃ = (1 − λ)·x + λ·ε·σ_x``
(the RollingQ paper's), and additive, ``x̃ = x + λ·ε·σ_x``.

It lives on its own, below the probe and the analyzers, so that the bundled datasets
(`attnprobe.datasets`) can corrupt their inputs without importing the probe machinery; it is
re-exported as `attnprobe.corruption.corrupt` and `attnprobe.analysis.corrupt`. The protocol and the
adaptability score built on it: ``docs/concepts/adaptability.md``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from attnprobe.errors import AnalysisError

__all__ = ["PROTOCOLS", "Protocol", "corrupt"]

Protocol = Literal["mix", "add"]
PROTOCOLS: tuple[Protocol, ...] = ("mix", "add")


def corrupt(
    x: Tensor,
    level: float | Tensor,
    generator: torch.Generator | None = None,
    protocol: Protocol = "mix",
) -> Tensor:
    """``x̃ = (1 − λ)·x + λ·ε·σ_x`` (``protocol="mix"``, the corruption protocol of the RollingQ
    paper) or ``x̃ = x + λ·ε·σ_x`` (``"add"``), with ``ε ~ N(0, 1)`` and ``σ_x`` the standard
    deviation of each sample's features (``docs/concepts/adaptability.md``, "Definition").

    Args:
        x: ``[B, ...]`` one modality's input.
        level: ``λ`` in ``[0, 1]``, one for the batch or a ``[B]`` tensor (one per sample):
            0 leaves a sample unchanged; with ``"mix"`` 1 is pure noise of the input's scale,
            with ``"add"`` noise as large as the input on top of it.
        generator: the random generator of ``ε`` (drawn on the CPU, then moved to ``x``'s
            device; `attnprobe.noise_sweep` seeds one per modality and level).
        protocol: ``"mix"`` or ``"add"``.

    Returns:
        ``[B, ...]`` the corrupted input, in ``x``'s dtype and device (``x`` itself for a
        scalar level 0).

    Raises:
        AnalysisError: a level outside ``[0, 1]``, or a level tensor that is not ``[B]``.

    Examples:
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
    if protocol not in PROTOCOLS:
        raise AnalysisError(f"corrupt: expected protocol 'mix' or 'add', received {protocol!r}.")
    keep = 0.0 if protocol == "add" else 1.0  # x̃ = (1 − keep·λ)·x + λ·ε·σ_x
    sigma = x.flatten(1).std(dim=1).view(-1, *([1] * (x.dim() - 1)))  # (B, 1, ...)
    if not isinstance(level, Tensor):
        if not 0.0 <= level <= 1.0:
            raise AnalysisError(f"corrupt: expected a noise level in [0, 1], received {level}.")
        if level == 0.0:
            return x
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu")
        return (1.0 - keep * level) * x + level * noise.to(x.device) * sigma
    if level.shape != (x.shape[0],):
        raise AnalysisError(
            f"corrupt: expected one level per sample (shape ({x.shape[0]},)), received shape "
            f"{tuple(level.shape)}; pass a float for one level for the whole batch."
        )
    if bool(((level < 0) | (level > 1) | level.isnan()).any()):
        raise AnalysisError(f"corrupt: expected noise levels in [0, 1], received {level.tolist()}.")
    lam = level.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))  # (B, 1, ...)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    mixed = (1.0 - keep * lam) * x + lam * noise * sigma  # (B, ...)
    return torch.where(lam == 0, x, mixed)  # level 0: untouched
