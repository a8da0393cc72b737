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


def test_unimodal_heads_are_detached_and_concat_baseline_shares_the_encoders() -> None:
    from attnprobe.models import ConcatFusion, FusionOutput

    dims, lengths = {"a": 3, "b": 4}, {"a": 2, "b": 5}
    torch.manual_seed(0)
    fusion = LateFusionTransformer(dims, lengths, num_classes=4, dim=16, unimodal_heads=True)
    torch.manual_seed(0)
    concat = ConcatFusion(dims, lengths, num_classes=4, dim=16, unimodal_heads=True)
    for name, weight in fusion.encoders.state_dict().items():  # same seed, same encoders
        assert torch.equal(weight, concat.encoders.state_dict()[name]), name
    x = (torch.randn(2, 2, 3), torch.randn(2, 5, 4))
    for model in (fusion, concat):
        out = model(*x)
        assert isinstance(out, FusionOutput) and out.logits.shape == (2, 4)
        assert set(out.unimodal_logits) == {"a", "b"}
        model.zero_grad()
        sum(t.sum() for t in out.unimodal_logits.values()).backward()  # type: ignore[union-attr]
        assert all(p.grad is None for p in model.encoders.parameters())
        assert model.unimodal is not None
        assert all(p.grad is not None for p in model.unimodal.parameters())
    concat.eval()
    with torch.no_grad():
        features = torch.cat(
            [concat.encoders[m](t)[:, 0] for m, t in zip("ab", x, strict=True)], -1
        )
        torch.testing.assert_close(concat(*x).logits, concat.head(features))  # type: ignore[union-attr]
