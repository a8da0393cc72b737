"""Attention modules that compute their weights by hand (``softmax(q @ kᵀ …)``), probed without
an adapter of the user's: against numpy formulas written from ``q`` and ``k``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import attnprobe as ap
from attnprobe.errors import CaptureError


class BmmAttention(nn.Module):
    """Old-HF style: ``[B·H, L, D]`` ``bmm`` with the query scaled first, an additive padding
    mask and a relative position bias added before ``F.softmax``."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.scaling = self.head_dim**-0.5
        self.fail = False

    def split(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return (
            x.view(batch, length, self.num_heads, self.head_dim)
            .transpose(1, 2)
            .reshape(batch * self.num_heads, length, self.head_dim)
        )  # (B·H, L, D)

    def forward(self, x: Tensor, padding: Tensor | None = None) -> tuple[Tensor, Tensor]:
        batch, length, dim = x.shape
        q = self.split(self.q_proj(x) * self.scaling)  # (B·H, L, D)
        k, v = self.split(self.k_proj(x)), self.split(self.v_proj(x))
        scores = torch.bmm(q, k.transpose(1, 2))  # (B·H, L, L)
        position = torch.arange(length)
        scores = scores - 0.1 * (position[:, None] - position[None, :]).abs()  # a position bias
        if padding is not None:  # (B, L), True = padding
            scores = scores.view(batch, self.num_heads, length, length)
            scores = scores.masked_fill(padding[:, None, None, :], torch.finfo(x.dtype).min)
            scores = scores.view(batch * self.num_heads, length, length)
        weights = nn.functional.softmax(scores, dim=-1)
        if self.fail:
            raise RuntimeError("boom")
        out = torch.bmm(nn.functional.dropout(weights, 0.0), v)  # (B·H, L, D)
        out = out.view(batch, self.num_heads, length, self.head_dim).transpose(1, 2)
        return out.reshape(batch, length, dim), weights


class EinsumCrossAttention(nn.Module):
    """BERT style ``[B, H, L, D]`` with ``einsum`` and an ``nn.Softmax`` module; attends to
    ``encoder_hidden_states`` when given."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.num_attention_heads, self.attention_head_size = heads, dim // heads
        self.query, self.key = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def heads(self, x: Tensor) -> Tensor:
        return x.view(*x.shape[:2], self.num_attention_heads, -1).transpose(1, 2)  # (B, H, L, D)

    def forward(self, x: Tensor, encoder_hidden_states: Tensor | None = None) -> Tensor:
        source = x if encoder_hidden_states is None else encoder_hidden_states
        q, k = self.heads(self.query(x)), self.heads(self.key(source))
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / self.attention_head_size**0.5
        weights = nn.Softmax(dim=-1)(scores)  # (B, H, Lq, Lk)
        return torch.einsum("bhqk,bhkd->bhqd", weights, k).transpose(1, 2).flatten(2)


def _softmax(scores: np.ndarray) -> np.ndarray:
    scores = scores - scores.max(-1, keepdims=True)
    return np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)


def _masses(weights: np.ndarray, queries: np.ndarray, keys: np.ndarray, gq: int, gk: int):
    """``[H, Gq, Gk]``: mean over the query rows of group gq of the weights summed over the keys
    of group gk (``weights`` ``[B, H, Lq, Lk]``, labels ``[B, L]``, -1 = ignored)."""
    heads = weights.shape[1]
    out = np.zeros((heads, gq, gk))
    for a in range(gq):
        rows = queries == a  # (B, Lq)
        for b in range(gk):
            on_group = (weights * (keys == b)[:, None, None, :]).sum(-1)  # (B, H, Lq)
            out[:, a, b] = on_group.transpose(1, 0, 2)[:, rows].mean(-1)
    return out


def test_bmm_attention_with_bias_and_padding_equals_numpy() -> None:
    torch.manual_seed(0)
    module = BmmAttention()
    x = torch.randn(2, 6, 16)
    padding = torch.tensor([[True, False, False, False, False, False], [False] * 6])
    with torch.no_grad():
        expected_out, _ = module(x, padding)
        with ap.probe(module, modalities={"audio": 2, "video": 4}) as p:
            out, _ = module(x, padding)
    assert torch.equal(out, expected_out)  # the model's computation is untouched
    layer = p.result().layers[0]
    # numpy: the attention written out from the projections
    q = module.q_proj(x).detach().numpy().reshape(2, 6, 4, 4).transpose(0, 2, 1, 3)
    k = module.k_proj(x).detach().numpy().reshape(2, 6, 4, 4).transpose(0, 2, 1, 3)
    distance = np.abs(np.arange(6)[:, None] - np.arange(6)[None, :])
    scores = q @ k.transpose(0, 1, 3, 2) / 2.0 - 0.1 * distance  # (B, H, L, L)
    scores = np.where(padding.numpy()[:, None, None, :], -1e30, scores)
    # a fixed layout knows nothing of the padding: its row is labelled too (its key gets 0)
    labels = np.tile([0, 0, 1, 1, 1, 1], (2, 1))  # (B, L)
    expected = _masses(_softmax(scores), labels, labels, 2, 2)
    np.testing.assert_allclose(layer.mass.double().numpy(), expected, atol=1e-6)
    # the key statistics come from the product's operands: per group means of k
    key_mean = layer.key_mean.double().numpy()  # (Hk, Gk, D)
    for group in (0, 1):
        chosen = labels == group  # (B, L)
        expected_mean = k.transpose(0, 2, 1, 3)[chosen].mean(0)  # (H, D)
        np.testing.assert_allclose(key_mean[:, group], expected_mean, atol=1e-6)


def test_einsum_attention_cross_calls_take_the_key_layout_and_cls_queries() -> None:
    torch.manual_seed(1)
    module = EinsumCrossAttention()
    x, memory = torch.randn(3, 4, 16), torch.randn(3, 5, 16)
    with ap.probe(
        module,
        modalities={"cls": 1, "text": 3},
        key_modalities={"image": 5},
        queries="cls",
        layers=[""],
    ) as p:
        module(x, encoder_hidden_states=memory)
    layer = p.result().layers[0]
    assert layer.query_groups == ("cls",) and layer.key_groups == ("image",)
    np.testing.assert_allclose(layer.mass.double().numpy(), 1.0, atol=1e-6)  # one key group
    with ap.probe(module, modalities={"cls": 1, "text": 3}, layers=[""]) as p:
        module(x)  # no encoder states: self-attention, labelled with the query layout
    layer = p.result().layers[0]
    q = module.heads(module.query(x)).detach().numpy()
    k = module.heads(module.key(x)).detach().numpy()
    weights = _softmax(q @ k.transpose(0, 1, 3, 2) / 8**0.5)
    labels = np.tile([0, 1, 1, 1], (3, 1))
    np.testing.assert_allclose(
        layer.mass.double().numpy(), _masses(weights, labels, labels, 2, 2), atol=1e-6
    )


def test_a_softmax_that_is_not_dense_attention_is_not_captured_and_says_why() -> None:
    class BandedAttention(nn.Module):
        num_heads = 2

        def forward(self, x: Tensor) -> Tensor:
            band = torch.einsum("bld,bld->bl", x, x)[..., None].expand(-1, -1, 3)  # (B, L, 3)
            return torch.softmax(band, dim=-1)

    module = nn.Sequential(BandedAttention())
    with ap.probe(module, modalities={"a": 2, "b": 3}) as p:
        module(torch.randn(2, 5, 4))
    with pytest.raises(CaptureError) as error:
        p.result()
    assert (
        "'0' ran 1 time(s) but no attention call was captured: its forward computed no softmax "
        "over the keys of a query-key product; attnprobe reads attention computed by hand"
    ) in str(error.value)


def test_a_default_probe_leaves_out_a_module_it_cannot_capture_beside_others() -> None:
    """Selected by default, a module that ran without a capturable call (LED's banded encoder
    attention) is left out with a warning when other layers were captured."""

    class BandedAttention(nn.Module):
        num_heads = 2

        def forward(self, x: Tensor) -> Tensor:
            band = torch.einsum("bld,bld->bl", x, x)[..., None].expand(-1, -1, 3)  # (B, L, 3)
            return x * torch.softmax(band, dim=-1)[..., :1]

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.banded, self.dense = BandedAttention(), BmmAttention()

        def forward(self, x: Tensor) -> Tensor:
            return self.dense(self.banded(x))[0]

    model = Encoder()
    with ap.probe(model, modalities={"a": 2, "b": 4}) as p, torch.no_grad():
        model(torch.randn(2, 6, 16))
    with pytest.warns(ap.AttnProbeWarning, match="'banded' ran 1 time"):
        result = p.result()
    assert result.layer_names == ("dense",)
    assert result.skipped["banded"].startswith(
        "ran 1 time(s) but no attention call was captured: its forward computed no softmax"
    )


def test_no_mode_or_hook_survives_an_exception_inside_the_module() -> None:
    module = BmmAttention()
    module.fail = True
    with pytest.raises(RuntimeError, match="boom"), ap.probe(module, modalities={"a": 3}):
        module(torch.randn(1, 3, 16))
    assert not module._forward_hooks and not module._forward_pre_hooks
    assert torch._C._len_torch_function_stack() == 0
    assert ap.capture.adapter_for(module).name == "hand"
