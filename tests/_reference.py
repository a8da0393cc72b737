"""An independent float64 numpy reference of attention, written out by hand."""

from __future__ import annotations

import numpy as np
import torch

FP32_SUMS = {"rtol": 1e-6, "atol": 1e-5}
"""Tolerance of the probe's built-in sums on float32 inputs, which it reduces per call in
float32 before adding them to float64 sums (``docs/concepts/statistics.md``, "Precision");
float64 inputs are reduced in float64 and meet 1e-12."""


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> np.ndarray:
    """``softmax(q kᵀ·s + mask)`` in float64 numpy, written out by hand. Shapes:
    q ``[B, H, Lq, D]``, k ``[B, Hk, Lk, D]``; mask bool (True = attend) or additive float,
    broadcastable to ``[B, H, Lq, Lk]``. Returns ``[B, H, Lq, Lk]``."""
    qn = q.detach().double().numpy()
    kn = k.detach().double().numpy()
    heads, kv_heads = qn.shape[1], kn.shape[1]
    kn = np.repeat(kn, heads // kv_heads, axis=1)  # (B, H, Lk, D)
    s = 1.0 / np.sqrt(qn.shape[-1]) if scale is None else scale
    logits = np.einsum("bhqd,bhkd->bhqk", qn, kn) * s  # (B, H, Lq, Lk)
    if is_causal:
        lq, lk = logits.shape[-2:]
        allowed = np.arange(lk)[None, :] <= np.arange(lq)[:, None]
        logits = np.where(allowed, logits, -np.inf)
    if mask is not None:
        m = mask.detach().numpy()
        if m.dtype == np.bool_:
            logits = np.where(m, logits, -np.inf)
        else:
            logits = logits + m.astype(np.float64)
    logits = logits - logits.max(-1, keepdims=True)
    w = np.exp(logits)
    return w / w.sum(-1, keepdims=True)


def reference_group_mass(weights: np.ndarray, key_labels: torch.Tensor, groups: int) -> np.ndarray:
    """Sum attention weights ``[B, H, Lq, Lk]`` over the keys of each group by a loop."""
    labels = key_labels.numpy()
    out = np.zeros((*weights.shape[:3], groups))
    for b in range(weights.shape[0]):
        for g in range(groups):
            out[b, :, :, g] = weights[b][:, :, labels[b] == g].sum(-1)
    return out


def masses_from_weights(
    weights: torch.Tensor,
    key_labels: torch.Tensor,
    query_labels: torch.Tensor,
    key_groups: int,
    query_groups: int,
) -> np.ndarray:
    """Per-(head, query group, key group) attention mass from full attention weights, by loops
    in float64 numpy: the mean over the (sample, query row) pairs of each query group of the
    weight summed over each key group's columns (``docs/concepts/attention-mass.md``).

    weights ``[B, H, Lq, Lk]``; key_labels ``[B, Lk]``; query_labels ``[B, Lq]`` (-1 = dropped).
    Returns ``[H, Gq, Gk]`` (NaN for a query group with no row)."""
    w = weights.detach().double().numpy()
    keys, queries = key_labels.numpy(), query_labels.numpy()
    heads = w.shape[1]
    total = np.zeros((heads, query_groups, key_groups))
    count = np.zeros(query_groups)
    for b in range(w.shape[0]):
        for i in range(w.shape[2]):
            gq = queries[b, i]
            if gq < 0:
                continue
            count[gq] += 1
            for gk in range(key_groups):
                total[:, gq, gk] += w[b][:, i][:, keys[b] == gk].sum(-1)  # (H,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count[None, :, None]
