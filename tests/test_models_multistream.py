"""The multi-stream reference models: shapes, gradients, a hand-written cross-modal attention,
and layer layouts that cover every attention module."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import attnprobe as ap
from attnprobe.models import BottleneckTransformer, CrossModalLayer, CrossModalTransformer
from tests._reference import reference_attention

DIMS = {"audio": 3, "video": 5, "text": 2}
LENGTHS = {"audio": 4, "video": 3, "text": 2}


def _cross(modalities: int = 3) -> CrossModalTransformer:
    names = list(DIMS)[:modalities]
    return CrossModalTransformer(
        {m: DIMS[m] for m in names}, {m: LENGTHS[m] for m in names}, 2, dim=8, depth=2, heads=2
    )


def _bottleneck() -> BottleneckTransformer:
    return BottleneckTransformer(DIMS, LENGTHS, 2, dim=8, depth=3, fusion_layer=1, heads=2)


def _inputs(model: CrossModalTransformer | BottleneckTransformer) -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn(2, LENGTHS[m], DIMS[m]) for m in model.modalities)


@pytest.mark.parametrize("build", [_cross, _bottleneck])
def test_shapes_gradients_and_determinism(build: Any) -> None:
    model = build()
    x = _inputs(model)
    logits = model(*x)
    assert logits.shape == (2, 2)
    logits.square().sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and bool(param.grad.abs().sum() > 0), name
    torch.manual_seed(1)
    first = build().eval()
    torch.manual_seed(1)
    second = build().eval()
    for name, weight in first.state_dict().items():
        assert torch.equal(weight, second.state_dict()[name]), name
    torch.testing.assert_close(first(*x), second(*x), rtol=0, atol=0)


def test_cross_modal_attention_takes_queries_from_target_and_keys_from_source() -> None:
    model = _cross(2).eval()
    audio, video = _inputs(model)
    layer = model.get_submodule("cross.audio_to_video.0")
    assert isinstance(layer, CrossModalLayer)
    seen: dict[str, torch.Tensor] = {}
    layer.attn.register_forward_hook(lambda m, a, out: seen.__setitem__("attn", out[0]))
    layer.register_forward_hook(lambda m, a, out: seen.__setitem__("layer", out))
    model(audio, video)

    target = model.embed["video"](video) + model.pos["video"]  # (B, 3, d)
    source = model.embed["audio"](audio) + model.pos["audio"]  # (B, 4, d)
    w_q, w_k, w_v = layer.attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = layer.attn.in_proj_bias.chunk(3)  # type: ignore[union-attr]

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(2, t.shape[1], 2, 4).transpose(1, 2)  # (B, H, L, 4)

    q = heads(layer.norm(target) @ w_q.T + b_q)  # (B, H, 3, 4)
    k = heads(layer.norm(source) @ w_k.T + b_k)  # (B, H, 4, 4)
    v = heads(layer.norm(source) @ w_v.T + b_v)  # (B, H, 4, 4)
    weights = torch.from_numpy(reference_attention(q, k)).float()  # (B, H, 3, 4)
    attended = layer.attn.out_proj((weights @ v).transpose(1, 2).reshape(2, 3, 8))  # (B, 3, d)
    torch.testing.assert_close(seen["attn"], attended, atol=1e-5, rtol=1e-5)
    x = target + attended  # (B, 3, d)
    torch.testing.assert_close(seen["layer"], x + layer.ff(layer.norm_ff(x)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("build", [_cross, _bottleneck])
def test_layer_layouts_cover_every_attention_module(build: Any) -> None:
    model = build()
    attention = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    seen: dict[str, tuple[int, int]] = {}

    def record(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            query = kwargs.get("query", args[0] if args else None)
            key = kwargs.get("key", args[1] if len(args) > 1 else None)
            assert query is not None and key is not None
            seen[name] = (query.shape[1], key.shape[1])  # batch first: (B, L, d)

        return hook

    for name, module in attention:
        module.register_forward_pre_hook(record(name), with_kwargs=True)
    model(*_inputs(model))
    assert set(seen) == {n for n, _ in attention}

    layouts = model.layer_layouts()
    layouts.check_patterns(attention)
    for name, module in attention:
        query_layout = layouts.query_layout(name, module)
        assert isinstance(query_layout, ap.ModalityLayout), name
        query_length, key_length = seen[name]
        assert sum(query_layout.counts.values()) == query_length, name
        key_layout = layouts.key_layout(name, module)
        if name.startswith("cross."):
            assert isinstance(key_layout, ap.ModalityLayout), name
            assert sum(key_layout.counts.values()) == key_length, name
            source, target = name.split(".")[1].split("_to_")
            assert query_layout.names == (target,) and key_layout.names == (source,)
        else:
            assert key_layout is None and query_length == key_length, name


def test_layout_names() -> None:
    layouts = _cross(3).layer_layouts()
    fuse = layouts.query_layout("fuse.video.self_attn", nn.Identity())
    assert isinstance(fuse, ap.ModalityLayout)
    assert fuse.counts == {"video_from_audio": 3, "video_from_text": 3}
    layouts = _bottleneck().layer_layouts()
    unimodal = layouts.query_layout("streams.text.0.self_attn", nn.Identity())
    fused = layouts.query_layout("streams.text.1.self_attn", nn.Identity())
    assert isinstance(unimodal, ap.ModalityLayout) and unimodal.counts == {"cls": 1, "text": 2}
    assert isinstance(fused, ap.ModalityLayout)
    assert fused.counts == {"cls": 1, "text": 2, "bottleneck": 4}


@pytest.mark.parametrize("build", [_cross, _bottleneck])
def test_probing_each_declared_layer_gives_masses_summing_to_one(build: Any) -> None:
    model = build().eval()
    x = _inputs(model)
    layouts = model.layer_layouts()
    for pattern, layout in layouts.queries:
        assert isinstance(pattern, str)
        keys = next((lay for sel, lay in layouts.keys if sel == pattern), None)
        probe = ap.probe(model, modalities=layout, key_modalities=keys, layers=pattern)
        with torch.no_grad(), probe as p:
            model(*x)
        frame = p.result().to_frame()
        assert set(frame["query_modality"]) == set(layout.names), pattern
        assert set(frame["key_modality"]) == set((keys or layout).names), pattern
        sums = frame.groupby(["layer", "head", "query_modality"])["mass"].sum()
        torch.testing.assert_close(
            torch.tensor(sums.to_numpy()), torch.ones(len(sums), dtype=torch.float64)
        )


@pytest.mark.parametrize(
    "build",
    [
        lambda: CrossModalTransformer({"audio": 3}, {"audio": 4}, 2),
        lambda: CrossModalTransformer({"audio": 3, "video": 2}, {"video": 4, "audio": 4}, 2),
        lambda: BottleneckTransformer({"cls": 3}, {"cls": 4}, 2),
        lambda: BottleneckTransformer({"audio": 3}, {"audio": 4}, 2, depth=2, fusion_layer=3),
    ],
)
def test_bad_configurations_are_refused(build: Any) -> None:
    with pytest.raises(ValueError):
        build()


def test_wrong_number_of_inputs_is_refused() -> None:
    for model in (_cross(), _bottleneck()):
        with pytest.raises(ValueError, match="expected 3 inputs"):
            model(torch.randn(2, 4, 3))
