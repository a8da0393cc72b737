"""The per-layer metrics, each defined once: pure functions of one layer's probe statistics.

Every function here reads a `LayerResult` (one layer of ``probe.result()``) or plain tensors and
returns float64 numbers; nothing touches a model or a probe. The analyzers
(`attnprobe.analysis`), the RollingQ corrector (`attnprobe.rollingq`) and the training wrapper
(`attnprobe.training`) all compute their shares, AIR and key gaps through these functions, so
that one formula gives one number everywhere.

- `shares`: ``M_m / Σ_n M_n``, a query group's attention mass on each key group ``m`` over the
  included key groups (``docs/concepts/attention-mass.md``); `mass_shares` is the same on a
  plain mass tensor.
- `cosines` and `air`: the attention imbalance rate ``AIR(a, b) = E_i cos(q̄_i, k̄ᵃ_i) −
  E_i cos(q̄_i, k̄ᵇ_i)`` of a query group, positive when ``a`` is favoured
  (``docs/concepts/statistics.md``, ``docs/concepts/rollingq.md``).
- `centroid_gap` and `cosine_gap`: ``1 − cos(μ_a, μ_b)`` of the mean keys
  (``docs/concepts/key-gap.md``).
- `attention_columns`: the per-epoch columns of a training run (shares, cosines, AIR, key gap)
  from the functions above.
- `group_indices` (`query_index`, `key_indices`): where the named groups sit in a layer's
  statistics, with an error naming the groups the layer has.

Shapes: ``H`` query heads, ``Hk`` key/value heads, ``Gq`` query groups, ``Gk`` key groups,
``M`` selected key groups, ``N`` samples, ``D`` head size.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

from attnprobe.errors import AnalysisError
from attnprobe.results import LayerResult

__all__ = [
    "air",
    "attention_columns",
    "centroid_gap",
    "cosine_gap",
    "cosines",
    "group_indices",
    "key_indices",
    "mass_shares",
    "query_index",
    "shares",
]


# -- where the groups are ----------------------------------------------------------------------
def query_index(layer: LayerResult, query: str, *, caller: str = "query_index") -> int:
    """The index of query group ``query`` in ``layer.query_groups``.

    Args:
        layer: one layer's statistics.
        query: a query group name (e.g. ``"cls"``).
        caller: the name error messages start with (the public function the user called).

    Raises:
        AnalysisError: the layer has no such query group (it was not in the layout, or the
            probe recorded other query groups only).

    Examples:
        >>> import torch, attnprobe as ap
        >>> from attnprobe.models import FusionAttention
        >>> layer = FusionAttention(dim=8).eval()
        >>> with ap.probe(layer, modalities={"cls": 1, "audio": 2, "video": 3}) as p:
        ...     _ = layer(torch.randn(2, 5, 8))
        >>> query_index(p.result().layers[0], "audio")
        1
    """
    if query not in layer.query_groups:
        raise AnalysisError(
            f"{caller}: layer {layer.name!r} has no query group {query!r} (query groups: "
            f"{list(layer.query_groups)}); probe it with queries={query!r} and a layout that "
            "names it."
        )
    return layer.query_groups.index(query)


def key_indices(
    layer: LayerResult, keys: Sequence[str], *, caller: str = "key_indices"
) -> list[int]:
    """The indices of the key groups ``keys`` in ``layer.key_groups``, in the order given.

    Args:
        layer: one layer's statistics.
        keys: key group names (at least one).
        caller: the name error messages start with.

    Raises:
        AnalysisError: ``keys`` is empty or names a group the layer does not have.

    Examples:
        >>> import torch, attnprobe as ap
        >>> from attnprobe.models import FusionAttention
        >>> layer = FusionAttention(dim=8).eval()
        >>> with ap.probe(layer, modalities={"cls": 1, "audio": 2, "video": 3}) as p:
        ...     _ = layer(torch.randn(2, 5, 8))
        >>> key_indices(p.result().layers[0], ["video", "audio"])
        [2, 1]
    """
    keys = list(keys)
    if not keys:
        raise AnalysisError(
            f"{caller}: expected at least one key group, received none; pass some of "
            f"{list(layer.key_groups)} (layer {layer.name!r})."
        )
    missing = [k for k in keys if k not in layer.key_groups]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise AnalysisError(
            f"{caller}: layer {layer.name!r} has no key group{plural} "
            f"{', '.join(repr(k) for k in missing)}; key groups: {list(layer.key_groups)}. "
            "Pass names of the probe's layout."
        )
    return [layer.key_groups.index(k) for k in keys]


def group_indices(
    layer: LayerResult, query: str, keys: Sequence[str], *, caller: str = "group_indices"
) -> tuple[int, list[int]]:
    """The query group's index and the key groups' indices in ``layer`` (`query_index`,
    `key_indices`).

    Args:
        layer: one layer's statistics.
        query: the query group (e.g. ``"cls"``).
        keys: the key groups, in the order the caller wants them.
        caller: the name error messages start with.

    Returns:
        ``(iq, [ik_1, ..., ik_M])``, so that ``layer.mass[:, iq][:, ik]`` is ``[H, M]``.

    Raises:
        AnalysisError: an unknown query group ("probe it with queries=...") or key group (the
            message lists the layer's key groups).

    Examples:
        >>> import torch, attnprobe as ap
        >>> from attnprobe.models import FusionAttention
        >>> layer = FusionAttention(dim=8).eval()
        >>> with ap.probe(layer, modalities={"cls": 1, "audio": 2, "video": 3}, queries="cls") as p:
        ...     _ = layer(torch.randn(2, 5, 8))
        >>> group_indices(p.result().layers[0], "cls", ["audio", "video"])
        (0, [1, 2])
    """
    return query_index(layer, query, caller=caller), key_indices(layer, keys, caller=caller)


# -- shares ------------------------------------------------------------------------------------
def mass_shares(mass: Tensor, included: Tensor | Sequence[bool] | None = None) -> Tensor:
    """``s_m = M_m / Σ_n M_n`` along the last dimension, the sum over the included groups.

    The share of attention mass (``docs/concepts/attention-mass.md``): how the attention that
    reached the included key groups splits among them. Excluded groups (special tokens such as
    ``cls``) get NaN and do not enter the sum; a row without mass on any included group is NaN.
    The sum is taken left to right in group order, so a share has the same bits on every device.

    Args:
        mass: ``[..., G]`` attention masses ``M`` (any float dtype; computed in float64).
        included: ``[G]`` which groups take part; None: all.

    Returns:
        ``[..., G]`` float64 shares, summing to 1 over the included groups of each row.

    Examples:
        >>> import torch
        >>> mass_shares(torch.tensor([[2.0, 1.0, 3.0]]), [False, True, True]).tolist()
        [[nan, 0.25, 0.75]]
    """
    mass = mass.double()
    if included is None:
        return mass / _total(mass)  # (..., G)
    keep = torch.as_tensor(included, dtype=torch.bool, device=mass.device)  # (G,)
    if keep.shape != mass.shape[-1:]:
        raise AnalysisError(
            f"mass_shares: expected one included flag per group ({mass.shape[-1]}), received "
            f"shape {tuple(keep.shape)}; pass a [G] boolean mask over the last dimension."
        )
    kept = torch.where(keep, mass, 0.0)  # (..., G), excluded groups contribute nothing
    share = kept / _total(kept)  # (..., G)
    return share.masked_fill(~keep, math.nan)


def _total(mass: Tensor) -> Tensor:
    """``[..., 1]`` the sum over the last dimension, added left to right in group order: the
    same bits on any device and backend (a vectorised ``sum`` may change the order)."""
    if mass.shape[-1] == 0:
        return mass.sum(-1, keepdim=True)  # (..., 1) zeros
    return functools.reduce(torch.add, mass.unbind(-1)).unsqueeze(-1)  # (..., 1)


def shares(
    layer: LayerResult, query: str, keys: Sequence[str], *, per_sample: bool = False
) -> Tensor:
    """Share of query group ``query``'s attention mass on each key group of ``keys``.

    ``s_m = M_m / Σ_{n ∈ keys} M_n`` per head (``docs/concepts/attention-mass.md``): ``keys`` are
    the included key groups, so groups left out (e.g. ``cls``) do not enter the sum.

    Args:
        layer: one layer's statistics.
        query: the query group (e.g. ``"cls"``).
        keys: the included key groups, in the order of the result's last dimension.
        per_sample: use each sample's own mass (probe with ``per_sample=True``) instead of the
            mass pooled over samples.

    Returns:
        ``[H, M]`` float64 shares (``[N, H, M]`` with ``per_sample``), summing to 1 over ``M``.

    Examples:
        >>> import torch, attnprobe as ap
        >>> from attnprobe.models import FusionAttention
        >>> layer = FusionAttention(dim=8, num_heads=2).eval()
        >>> with ap.probe(layer, modalities={"cls": 1, "audio": 2, "video": 3}, queries="cls") as p:
        ...     _ = layer(torch.randn(4, 5, 8))
        >>> s = shares(p.result().layers[0], "cls", ["audio", "video"])
        >>> tuple(s.shape), s.dtype, torch.allclose(s.sum(-1), torch.ones(2, dtype=s.dtype))
        ((2, 2), torch.float64, True)
    """
    iq, ik = group_indices(layer, query, keys, caller="shares")
    if not per_sample:
        return mass_shares(layer.mass[:, iq][:, ik])  # (H, M)
    if layer.sample_mass is None:
        raise AnalysisError(
            f"shares: layer {layer.name!r} has no per-sample masses; probe with "
            "per_sample=True, or pass per_sample=False for the pooled shares."
        )
    return mass_shares(layer.sample_mass[:, :, iq][..., ik])  # (N, H, M)


# -- AIR ---------------------------------------------------------------------------------------
def cosines(layer: LayerResult, query: str, keys: Sequence[str]) -> Tensor:
    """``E_i cos(q̄_i, k̄ᵐ_i)`` of query group ``query`` for each key group ``m`` of ``keys``.

    ``q̄_i`` is sample ``i``'s mean query of the group and ``k̄ᵐ_i`` its mean key of group ``m``;
    samples without tokens of both groups do not count (``docs/concepts/statistics.md``, "Per-
    sample mean-key cosines and AIR"). NaN where no sample counted.

    Args:
        layer: one layer's statistics (probed with ``key_stats=True``, the default).
        query: the query group.
        keys: the key groups, in the order of the result's last dimension.

    Returns:
        ``[H, M]`` float64 mean cosines.

    Examples:
        >>> import torch, attnprobe as ap
        >>> from attnprobe.models import FusionAttention
        >>> layer = FusionAttention(dim=8).eval()
        >>> with ap.probe(layer, modalities={"cls": 1, "audio": 2, "video": 3}, queries="cls") as p:
        ...     _ = layer(torch.randn(4, 5, 8))
        >>> c = cosines(p.result().layers[0], "cls", ["audio", "video"])
        >>> tuple(c.shape), bool(((c >= -1) & (c <= 1)).all())
        ((1, 2), True)
    """
    iq, ik = group_indices(layer, query, keys, caller="cosines")
    return layer.mean_cosine[:, iq][:, ik].double()  # (H, M)


def air(layer: LayerResult, query: str, a: str, b: str) -> Tensor:
    """The attention imbalance rate ``AIR = cos_a − cos_b`` of query group ``query``, per head.

    ``cos_m = E_i cos(q̄_i, k̄ᵐ_i)`` (`cosines`); positive when ``a`` is favoured (RollingQ, Ni
    et al. 2025, arXiv 2506.11465; ``docs/concepts/rollingq.md``).

    Args:
        layer: one layer's statistics (probed with ``key_stats=True``, the default).
        query: the query group (e.g. ``"cls"``).
        a: the first key group.
        b: the second key group.

    Returns:
        ``[H]`` float64 AIR (NaN where no sample had tokens of every group).

    Examples:
        >>> import torch, attnprobe as ap
        >>> from attnprobe.models import FusionAttention
        >>> layer = FusionAttention(dim=8, num_heads=2).eval()
        >>> with ap.probe(layer, modalities={"cls": 1, "audio": 2, "video": 3}, queries="cls") as p:
        ...     _ = layer(torch.randn(4, 5, 8))
        >>> result = p.result().layers[0]
        >>> value = air(result, "cls", "audio", "video")
        >>> value.shape, bool(torch.equal(value, -air(result, "cls", "video", "audio")))
        (torch.Size([2]), True)
    """
    cos = cosines(layer, query, [a, b])  # (H, 2)
    return cos[:, 0] - cos[:, 1]


# -- key gap -----------------------------------------------------------------------------------
def cosine_gap(mu_a: ArrayLike, mu_b: ArrayLike, *, zero: float = math.nan) -> float:
    """``1 − cos(μ_a, μ_b) = 1 − μ_aᵀμ_b / (‖μ_a‖ ‖μ_b‖)`` of two vectors, in float64.

    The formula behind `centroid_gap` (``docs/concepts/key-gap.md``): ``0`` for parallel
    vectors, ``1`` for orthogonal, ``2`` for opposite; clipped to ``[0, 2]`` against rounding.

    Args:
        mu_a: ``[D]`` the first vector (e.g. the mean key of group a).
        mu_b: ``[D]`` the second vector.
        zero: the value when either vector is zero (the angle is undefined): NaN by default.

    Returns:
        The gap as a Python float.

    Examples:
        >>> cosine_gap([1.0, 0.0], [0.0, 2.0]), cosine_gap([0.0, 3.0], [0.0, 1.0])
        (1.0, 0.0)
        >>> cosine_gap([0.0, 0.0], [1.0, 0.0], zero=1.0)
        1.0
    """
    a = np.asarray(mu_a, dtype=np.float64)
    b = np.asarray(mu_b, dtype=np.float64)
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        return zero
    return float(np.clip(1.0 - float(a @ b) / norms, 0.0, 2.0))


def centroid_gap(layer: LayerResult, a: str, b: str, *, zero: float = math.nan) -> Tensor:
    """Centroid key gap ``1 − cos(μ_a, μ_b)`` per key/value head (`cosine_gap`).

    ``μ_m`` is the mean key of group ``m`` pooled over tokens and samples
    (``docs/concepts/key-gap.md``).

    Args:
        layer: one layer's statistics (probed with ``key_stats=True``, the default).
        a: the first key group.
        b: the second key group.
        zero: the gap when a mean key is the zero vector (NaN by default).

    Returns:
        ``[Hk]`` float64 gaps (NaN for a group without keys).

    Examples:
        >>> import torch, attnprobe as ap
        >>> from attnprobe.models import FusionAttention
        >>> layer = FusionAttention(dim=8, num_heads=2).eval()
        >>> with ap.probe(layer, modalities={"cls": 1, "audio": 2, "video": 3}) as p:
        ...     _ = layer(torch.randn(4, 5, 8))
        >>> gap = centroid_gap(p.result().layers[0], "audio", "video")
        >>> gap.shape, bool(((gap >= 0) & (gap <= 2)).all())
        (torch.Size([2]), True)
    """
    ia, ib = key_indices(layer, [a, b], caller="centroid_gap")
    if layer.key_total is None:
        raise AnalysisError(
            f"centroid_gap: layer {layer.name!r} has no key statistics; probe with "
            "key_stats=True (the default)."
        )
    means = layer.key_mean.double().cpu().numpy()  # (Hk, Gk, D)
    gaps = [cosine_gap(means[kv, ia], means[kv, ib], zero=zero) for kv in range(len(means))]
    return torch.tensor(gaps, dtype=torch.float64)  # (Hk,)


def attention_columns(
    layer: LayerResult, query: str, modalities: Sequence[str]
) -> dict[str, float]:
    """The attention columns of one training epoch, as `attnprobe.training.Trainer` and
    `attnprobe.callbacks.AttentionDiagnostics` log them: ``share_<m>`` (`shares` of the
    ``query`` group over ``modalities``, mean over heads), ``cos_<m>`` (`cosines`, mean over
    heads), and for each pair ``a < b`` of ``modalities`` ``air`` (``cos_a − cos_b``) and
    ``key_gap`` (`centroid_gap`, mean over key heads, 1 where a mean key is zero), suffixed
    ``_<a>_<b>`` when there are more than two modalities.

    Examples:
        >>> import torch, attnprobe as ap
        >>> from attnprobe.models import LateFusionTransformer
        >>> model = LateFusionTransformer({"audio": 6, "video": 8}, {"audio": 4, "video": 3}, 5)
        >>> with ap.probe(model, modalities=model.fusion_layout(), layers="fusion") as p:
        ...     _ = model(torch.randn(2, 4, 6), torch.randn(2, 3, 8))
        >>> sorted(attention_columns(p.result().layers[0], "cls", ["audio", "video"]))
        ['air', 'cos_audio', 'cos_video', 'key_gap', 'share_audio', 'share_video']
    """
    modalities = list(modalities)
    share = shares(layer, query, modalities).mean(0)  # (H, M) -> (M,)
    row = {f"share_{m}": float(share[i]) for i, m in enumerate(modalities)}
    cos = cosines(layer, query, modalities).mean(0)  # (H, M) -> (M,)
    for i, m in enumerate(modalities):
        row[f"cos_{m}"] = float(cos[i])
    for i, a in enumerate(modalities):
        for j in range(i + 1, len(modalities)):
            b = modalities[j]
            suffix = "" if len(modalities) == 2 else f"_{a}_{b}"
            row[f"key_gap{suffix}"] = float(centroid_gap(layer, a, b, zero=1.0).mean())
            row[f"air{suffix}"] = float(cos[i] - cos[j])
    return row
