"""attnprobe.functional against hand-written numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attnprobe import functional as AF
from tests._reference import reference_attention, reference_group_mass

B, H, LQ, LK, D, G = 3, 4, 7, 9, 8, 3


def _labels(batch: int, length: int, groups: int) -> torch.Tensor:
    labels = torch.randint(0, groups, (batch, length))
    labels[:, -1] = -1  # an ignored key in every sample
    return labels


@pytest.mark.parametrize("pad", [True, False])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "causal"])
def test_group_mass_matches_reference(mask_kind: str, pad: bool) -> None:
    q, k = torch.randn(B, H, LQ, D), torch.randn(B, H, LK, D)
    labels = _labels(B, LK, G)
    mask, causal = None, False
    if mask_kind == "bool":
        mask = torch.rand(B, 1, LQ, LK) > 0.3
        mask[..., 0] = True  # no fully masked row
    elif mask_kind == "float":
        mask = torch.randn(B, H, LQ, LK)
    elif mask_kind == "causal":
        causal = True
    mass = AF.group_attention_mass(
        q, k, labels, G, attn_mask=mask, is_causal=causal, pad_to_head_dim=pad
    )
    ref = reference_group_mass(reference_attention(q, k, mask, causal), labels, G)
    np.testing.assert_allclose(mass.double().numpy(), ref, atol=1e-6, rtol=0)


def test_group_mass_gqa_and_scale() -> None:
    q, k = torch.randn(B, H, LQ, D), torch.randn(B, 2, LK, D)
    labels = _labels(B, LK, G)
    mass = AF.group_attention_mass(q, k, labels, G, enable_gqa=True, scale=0.3)
    ref = reference_group_mass(reference_attention(q, k, scale=0.3), labels, G)
    np.testing.assert_allclose(mass.double().numpy(), ref, atol=1e-6, rtol=0)


def test_residual_is_mass_on_ignored_keys() -> None:
    q, k = torch.randn(B, H, LQ, D), torch.randn(B, H, LK, D)
    labels = _labels(B, LK, G)
    mass = AF.group_attention_mass(q, k, labels, G)
    weights = reference_attention(q, k)
    np.testing.assert_allclose(
        1.0 - mass.double().sum(-1).numpy(), weights[..., -1], atol=1e-6, rtol=0
    )


def test_fused_attention_output_and_mass() -> None:
    q, k, v = torch.randn(B, H, LQ, D), torch.randn(B, H, LK, D), torch.randn(B, H, LK, D)
    labels = _labels(B, LK, G)
    out, mass = AF.fused_attention(q, k, v, labels, G, is_causal=True)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    ref = reference_group_mass(reference_attention(q, k, is_causal=True), labels, G)
    np.testing.assert_allclose(mass.double().numpy(), ref, atol=1e-6, rtol=0)


def test_attention_maps() -> None:
    q, k = torch.randn(B, H, LQ, D), torch.randn(B, 2, LK, D)
    maps = AF.attention_maps(q, k, enable_gqa=True, is_causal=True)
    np.testing.assert_allclose(
        maps.double().numpy(), reference_attention(q, k, is_causal=True), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("mask_kind", ["causal", "bool", "none"])
def test_select_query_rows_gives_the_same_rows(mask_kind: str) -> None:
    q, k = torch.randn(B, H, LK, D), torch.randn(B, H, LK, D)
    labels = _labels(B, LK, G)
    mask = torch.rand(B, 1, LK, LK) > 0.3 if mask_kind == "bool" else None
    if mask is not None:
        mask[..., 0] = True
    causal = mask_kind == "causal"
    full = AF.group_attention_mass(q, k, labels, G, attn_mask=mask, is_causal=causal)
    rows = torch.tensor([0, 3, 5])
    q_sel, m_sel, c_sel = AF.select_query_rows(q, mask, causal, rows, LK)
    part = AF.group_attention_mass(q_sel, k, labels, G, attn_mask=m_sel, is_causal=c_sel)
    torch.testing.assert_close(part, full[:, :, rows], atol=1e-6, rtol=0)


def test_reduce_mass_drops_padded_rows_even_if_nan() -> None:
    mass = torch.rand(B, H, LQ, G)
    qlabels = torch.randint(-1, 2, (B, LQ))
    mass.masked_fill_((qlabels == -1)[:, None, :, None], float("nan"))  # fused-kernel garbage
    sums = AF.reduce_mass(mass, qlabels, 2)
    m, lab = mass.double().numpy(), qlabels.numpy()
    ref_total = np.zeros((H, 2, G))
    ref_count = np.zeros(2)
    for b in range(B):
        for i in range(LQ):
            if lab[b, i] >= 0:
                ref_total[:, lab[b, i]] += m[b, :, i]
                ref_count[lab[b, i]] += 1
    np.testing.assert_allclose(sums.total.numpy(), ref_total, rtol=1e-12)
    np.testing.assert_array_equal(sums.count.numpy(), ref_count)
    assert sums.sample_total.shape == (B, H, 2, G)


def test_group_moments_match_loops() -> None:
    x = torch.randn(B, H, LK, D)
    labels = _labels(B, LK, G)
    x[:, :, -1] = float("inf")  # garbage at an ignored position must not leak
    m = AF.group_moments(x, labels, G, second_moment=True)
    xn, lab = x.double().numpy(), labels.numpy()
    for g in range(G):
        rows = [xn[b, :, lab[b] == g] for b in range(B)]  # each (n_b, H, D)
        allrows = np.concatenate(rows)  # (n, H, D)
        assert m.count[g] == len(allrows)
        np.testing.assert_allclose(m.total[:, g].numpy(), allrows.sum(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(m.total_sq[:, g].numpy(), (allrows**2).sum(0), rtol=1e-12)
        assert m.outer is not None
        np.testing.assert_allclose(
            m.outer[:, g].numpy(),
            np.einsum("nhd,nhe->hde", allrows, allrows),
            rtol=1e-10,
            atol=1e-10,
        )
        for b in range(B):
            np.testing.assert_allclose(m.sample_total[b, :, g].numpy(), rows[b].sum(0), atol=1e-12)


def test_mean_cosines_match_loop() -> None:
    q, k = torch.randn(B, H, LQ, D), torch.randn(B, 2, LK, D)
    ql, kl = torch.randint(-1, 2, (B, LQ)), _labels(B, LK, G)
    ql[0] = 0  # sample 0 has no query of group 1
    qm, km = AF.group_moments(q, ql, 2), AF.group_moments(k, kl, G)
    total, count = AF.mean_cosines(
        qm.sample_total, qm.sample_count, km.sample_total, km.sample_count
    )
    qn, kn = q.double().numpy(), k.double().numpy()
    ref = np.zeros((H, 2, G))
    ref_n = np.zeros((2, G))
    for b in range(B):
        for gq in range(2):
            for gk in range(G):
                qs, ks = ql[b].numpy() == gq, kl[b].numpy() == gk
                if not qs.any() or not ks.any():
                    continue
                ref_n[gq, gk] += 1
                for h in range(H):
                    qbar = qn[b, h, qs].mean(0)
                    kbar = kn[b, h // 2, ks].mean(0)
                    ref[h, gq, gk] += qbar @ kbar / np.linalg.norm(qbar) / np.linalg.norm(kbar)
    np.testing.assert_allclose(total.numpy(), ref, atol=1e-12)
    np.testing.assert_array_equal(count.numpy(), ref_n)


def test_angle_between_matches_numpy() -> None:
    g = torch.Generator().manual_seed(3)
    a = torch.randn(5, 7, dtype=torch.float64, generator=g)
    b = torch.randn(5, 7, dtype=torch.float64, generator=g)
    an, bn = a.numpy(), b.numpy()
    cos = (an * bn).sum(-1) / (np.linalg.norm(an, axis=-1) * np.linalg.norm(bn, axis=-1))
    np.testing.assert_allclose(
        AF.angle_between(a, b).numpy(), np.degrees(np.arccos(cos)), atol=1e-9
    )
    # parallel, antiparallel (the cosine clamped against rounding; arccos is ill-conditioned
    # there, a rounding of the cosine moves the angle by ~1e-6°) and a zero vector
    x = torch.tensor([0.3, 0.1, 0.7], dtype=torch.float64)
    assert float(AF.angle_between(x, 3 * x)) == pytest.approx(0.0, abs=1e-5)
    assert float(AF.angle_between(x, -2 * x)) == pytest.approx(180.0, abs=1e-5)
    assert bool(AF.angle_between(x, torch.zeros(3, dtype=torch.float64)).isnan())
