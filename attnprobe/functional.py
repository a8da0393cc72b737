"""Pure tensor math: per-group attention mass by the indicator-value pass, and group moments.

Nothing here holds state or knows about hooks or model families; every function maps tensors to
tensors and can be tested against a hand-written reference.

The indicator-value pass (``docs/concepts/attention-mass.md``): attention output is linear in the
values, ``out = softmax(q kᵀ·s + mask) · V``. With ``V = E``, the one-hot matrix of key group
labels, the same kernel call returns for every query row the attention mass on each group,
exactly, with the kernel's own masking, without materialising the ``Lq × Lk`` map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "GroupMoments",
    "MassSums",
    "angle_between",
    "attention_maps",
    "causal_rows_mask",
    "fused_attention",
    "fused_indicator",
    "fused_width",
    "group_attention_mass",
    "group_entropy",
    "group_indicator",
    "group_moments",
    "indicator_values",
    "mean_cosines",
    "reduce_mass",
    "rollingq_anchor",
    "rotation_between",
    "select_query_rows",
]

Kernel = Callable[..., Tensor]
"""An attention function with the signature of ``F.scaled_dot_product_attention``."""


def group_indicator(labels: Tensor, num_groups: int, dtype: torch.dtype) -> Tensor:
    """One-hot indicator ``E`` of group labels; ignored positions (``-1``) get a zero row.

    Args:
        labels: ``[B, L]`` integer labels in ``[-1, num_groups)``.
        num_groups: ``G``.
        dtype: dtype of the result.

    Returns:
        ``[B, L, G]`` tensor with ``E[b, j, g] = 1`` iff ``labels[b, j] == g``.

    Examples:
        >>> import torch
        >>> group_indicator(torch.tensor([[0, 1, -1]]), 2, torch.float32).tolist()
        [[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]]
    """
    groups = torch.arange(num_groups, device=labels.device)  # (G,)
    return (labels.unsqueeze(-1) == groups).to(dtype)  # (B, L, G)


def indicator_values(labels: Tensor, num_groups: int, dtype: torch.dtype, width: int) -> Tensor:
    """The value matrix of the indicator pass: `group_indicator` zero-padded to ``width``.

    Returns:
        ``[B, 1, L, width]`` (broadcast over heads by the caller).

    Examples:
        >>> import torch
        >>> indicator_values(torch.tensor([[1, -1]]), 2, torch.float32, 3).tolist()
        [[[[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]]]
    """
    indicator = group_indicator(labels, num_groups, dtype)  # (B, L, G)
    if width > num_groups:
        indicator = F.pad(indicator, (0, width - num_groups))  # (B, L, W)
    return indicator.unsqueeze(1)  # (B, 1, L, W)


def _call_kernel(
    kernel: Kernel,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool,
) -> Tensor:
    extra: dict[str, Any] = {"enable_gqa": True} if enable_gqa else {}
    return kernel(
        query,
        key,
        value,
        attn_mask=attn_mask,
        dropout_p=0.0,
        is_causal=is_causal,
        scale=scale,
        **extra,
    )


def group_attention_mass(
    query: Tensor,
    key: Tensor,
    key_labels: Tensor,
    num_groups: int,
    *,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    kernel: Kernel | None = None,
    pad_to_head_dim: bool = True,
    values: Tensor | None = None,
) -> Tensor:
    """Attention mass of every query row on every key group, by one kernel call.

    ``mass[b, h, i, g] = Σ_{j: labels[b, j] = g} softmax_j(q_i·k_j·s + mask_ij)``
    (``docs/concepts/attention-mass.md``, "Definition" and "The indicator-value pass").
    Mass on ignored keys (label ``-1``) and on a kernel's sink logits is in none of the groups:
    a row's masses then sum to less than 1 and the difference is the residual.

    Args:
        query: ``[B, H, Lq, D]`` queries exactly as the kernel receives them (unscaled).
        key: ``[B, Hk, Lk, D]`` keys (``Hk`` divides ``H`` for grouped-query attention).
        key_labels: ``[B, Lk]`` group labels of the keys, ``-1`` = belongs to no group.
        num_groups: ``G``.
        attn_mask: the mask the kernel received (bool, True = attend; or additive float).
        is_causal: the kernel's causal flag (top-left aligned, as in SDPA).
        scale: the kernel's scale (None = ``1/sqrt(D)``).
        enable_gqa: pass ``enable_gqa=True`` to the kernel (``Hk < H``).
        kernel: the attention function to run, default ``F.scaled_dot_product_attention``.
        pad_to_head_dim: zero-pad the indicator to width ``D`` so that the value width equals the
            query width; on CPU this keeps SDPA on its fast kernel
            (``docs/concepts/attention-mass.md``; ``docs/benchmarks.md``).
        values: the indicator values from `indicator_values` for these labels, when the caller
            keeps them between calls (they depend on the labels, dtype and width only);
            ``[B, 1, Lk, W]``, or ``[B, Hk, Lk, W]`` already expanded over the key heads.

    Returns:
        ``[B, H, Lq, G]`` masses in the dtype of ``query``.

    Examples:
        >>> import torch
        >>> q, k = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4)
        >>> labels = torch.tensor([[0, 0, 1, 1, 1]])
        >>> mass = group_attention_mass(q, k, labels, 2)
        >>> mass.shape, bool(torch.allclose(mass.sum(-1), torch.ones(1, 2, 3)))
        (torch.Size([1, 2, 3, 2]), True)
    """
    batch, kv_heads, key_len, head_dim = key.shape
    if values is None:
        width = head_dim if pad_to_head_dim and num_groups <= head_dim else num_groups
        values = indicator_values(key_labels, num_groups, query.dtype, width)  # (B, 1, Lk, W)
    value = values
    if values.shape[1] != kv_heads:
        value = values.expand(batch, kv_heads, key_len, values.shape[-1])  # (B, Hk, Lk, W)
    out = _call_kernel(
        kernel or F.scaled_dot_product_attention,
        query,
        key,
        value,
        attn_mask,
        is_causal,
        scale,
        enable_gqa,
    )  # (B, H, Lq, W)
    return out[..., :num_groups]  # (B, H, Lq, G)


def fused_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_labels: Tensor,
    num_groups: int,
    *,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    kernel: Kernel | None = None,
    indicator: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The model's attention output and the group masses from one kernel call, ``V' = [V, E]``.

    Same formula as `group_attention_mass` (``docs/concepts/attention-mass.md``, "Second pass
    or fused call"). Fast kernels want equal query and value widths (CPU flash attention; GPU
    kernels also want a multiple of 8), so ``q`` and ``k`` are zero-padded to the width ``W`` of
    ``[V, E]`` rounded up to 8, and the scale is passed explicitly: zero columns add nothing to
    ``q·k``, so the scores are the model's. The output is mathematically the model's; whether
    it is bit-identical depends on the kernel (it was on CPU flash attention in torch 2.13, see
    the tests and benchmarks).
    Dropout, when given, is applied by the kernel to the whole row, so the masses are then
    post-dropout; probes call this with ``dropout_p=0`` only.

    Args:
        indicator: ``fused_indicator(key_labels, num_groups, value, width)``, when the caller
            keeps it between calls (it depends on the labels and shapes only).

    Returns:
        ``(out [B, H, Lq, Dv], mass [B, H, Lq, G])``.

    Examples:
        >>> import torch
        >>> q = k = v = torch.randn(1, 1, 4, 8)
        >>> out, mass = fused_attention(q, k, v, torch.tensor([[0, 0, 1, 1]]), 2)
        >>> bool(torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, k, v),
        ...                     atol=1e-6))
        True
    """
    head_dim, value_dim = query.shape[-1], value.shape[-1]
    width = fused_width(head_dim, value_dim, num_groups)
    if indicator is None:
        indicator = fused_indicator(key_labels, num_groups, value, width)  # (B, Hk, Lk, W - Dv)
    wide = torch.cat([value, indicator], dim=-1)  # (B, Hk, Lk, W)
    query = F.pad(query, (0, width - head_dim))  # (B, H, Lq, W)
    key = F.pad(key, (0, width - head_dim))  # (B, Hk, Lk, W)
    extra: dict[str, Any] = {"enable_gqa": True} if enable_gqa else {}
    out = (kernel or F.scaled_dot_product_attention)(
        query,
        key,
        wide,
        attn_mask=attn_mask,
        dropout_p=dropout_p,
        is_causal=is_causal,
        scale=head_dim**-0.5 if scale is None else scale,
        **extra,
    )  # (B, H, Lq, W)
    return out[..., :value_dim], out[..., value_dim : value_dim + num_groups]


def fused_width(head_dim: int, value_dim: int, num_groups: int) -> int:
    """Width ``W`` of the fused value matrix ``[V, E]``: ``max(D, Dv) + G`` rounded up to 8."""
    return -(-(max(head_dim, value_dim) + num_groups) // 8) * 8


def fused_indicator(key_labels: Tensor, num_groups: int, value: Tensor, width: int) -> Tensor:
    """``[B, Hk, Lk, W − Dv]`` the columns `fused_attention` appends to the values: the group
    indicator, zero-padded to ``width`` (in the dtype and on the device of ``value``)."""
    batch, kv_heads, key_len, value_dim = value.shape
    indicator = group_indicator(key_labels, num_groups, value.dtype)  # (B, Lk, G)
    indicator = F.pad(indicator, (0, width - value_dim - num_groups))  # (B, Lk, W - Dv)
    return indicator.unsqueeze(1).expand(batch, kv_heads, key_len, width - value_dim)


def attention_maps(
    query: Tensor,
    key: Tensor,
    *,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    kernel: Kernel | None = None,
) -> Tensor:
    """Full post-softmax attention maps through the model's kernel, with ``V = I``.

    ``A[b, h, i, j] = softmax_j(q_i·k_j·s + mask_ij)``. Costs ``O(Lq·Lk)`` memory per head:
    for small inputs only.

    Returns:
        ``[B, H, Lq, Lk]``.

    Examples:
        >>> import torch
        >>> q, k = torch.randn(1, 1, 2, 4), torch.randn(1, 1, 3, 4)
        >>> ref = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
        >>> bool(torch.allclose(attention_maps(q, k), ref, atol=1e-6))
        True
    """
    batch, kv_heads, key_len, _ = key.shape
    eye = torch.eye(key_len, dtype=query.dtype, device=query.device)  # (Lk, Lk)
    value = eye.expand(batch, kv_heads, key_len, key_len)  # (B, Hk, Lk, Lk)
    return _call_kernel(
        kernel or F.scaled_dot_product_attention,
        query,
        key,
        value,
        attn_mask,
        is_causal,
        scale,
        enable_gqa,
    )  # (B, H, Lq, Lk)


def group_entropy(weights: Tensor, key_labels: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """Entropy of the attention inside each key group, per query row.

    With the row's weights renormalised inside group ``m``, ``ã_j = a_j / M_m`` for
    ``j ∈ T_m``: ``H_m = −Σ_{j∈T_m} ã_j log ã_j = log M_m − (Σ_{j∈T_m} a_j log a_j) / M_m``
    (``docs/guides/analysis.md``, "Modality bias"; 0 when the row looks at one token of ``m``,
    ``log L_m`` when it spreads evenly). Rows with no mass on ``m`` have no entropy there.

    Args:
        weights: ``[B, H, R, Lk]`` post-softmax attention weights.
        key_labels: ``[B, Lk]`` key group labels (``-1`` = no group).
        num_groups: ``G``.

    Returns:
        ``(entropy [B, H, R, G], defined [B, H, R, G])`` in float64; ``entropy`` is 0 where
        ``defined`` is False.

    Examples:
        >>> import torch, math
        >>> w = torch.tensor([[[[0.5, 0.25, 0.25]]]])  # one row; keys: group 0, then group 1 ×2
        >>> h, ok = group_entropy(w, torch.tensor([[0, 1, 1]]), 2)
        >>> [round(x, 6) for x in h.flatten().tolist()], round(math.log(2), 6)
        ([0.0, 0.693147], 0.693147)
    """
    w = weights.double()  # (B, H, R, Lk)
    onehot = group_indicator(key_labels, num_groups, torch.float64).unsqueeze(1)  # (B, 1, Lk, G)
    plogp = torch.where(w > 0, w * torch.log(w.clamp_min(1e-300)), 0.0)  # (B, H, R, Lk)
    mass = w @ onehot  # (B, H, R, G)
    total = plogp @ onehot  # (B, H, R, G)
    defined = mass > 0
    safe = torch.where(defined, mass, 1.0)
    entropy = torch.where(defined, torch.log(safe) - total / safe, 0.0)  # (B, H, R, G)
    entropy = entropy.clamp_min(0.0)  # ≥ 0 exactly; rounding can leave −1e-17
    return entropy, defined


def causal_rows_mask(rows: Tensor, key_len: int) -> Tensor:
    """``[R, Lk]`` boolean mask of the keys that query rows ``rows`` see under a causal flag
    (SDPA's ``is_causal`` is top-left aligned: row ``i`` sees keys ``j <= i``).

    Examples:
        >>> import torch
        >>> causal_rows_mask(torch.tensor([0, 2]), 3).int().tolist()
        [[1, 0, 0], [1, 1, 1]]
    """
    keys = torch.arange(key_len, device=rows.device)  # (Lk,)
    return keys.unsqueeze(0) <= rows.unsqueeze(1)  # (R, Lk)


def select_query_rows(
    query: Tensor,
    attn_mask: Tensor | None,
    is_causal: bool,
    rows: Tensor,
    key_len: int,
    *,
    causal_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, bool]:
    """Keep only the query rows ``rows`` and the matching mask rows.

    A causal flag becomes an explicit boolean mask for the kept rows (`causal_rows_mask`),
    because the flag would be wrong for a subset of rows.

    Args:
        causal_mask: ``causal_rows_mask(rows, key_len)``, when the caller keeps it.

    Returns:
        ``(query [B, H, R, D], attn_mask or None, is_causal)``.
    """
    query = query.index_select(-2, rows)  # (B, H, R, D)
    if is_causal:
        causal = causal_rows_mask(rows, key_len) if causal_mask is None else causal_mask
        return query, causal, False
    if attn_mask is not None and attn_mask.dim() >= 2 and attn_mask.size(-2) != 1:
        attn_mask = attn_mask.index_select(-2, rows)  # (..., R, Lk)
    return query, attn_mask, False


@dataclass(frozen=True)
class MassSums:
    """Float64 sums of attention mass per query group (see `reduce_mass`)."""

    total: Tensor
    """``[H, Gq, Gk]`` Σ over kept query rows of their mass on each key group."""
    count: Tensor
    """``[Gq]`` number of kept query rows per query group (over the whole batch)."""
    sample_total: Tensor
    """``[B, H, Gq, Gk]`` the same sums per sample."""
    sample_count: Tensor
    """``[B, Gq]`` kept query rows per sample and query group."""


def reduce_mass(
    mass: Tensor,
    query_labels: Tensor,
    num_query_groups: int,
    *,
    onehot: Tensor | None = None,
    has_ignored: bool | None = None,
) -> MassSums:
    """Sum masses over the query rows of each query group, in float64.

    Rows labelled ``-1`` (padding) are dropped, whatever the kernel wrote there (eager kernels
    give uniform rows, fused ones anything, NaN included).

    Args:
        mass: ``[B, H, Lq, Gk]`` from `group_attention_mass`.
        query_labels: ``[B, Lq]`` group labels of the query rows.
        num_query_groups: ``Gq``.
        onehot: ``group_indicator(query_labels, Gq, torch.float64)``, when the caller keeps it.
        has_ignored: whether ``query_labels`` holds ``-1`` (None: check).

    Examples:
        >>> import torch
        >>> mass = torch.tensor([[[[0.25, 0.75], [0.5, 0.5], [9.0, 9.0]]]])  # (1, 1, 3, 2)
        >>> sums = reduce_mass(mass, torch.tensor([[0, 0, -1]]), 1)
        >>> sums.total.tolist(), sums.count.tolist()
        ([[[0.75, 1.25]]], [2.0])
    """
    mass64 = mass.double()  # (B, H, Lq, Gk)
    if has_ignored is None or has_ignored:  # NaN * 0 is NaN: zero padded rows first
        valid = (query_labels >= 0).unsqueeze(1).unsqueeze(-1)  # (B, 1, Lq, 1)
        mass64 = torch.where(valid, mass64, 0.0)  # (B, H, Lq, Gk)
    if onehot is None:
        onehot = group_indicator(query_labels, num_query_groups, torch.float64)  # (B, Lq, Gq)
    sample_total = onehot.transpose(1, 2).unsqueeze(1) @ mass64  # (B, H, Gq, Gk)
    sample_count = onehot.sum(1)  # (B, Gq)
    return MassSums(sample_total.sum(0), sample_count.sum(0), sample_total, sample_count)


@dataclass(frozen=True)
class GroupMoments:
    """Float64 token moments of vectors per group (see `group_moments`)."""

    count: Tensor
    """``[G]`` tokens per group over the batch."""
    total: Tensor
    """``[H, G, D]`` Σ x."""
    total_sq: Tensor
    """``[H, G, D]`` Σ x² (elementwise)."""
    outer: Tensor | None
    """``[H, G, D, D]`` Σ x xᵀ, when asked for."""
    sample_total: Tensor
    """``[B, H, G, D]`` Σ x per sample."""
    sample_count: Tensor
    """``[B, G]`` tokens per sample and group."""


def group_moments(
    x: Tensor,
    labels: Tensor,
    num_groups: int,
    *,
    second_moment: bool = False,
    has_ignored: bool | None = None,
    onehot: Tensor | None = None,
) -> GroupMoments:
    """Per-group token counts, sums, sums of squares (and ``Σ x xᵀ``) in float64.

    Args:
        x: ``[B, H, L, D]`` vectors (keys or queries per head).
        labels: ``[B, L]`` group labels, ``-1`` = ignored.
        num_groups: ``G``.
        second_moment: also return ``Σ x xᵀ`` per head and group (``D × D`` each).
        has_ignored: whether ``labels`` holds ``-1`` (None: check, which synchronises a GPU).
        onehot: ``group_indicator(labels, G, torch.float64)`` ``[B, L, G]``, when the caller
            keeps it between calls (saves kernel launches on a GPU).

    Examples:
        >>> import torch
        >>> x = torch.tensor([[[[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]]]])  # (1, 1, 3, 2)
        >>> m = group_moments(x, torch.tensor([[0, 0, 1]]), 2)
        >>> m.count.tolist(), m.total[0].tolist()
        ([2.0, 1.0], [[4.0, 2.0], [5.0, 5.0]])
    """
    batch, heads, length, dim = x.shape
    x64 = x.transpose(1, 2).reshape(batch, length, heads * dim).double()  # (B, L, H·D)
    if has_ignored is None:
        has_ignored = bool((labels < 0).any())
    if has_ignored:  # whatever sits at ignored positions (inf, NaN) must not leak
        x64 = x64.masked_fill((labels < 0).unsqueeze(-1), 0.0)  # (B, L, H·D)
    if onehot is None:
        onehot = group_indicator(labels, num_groups, torch.float64)  # (B, L, G)
    onehot_t = onehot.transpose(1, 2)  # (B, G, L)
    sample_total = torch.bmm(onehot_t, x64)  # (B, G, H·D)
    total_sq = torch.bmm(onehot_t, torch.square(x64)).sum(0)  # (G, H·D)
    outer = None
    if second_moment:
        rows = x64.view(batch, length, heads, dim)  # (B, L, H, D)
        outer = torch.einsum("blhd,blhe,blg->hgde", rows, rows, onehot_t.transpose(1, 2))
    sample_total = sample_total.view(batch, num_groups, heads, dim).transpose(1, 2)  # (B, H, G, D)
    total_sq = total_sq.view(num_groups, heads, dim).transpose(0, 1)  # (H, G, D)
    sample_count = onehot_t.sum(2)  # (B, G)
    return GroupMoments(
        sample_count.sum(0), sample_total.sum(0), total_sq, outer, sample_total, sample_count
    )


def mean_cosines(
    query_total: Tensor, query_count: Tensor, key_total: Tensor, key_count: Tensor
) -> tuple[Tensor, Tensor]:
    """Σ over samples of ``cos(q̄_i, k̄_i)`` per head, query group and key group.

    ``q̄_i`` is sample ``i``'s mean query of a query group and ``k̄_i`` its mean key of a key
    group; the AIR of the RollingQ paper (Ni et al., ICML 2025, arXiv 2506.11465) is
    ``E_i[cos(q_i, k̄ᵃ_i) − cos(q_i, k̄ᵇ_i)]``, the difference of two of these means
    (``docs/concepts/statistics.md``, "Per-sample mean-key cosines and AIR"). A sample counts
    for a pair only when it has tokens in both groups and both means are non-zero. Grouped-query
    attention: query head ``h`` uses key head ``h // (H / Hk)``, as in SDPA.

    Args:
        query_total: ``[B, H, Gq, D]`` per-sample query sums.
        query_count: ``[B, Gq]`` per-sample query counts.
        key_total: ``[B, Hk, Gk, D]`` per-sample key sums.
        key_count: ``[B, Gk]`` per-sample key counts.

    Returns:
        ``(cos_total [H, Gq, Gk], samples [Gq, Gk])`` in float64.
    """
    heads, kv_heads = query_total.shape[1], key_total.shape[1]
    key_total = key_total.repeat_interleave(heads // kv_heads, dim=1)  # (B, H, Gk, D)
    dots = torch.einsum("bhqd,bhkd->bhqk", query_total, key_total)  # (B, H, Gq, Gk)
    q_norm = query_total.norm(dim=-1)  # (B, H, Gq)
    k_norm = key_total.norm(dim=-1)  # (B, H, Gk)
    norms = q_norm.unsqueeze(-1) * k_norm.unsqueeze(-2)  # (B, H, Gq, Gk)
    present = (query_count.unsqueeze(-1) > 0) & (key_count.unsqueeze(-2) > 0)  # (B, Gq, Gk)
    valid = present.unsqueeze(1) & (norms > 0)  # (B, H, Gq, Gk)
    cos = torch.where(valid, dots / torch.where(valid, norms, 1.0), 0.0)  # (B, H, Gq, Gk)
    return cos.sum(0), present.sum(0).double()


# -- RollingQ rotations (Ni et al., ICML 2025, arXiv 2506.11465; ``docs/concepts/rollingq.md``) --

RotationConstruction = Literal["plane", "svd"]
"""How `rotation_between` builds the rotation."""
RotationMethod = RotationConstruction
"""Deprecated name of `RotationConstruction`."""


def rotation_between(x: Tensor, y: Tensor, construction: RotationConstruction = "plane") -> Tensor:
    """The rotation ``W`` (orthogonal, ``det W = +1``) that turns the direction of ``x`` into
    the direction of ``y``: ``W x/‖x‖ = y/‖y‖``, so ``‖W x‖ = ‖x‖``.

    RollingQ (``docs/concepts/rollingq.md``, "The algorithm") offers two constructions, which
    agree on ``x``:

    - ``"plane"``: the minimal rotation, acting only in ``span{x, y}``:
      ``G = I + (cos φ − 1)(u uᵀ + w wᵀ) + sin φ (w uᵀ − u wᵀ)`` with ``u = x̂``, ``w`` the unit
      component of ``ŷ`` orthogonal to ``u``, ``cos φ = x̂ᵀŷ``. Deterministic; the identity
      when ``x`` and ``y`` are parallel; for antiparallel vectors a half-turn in a plane
      through ``x`` and the coordinate axis least aligned with it.
    - ``"svd"`` (the reference code's construction): ``U S Vᵀ = svd(ŷ x̂ᵀ)``, ``W = U Vᵀ``,
      with the last column of ``U`` negated when ``det W < 0``. It maps ``x̂`` to ``ŷ`` too,
      and that is all it fixes (``ŷ x̂ᵀ`` has rank one): it acts arbitrarily on the orthogonal
      complement of ``x``, the other direction of ``span{x, y}`` included, so it is not a
      rotation within that plane and other vectors than ``x`` end up elsewhere than with
      ``"plane"``.

    Computed in float64 and returned in float64.

    Args:
        x: ``[..., D]`` the vectors to rotate (non-zero), ``D ≥ 2``.
        y: ``[..., D]`` the target directions (non-zero).
        construction: ``"plane"`` or ``"svd"``.

    Returns:
        ``[..., D, D]`` rotations.

    Examples:
        >>> import torch
        >>> x, y = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 2.0, 0.0])
        >>> w = rotation_between(x, y)
        >>> (w @ x.double()).tolist()
        [0.0, 1.0, 0.0]
        >>> round(float(torch.linalg.det(w)), 12)
        1.0
    """
    if construction not in ("plane", "svd"):
        raise ValueError(
            f"rotation_between: expected construction 'plane' or 'svd', received {construction!r}."
        )
    if x.shape != y.shape or x.shape[-1] < 2:
        raise ValueError(
            "rotation_between: expected x and y of the same shape [..., D] with D >= 2, received "
            f"{tuple(x.shape)} and {tuple(y.shape)}."
        )
    x64, y64 = x.double(), y.double()
    x_norm, y_norm = x64.norm(dim=-1, keepdim=True), y64.norm(dim=-1, keepdim=True)  # (..., 1)
    if bool((x_norm == 0).any()) or bool((y_norm == 0).any()):
        raise ValueError("rotation_between: x and y must be non-zero vectors.")
    u, v = x64 / x_norm, y64 / y_norm  # (..., D) unit vectors
    dim = u.shape[-1]
    eye = torch.eye(dim, dtype=torch.float64, device=u.device).expand(*u.shape[:-1], dim, dim)
    if construction == "svd":
        m = v.unsqueeze(-1) * u.unsqueeze(-2)  # (..., D, D) = ŷ x̂ᵀ
        left, _, right_t = torch.linalg.svd(m)  # (..., D, D) each
        w = left @ right_t  # (..., D, D)
        flip = torch.linalg.det(w) < 0  # (...)
        left = torch.where(
            flip.unsqueeze(-1).unsqueeze(-1),
            torch.cat([left[..., :-1], -left[..., -1:]], dim=-1),
            left,
        )  # (..., D, D)
        proper: Tensor = left @ right_t
        return proper
    cos = (u * v).sum(-1, keepdim=True).clamp(-1.0, 1.0)  # (..., 1)
    w = v - cos * u  # (..., D) component of ŷ orthogonal to x̂
    sin = w.norm(dim=-1, keepdim=True)  # (..., 1)
    # antiparallel (sin = 0, cos < 0): any unit vector orthogonal to u spans the half-turn plane
    axis = torch.nn.functional.one_hot(u.abs().argmin(-1), dim).double()  # (..., D)
    fallback = axis - (axis * u).sum(-1, keepdim=True) * u  # (..., D)
    fallback = fallback / fallback.norm(dim=-1, keepdim=True)
    tiny = sin <= 1e-12
    w = torch.where(tiny, fallback, w / torch.where(tiny, 1.0, sin))  # (..., D) unit
    sin = torch.where(tiny, 0.0, sin)
    uu = u.unsqueeze(-1) * u.unsqueeze(-2)  # (..., D, D)
    ww = w.unsqueeze(-1) * w.unsqueeze(-2)
    wu = w.unsqueeze(-1) * u.unsqueeze(-2)  # w uᵀ
    c, s = cos.unsqueeze(-1), sin.unsqueeze(-1)  # (..., 1, 1)
    plane: Tensor = eye + (c - 1.0) * (uu + ww) + s * (wu - wu.transpose(-1, -2))
    return plane


def rollingq_anchor(
    key_means: Tensor, query_mean: Tensor, cosines: Tensor, rho: float
) -> tuple[Tensor, Tensor]:
    """The RollingQ anchor query and the modality weights ``α``
    (``docs/concepts/rollingq.md``, "The algorithm").

    Two modalities (the paper): ``α = ½(1 + tanh(−ρ·AIR))`` with ``AIR = cos_a − cos_b``, and
    the anchor direction ``a = α μ_a/‖μ_a‖ + (1 − α) μ_b/‖μ_b‖``. More than two modalities (an
    extension): ``α = softmax_m(−2ρ (cosᵐ − mean_n cosⁿ))`` and ``a = Σ_m α_m μ_m/‖μ_m‖``, which
    is the paper's formula for two modalities (``softmax(−ρ·AIR, +ρ·AIR)₁ = ½(1 + tanh(−ρ·AIR))``).
    The anchor is ``q_b = ‖q̄‖·a/‖a‖``: scaled to the mean query's norm, as a rotation of ``q̄``
    must be (``a`` itself is shorter than 1 unless the mean keys are parallel). With ``ρ = 0``
    it points along the bisector of the normalised mean keys.

    Args:
        key_means: ``[..., M, D]`` mean key of each modality.
        query_mean: ``[..., D]`` mean query ``q̄``.
        cosines: ``[..., M]`` ``E_i cos(q, k̄ᵐ_i)`` per modality (AIR is their difference).
        rho: the sharpness ``ρ`` (the reference code calls it ``sigma``).

    Returns:
        ``(anchor [..., D], alpha [..., M])`` in float64.

    Examples:
        >>> import torch
        >>> mu = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
        >>> q_bar, cos = torch.tensor([2.0, 0.0]), torch.tensor([0.5, 0.1])
        >>> anchor, alpha = rollingq_anchor(mu, q_bar, cos, rho=0.0)
        >>> alpha.tolist(), [round(v, 6) for v in anchor.tolist()]
        ([0.5, 0.5], [1.414214, 1.414214])
    """
    means = key_means.double()  # (..., M, D)
    cos = cosines.double()  # (..., M)
    alpha = torch.softmax(-2.0 * rho * (cos - cos.mean(-1, keepdim=True)), dim=-1)  # (..., M)
    unit = means / means.norm(dim=-1, keepdim=True)  # (..., M, D)
    direction = (alpha.unsqueeze(-1) * unit).sum(-2)  # (..., D)
    direction = direction / direction.norm(dim=-1, keepdim=True)  # NaN if the means cancel
    anchor = direction * query_mean.double().norm(dim=-1, keepdim=True)  # (..., D)
    return anchor, alpha


def angle_between(a: Tensor, b: Tensor) -> Tensor:
    """The angle ``arccos(aᵀb / (‖a‖ ‖b‖))`` between vectors along the last dimension, in
    degrees.

    The cosine is clamped to ``[−1, 1]`` against rounding; a zero vector gives NaN (no angle).
    RollingQ reports its rotation angle with it (`attnprobe.rollingq.RotationPlan.angle`).

    Args:
        a: ``[..., D]`` vectors.
        b: ``[..., D]`` vectors (broadcast against ``a``).

    Returns:
        ``[...]`` angles in degrees, in ``[0, 180]``, in the dtype of ``a · b``.

    Examples:
        >>> import torch
        >>> a = torch.tensor([[1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
        >>> b = torch.tensor([[0.0, 2.0], [-1.0, 0.0]], dtype=torch.float64)
        >>> angle_between(a, b).tolist()
        [90.0, 180.0]
        >>> angle_between(torch.zeros(2), torch.ones(2)).isnan().item()
        True
    """
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))  # (...)
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))
