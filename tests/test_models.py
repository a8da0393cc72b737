"""The reference fusion layer against a hand-written attention."""

from __future__ import annotations

import torch

from attnprobe.models import FusionAttention, LateFusionTransformer
from tests._reference import reference_attention


def test_fusion_attention_matches_hand_written_reference() -> None:
    layer = FusionAttention(dim=8, num_heads=2, dropout=0.0).eval()
    x = torch.randn(3, 5, 8)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[1, 3:] = True
    out = layer(x, key_padding_mask=pad)
    full = torch.cat([layer.cls.expand(3, 1, 8), x], 1)  # (B, 6, d)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(3, 6, 2, 4).transpose(1, 2)  # (B, H, 6, 4)

    q, k, v = heads(layer.q_proj(full)), heads(layer.k_proj(full)), heads(layer.v_proj(full))
    keep = torch.cat([torch.ones(3, 1, dtype=torch.bool), ~pad], 1).view(3, 1, 1, 6)
    w = torch.from_numpy(reference_attention(q, k, keep)).float()  # (B, H, 6, 6)
    ref = layer.out_proj((w @ v).transpose(1, 2).reshape(3, 6, 8))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_late_fusion_layout_and_gradients() -> None:
    model = LateFusionTransformer({"a": 3, "b": 4}, {"a": 2, "b": 5}, num_classes=4, dim=16)
    assert model.fusion_layout().counts == {"cls": 1, "a": 3, "b": 6}
    logits = model(torch.randn(2, 2, 3), torch.randn(2, 5, 4))
    logits.sum().backward()
    assert model.fusion.cls.grad is not None
