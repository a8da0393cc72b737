"""RollingQ: rotation math against numpy, the corrector on the bundled model, and the query
rotation on torch / SDPA / timm / HuggingFace attention modules against hand-written attention."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnprobe as ap
from attnprobe.functional import rollingq_anchor, rotation_between
from attnprobe.models import FusionAttention, LateFusionTransformer
from attnprobe.rollingq import anchor_statistics
from tests._reference import reference_attention

DIMS = {"audio": 6, "video": 8}
LENGTHS = {"audio": 4, "video": 3}


def model_and_batches(seed: int = 0, **kwargs: Any) -> tuple[LateFusionTransformer, list[Any]]:
    torch.manual_seed(seed)
    model = LateFusionTransformer(DIMS, LENGTHS, num_classes=5, dim=16, **kwargs)
    g = torch.Generator().manual_seed(seed + 1)
    batches = [
        (torch.randn(6, 4, 6, generator=g), torch.randn(6, 3, 8, generator=g)) for _ in range(3)
    ]
    return model, batches


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# -- the rotation ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["plane", "svd"])
@pytest.mark.parametrize("dim", [2, 3, 16, 64])
def test_rotation_maps_x_to_y_and_is_proper(method: str, dim: int) -> None:
    g = torch.Generator().manual_seed(dim)
    x, y = torch.randn(5, dim, generator=g), torch.randn(5, dim, generator=g) * 3
    w = rotation_between(x, y, method).numpy()  # type: ignore[arg-type]
    xn, yn = x.double().numpy(), y.double().numpy()
    np.testing.assert_allclose(np.einsum("hij,hj->hi", w, unit(xn)), unit(yn), atol=1e-12)
    np.testing.assert_allclose(
        w @ w.transpose(0, 2, 1), np.broadcast_to(np.eye(dim), w.shape), atol=1e-12
    )
    np.testing.assert_allclose(np.linalg.det(w), 1.0, atol=1e-12)
    np.testing.assert_allclose(
        np.linalg.norm(np.einsum("hij,hj->hi", w, xn), axis=-1), np.linalg.norm(xn, axis=-1)
    )


def test_plane_and_svd_give_the_same_rotated_query_and_plane_is_minimal() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 12, generator=g), torch.randn(4, 12, generator=g)
    plane, svd = rotation_between(x, y, "plane"), rotation_between(x, y, "svd")
    torch.testing.assert_close(plane @ x.double().unsqueeze(-1), svd @ x.double().unsqueeze(-1))
    # the plane rotation leaves the complement of span{x, y} alone
    z = torch.randn(4, 12, generator=g).double()
    basis = torch.linalg.qr(torch.stack([x.double(), y.double()], -1)).Q  # (4, 12, 2)
    z = z - (basis @ (basis.transpose(-1, -2) @ z.unsqueeze(-1))).squeeze(-1)
    torch.testing.assert_close((plane @ z.unsqueeze(-1)).squeeze(-1), z)


def test_rotation_edge_cases() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0]])
    col = x.double().T  # (3, 1)
    for method in ("plane", "svd"):
        same = rotation_between(x, 2 * x, method)[0]  # type: ignore[arg-type]
        torch.testing.assert_close(same @ col, col)
        flip = rotation_between(x, -x, method)[0]  # type: ignore[arg-type]
        torch.testing.assert_close(flip @ col, -col)
        assert abs(float(torch.linalg.det(flip)) - 1.0) < 1e-12
    torch.testing.assert_close(rotation_between(x, 2 * x)[0], torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="non-zero"):
        rotation_between(x, torch.zeros(1, 3))


@pytest.mark.parametrize("rho", [0.0, 0.7, 5.0])
def test_anchor_is_the_papers_formula(rho: float) -> None:
    g = np.random.default_rng(0)
    mu_a, mu_v, q = g.normal(size=8), g.normal(size=8) * 4, g.normal(size=8)
    cos_a, cos_v = 0.3, -0.2
    air = cos_a - cos_v
    alpha = 0.5 * (1 + math.tanh(-rho * air))
    expected = unit(alpha * unit(mu_a) + (1 - alpha) * unit(mu_v)) * np.linalg.norm(q)
    anchor, weights = rollingq_anchor(
        torch.tensor(np.stack([mu_a, mu_v])),
        torch.tensor(q),
        torch.tensor([cos_a, cos_v], dtype=torch.float64),
        rho,
    )
    np.testing.assert_allclose(anchor.numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(weights.numpy(), [alpha, 1 - alpha], atol=1e-12)


def test_anchor_for_three_modalities_weights_the_least_attended_most() -> None:
    mu = torch.eye(3, dtype=torch.float64)
    anchor, alpha = rollingq_anchor(mu, torch.ones(3), torch.tensor([0.5, 0.0, -0.5]), rho=1.0)
    centred = np.array([0.5, 0.0, -0.5])
    expected = np.exp(-2 * centred) / np.exp(-2 * centred).sum()
    np.testing.assert_allclose(alpha.numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(anchor.numpy(), unit(expected) * math.sqrt(3), atol=1e-12)


# -- the corrector on the bundled model ----------------------------------------------------------
def test_nothing_changes_before_the_first_rotation() -> None:
    vanilla, batches = model_and_batches(seed=3)
    corrected, _ = model_and_batches(seed=3)
    rq = ap.RollingQ(16, modalities=("audio", "video")).attach(corrected, "fusion")
    for model in (vanilla, corrected):
        model.train()
    torch.manual_seed(11)
    out_v = vanilla(*batches[0])
    out_v.sum().backward()
    torch.manual_seed(11)
    out_c = corrected(*batches[0])
    out_c.sum().backward()
    assert torch.equal(out_v, out_c)  # same dropout masks, same bits
    for (name, a), (_, b) in zip(
        vanilla.named_parameters(), corrected.named_parameters(), strict=True
    ):
        assert a.grad is not None and b.grad is not None
        assert torch.equal(a.grad, b.grad), name
    assert int(rq.num_rotations) == 0
    torch.testing.assert_close(rq.rotation, torch.eye(16).unsqueeze(0))


def hand_statistics(model: LateFusionTransformer, batches: list[Any]) -> dict[str, np.ndarray]:
    """q̄, μ_a, μ_v and per-sample cosines of the fusion CLS, written out from the weights."""
    model.eval()
    keys: dict[str, list[np.ndarray]] = {"audio": [], "video": []}
    cos: dict[str, list[np.ndarray]] = {"audio": [], "video": []}
    queries = []
    with torch.no_grad():
        for a, v in batches:
            tokens = torch.cat([model.encoders["audio"](a), model.encoders["video"](v)], 1)
            x = torch.cat([model.fusion.cls.expand(len(a), 1, 16), tokens], 1).double()
            q = x[:, 0] @ model.fusion.q_proj.weight.double().T + model.fusion.q_proj.bias.double()
            k = x @ model.fusion.k_proj.weight.double().T + model.fusion.k_proj.bias.double()
            queries.append(q.numpy())
            spans = {"audio": slice(1, 6), "video": slice(6, 10)}
            for m, span in spans.items():
                keys[m].append(k[:, span].reshape(-1, 16).numpy())
                kbar = k[:, span].mean(1).numpy()
                cos[m].append((unit(q.numpy()) * unit(kbar)).sum(-1))
    return {
        "q": np.concatenate(queries).mean(0),
        "audio": np.concatenate(keys["audio"]).mean(0),
        "video": np.concatenate(keys["video"]).mean(0),
        "cos_audio": np.concatenate(cos["audio"]).mean(),
        "cos_video": np.concatenate(cos["video"]).mean(),
    }


@pytest.mark.parametrize("method", ["plane", "svd"])
def test_anchor_statistics_and_rotation_against_a_direct_computation(method: str) -> None:
    model, batches = model_and_batches(seed=5)
    rq = ap.RollingQ(16, modalities=("audio", "video"), rho=2.0, construction=method)  # type: ignore[arg-type]
    rq.attach(model, "fusion")
    stats = anchor_statistics(model, batches, modalities=model.fusion_layout(), layer="fusion")
    ref = hand_statistics(model, batches)
    plan = rq.plan(stats)
    np.testing.assert_allclose(plan.query_mean[0].numpy(), ref["q"], atol=1e-5)
    np.testing.assert_allclose(plan.key_means[0, 0].numpy(), ref["audio"], atol=1e-5)
    np.testing.assert_allclose(plan.key_means[0, 1].numpy(), ref["video"], atol=1e-5)
    air = ref["cos_audio"] - ref["cos_video"]
    assert rq.air(stats).item() == pytest.approx(air, abs=1e-6)
    alpha = 0.5 * (1 + math.tanh(-2.0 * air))
    direction = unit(alpha * unit(ref["audio"]) + (1 - alpha) * unit(ref["video"]))
    anchor = direction * np.linalg.norm(ref["q"])
    step = rq.step(stats, epoch=0)
    assert step.rotated and step.num_rotations == 1 and int(rq.num_rotations) == 1
    assert step.alpha[0][0] == pytest.approx(alpha, abs=1e-5)
    # W q̄ = q_b, and the model's CLS query is now the rotated one
    w = rq.rotation[0].double().numpy()
    np.testing.assert_allclose(w @ ref["q"], anchor, atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(w), 1.0, atol=1e-6)
    after = anchor_statistics(model, batches, modalities=model.fusion_layout(), layer="fusion")
    np.testing.assert_allclose(after.query_mean[0, 0].numpy(), anchor, atol=1e-5)
    np.testing.assert_allclose(after.key_mean.numpy(), stats.key_mean.numpy(), atol=1e-6)
    assert step.angle[0] == pytest.approx(
        math.degrees(math.acos(float(unit(ref["q"]) @ unit(anchor)))), abs=1e-3
    )


def test_plane_and_svd_models_give_the_same_logits() -> None:
    logits = []
    for method in ("plane", "svd"):
        model, batches = model_and_batches(seed=2)
        rq = ap.RollingQ(16, modalities=("audio", "video"), construction=method)  # type: ignore[arg-type]
        rq.attach(model, "fusion")
        stats = anchor_statistics(model, batches, modalities=model.fusion_layout(), layer="fusion")
        rq.step(stats)
        with torch.no_grad():
            logits.append(model.eval()(*batches[0]))
    torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=1e-5)


def test_a_reloaded_checkpoint_keeps_the_rotation() -> None:
    model, batches = model_and_batches(seed=4)
    rq = ap.RollingQ(16, modalities=("audio", "video")).attach(model, "fusion")
    rq.step(anchor_statistics(model, batches, modalities=model.fusion_layout(), layer="fusion"))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    fresh, _ = model_and_batches(seed=99)
    fresh_rq = ap.RollingQ(16, modalities=("audio", "video")).attach(fresh, "fusion")
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert int(fresh_rq.num_rotations) == 1
    with torch.no_grad():
        assert torch.equal(model.eval()(*batches[1]), fresh.eval()(*batches[1]))
    # a model without the corrector refuses the rotation instead of dropping it
    plain, _ = model_and_batches(seed=99)
    with pytest.raises(RuntimeError, match="rollingq"):
        plain.load_state_dict(model.state_dict())


def test_beta_and_max_rotations() -> None:
    model, batches = model_and_batches(seed=6)
    layout = model.fusion_layout()
    rq = ap.RollingQ(16, modalities=("audio", "video"), beta=10.0).attach(model, "fusion")
    stats = anchor_statistics(model, batches, modalities=layout, layer="fusion")
    step = rq.step(stats)
    assert not step.rotated and step.reason == "below beta" and int(rq.num_rotations) == 0
    rq.beta = 0.0
    assert rq.step(stats).rotated
    again = rq.step(anchor_statistics(model, batches, modalities=layout, layer="fusion"))
    assert not again.rotated and again.reason == "max_rotations reached"
    row = again.to_dict()
    assert row["rollingq_num_rotations"] == 1 and math.isnan(float(row["rollingq_angle_deg"]))
    rq.max_rotations = 3
    third = rq.step(anchor_statistics(model, batches, modalities=layout, layer="fusion"))
    assert third.num_rotations == 2
    rq.detach()
    assert model.fusion.rollingq is None


def test_rotation_is_frozen_but_differentiable_through() -> None:
    model, batches = model_and_batches(seed=7)
    rq = ap.RollingQ(16, modalities=("audio", "video")).attach(model, "fusion")
    rq.step(anchor_statistics(model, batches, modalities=model.fusion_layout(), layer="fusion"))
    assert not list(rq.parameters()) and not rq.rotation.requires_grad
    assert all("rollingq" not in n for n, _ in model.named_parameters())
    model.train()
    model(*batches[0]).sum().backward()
    assert model.fusion.q_proj.weight.grad is not None and model.fusion.cls.grad is not None
    assert float(model.fusion.q_proj.weight.grad.abs().sum()) > 0


def test_running_statistics_anchor_and_extensions() -> None:
    torch.manual_seed(0)
    dims = {"a": 3, "b": 4, "c": 5}
    model = LateFusionTransformer(dims, {"a": 2, "b": 3, "c": 2}, 4, dim=16, fusion_heads=2)
    batches = [(torch.randn(5, 2, 3), torch.randn(5, 3, 4), torch.randn(5, 2, 5))]
    with pytest.raises(ap.errors.ProbeConfigError, match="per_head=True"):
        ap.RollingQ(8, modalities=("a", "b", "c"), num_heads=2)
    rq = ap.RollingQ(8, modalities=("a", "b", "c"), num_heads=2, per_head=True, rho=1.0)
    rq.attach(model, "fusion")
    with ap.probe(model, modalities=model.fusion_layout(), layers="fusion", queries="cls") as p:
        model.train()(*batches[0])
    running = p.result().layers[0]
    plan = rq.plan(running)
    assert plan.rotation.shape == (2, 8, 8) and plan.alpha.shape == (2, 3)
    step = rq.step(running)
    assert step.rotated and len(step.angle) == 2 and len(step.alpha[0]) == 3
    frozen = anchor_statistics(model, batches, modalities=model.fusion_layout(), layer="fusion")
    for h in range(2):  # each head's mean query now points at its own anchor
        torch.testing.assert_close(
            (rq.rotation[h].double() @ running.query_mean[h, 0].double()),
            plan.anchor[h],
            atol=1e-5,
            rtol=1e-5,
        )
    assert frozen.num_heads == 2


def test_bad_configuration_is_explained() -> None:
    model, batches = model_and_batches()
    rq = ap.RollingQ(16, modalities=("audio", "video"))
    with pytest.raises(ap.errors.ProbeConfigError, match="no module 'fusio'"):
        rq.attach(model, "fusio")
    with pytest.raises(ap.errors.ProbeConfigError, match="not an attention module"):
        rq.attach(model, "head")
    with pytest.raises(ap.errors.ProbeConfigError, match="two distinct"):
        ap.RollingQ(16, modalities=("audio",))
    rq.attach(model, "fusion")
    with pytest.raises(ap.errors.ProbeConfigError, match="already attached"):
        rq.attach(model, "fusion")
    with ap.probe(model, modalities=model.fusion_layout(), layers="fusion") as p:
        model(*batches[0])
    wrong = ap.RollingQ(16, modalities=("audio", "text"))
    with pytest.raises(ap.errors.AnalysisError, match="no key group"):
        wrong.step(p.result().layers[0])


# -- the rotation on other attention modules -----------------------------------------------------
def rotation_state(
    heads: int, dim: int, seed: int = 0
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = rotation_between(torch.randn(heads, dim, generator=g), torch.randn(heads, dim, generator=g))
    return {"rotation": w.float(), "num_rotations": torch.tensor(1)}, w.float()


def hand_output(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, mask: Any = None
) -> torch.Tensor:
    """Attention with query row 0 rotated, by hand: ``[B, H, L, D]`` in, ``[B, H, L, Dv]``."""
    q = q.clone()
    q[:, :, 0] = torch.einsum("hij,bhj->bhi", w, q[:, :, 0])
    weights = torch.from_numpy(reference_attention(q, k, mask)).float()
    return weights @ v


class SdpaBlock(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]  # (B, H, N, D) each

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(x)
        return F.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("probe_first", [False, True])
def test_custom_sdpa_module_and_probe_order(probe_first: bool) -> None:
    block = SdpaBlock()
    model = nn.Sequential(block)
    x = torch.randn(3, 5, 16)
    state, w = rotation_state(2, 8)
    rq = ap.RollingQ(8, modalities=("a", "b"), num_heads=2, per_head=True)
    p = ap.probe(model, modalities={"cls": 1, "a": 2, "b": 2}, queries="cls")
    if probe_first:
        p.attach()
    rq.attach(model, "0")
    rq.load_state_dict(state)
    p.attach()
    try:
        out = model(x)
    finally:
        p.close()
    q, k, v = block.split(x)
    torch.testing.assert_close(out, hand_output(q, k, v, w), atol=1e-5, rtol=1e-5)
    expected_q = torch.einsum("hij,bhj->bhi", w, q[:, :, 0]).mean(0)  # (H, D) rotated CLS query
    torch.testing.assert_close(
        p.result().layers[0].query_mean[:, 0].float(), expected_q, atol=1e-5, rtol=1e-5
    )
    rq.detach()
    assert (
        not hasattr(block, "rollingq") and not block._forward_hooks and not block._forward_pre_hooks
    )
    torch.testing.assert_close(model(x), F.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_torch_multihead_attention_in_an_encoder_layer(mode: str) -> None:
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
    layer.train(mode == "train")
    x = torch.randn(3, 5, 16)
    state, w = rotation_state(2, 8, seed=1)
    rq = ap.RollingQ(8, modalities=("a", "b"), num_heads=2, per_head=True).attach(
        layer, "self_attn"
    )
    rq.load_state_dict(state)
    attn = layer.self_attn
    captured: dict[str, torch.Tensor] = {}
    handle = attn.register_forward_hook(lambda m, a, o: captured.__setitem__("out", o[0]))
    with torch.set_grad_enabled(mode == "train"):
        layer(x)
    handle.remove()
    h = layer.norm1(x) if layer.norm_first else x
    qkv = (
        F.linear(h, attn.in_proj_weight, attn.in_proj_bias)
        .view(3, 5, 3, 2, 8)
        .permute(2, 0, 3, 1, 4)
    )
    heads = hand_output(qkv[0], qkv[1], qkv[2], w)  # (B, H, L, D)
    expected = attn.out_proj(heads.transpose(1, 2).reshape(3, 5, 16))
    torch.testing.assert_close(captured["out"], expected, atol=1e-5, rtol=1e-5)
    assert torch.backends.mha.get_fastpath_enabled()
    with pytest.raises(ap.errors.CaptureError, match="need_weights=False"):
        attn(x, x, x, need_weights=True)
    rq.detach()


def test_timm_attention_block() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1
    ).eval()
    attn = model.blocks[0].attn
    heads, dim = attn.num_heads, attn.head_dim
    state, w = rotation_state(heads, dim, seed=2)
    rq = ap.RollingQ(dim, modalities=("cls", "patches"), num_heads=heads, per_head=True)
    rq.attach(model, "blocks.0.attn").load_state_dict(state)
    seen: dict[str, torch.Tensor] = {}
    attn.register_forward_hook(lambda m, a, o: seen.update(x=a[0], out=o))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
        x = seen["x"]
        b, n, c = x.shape
        qkv = attn.qkv(x).reshape(b, n, 3, heads, dim).permute(2, 0, 3, 1, 4)
        out = hand_output(qkv[0], qkv[1], qkv[2], w).transpose(1, 2).reshape(b, n, c)
        torch.testing.assert_close(seen["out"], attn.proj(out), atol=1e-5, rtol=1e-5)
        attn.fused_attn = False
        with pytest.raises(ap.errors.CaptureError, match="fused_attn=True"):
            model(torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_huggingface_attention_module(backend: str) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=20,
        max_position_embeddings=16,
        attn_implementation=backend,
    )
    model = transformers.BertModel(config).eval()
    path = "encoder.layer.0.attention.self"
    module = model.get_submodule(path)
    state, w = rotation_state(2, 8, seed=3)
    rq = ap.RollingQ(8, modalities=("a", "b"), num_heads=2, per_head=True).attach(model, path)
    rq.load_state_dict(state)
    seen: dict[str, Any] = {}
    module.register_forward_hook(
        lambda m, a, k, o: seen.update(x=k.get("hidden_states", a[0] if a else None), out=o[0]),
        with_kwargs=True,
    )
    ids = torch.randint(3, 50, (2, 6))
    layout = {"cls": 1, "a": 2, "b": 3}
    with ap.probe(model, modalities=layout, layers=path, queries="cls") as p, torch.no_grad():
        model(input_ids=ids)
    x = seen["x"]

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(2, 6, 2, 8).transpose(1, 2)  # (B, H, L, D)

    with torch.no_grad():
        q, k, v = heads(module.query(x)), heads(module.key(x)), heads(module.value(x))
        expected = hand_output(q, k, v, w).transpose(1, 2).reshape(2, 6, 16)
    torch.testing.assert_close(seen["out"].reshape(2, 6, 16), expected, atol=1e-5, rtol=1e-5)
    rotated_q = torch.einsum("hij,bhj->bhi", w, q[:, :, 0]).mean(0)
    torch.testing.assert_close(
        p.result().layers[0].query_mean[:, 0].float(), rotated_q, atol=1e-5, rtol=1e-5
    )
    assert model.config._attn_implementation.startswith("attnprobe:")
    rq.detach()
    assert model.config._attn_implementation == backend


def test_native_fusion_layer_and_generic_path_agree() -> None:
    layer = FusionAttention(16, num_heads=1, dropout=0.0)
    state, _ = rotation_state(1, 16, seed=4)
    x = torch.randn(4, 6, 16)
    native = ap.RollingQ(16, modalities=("a", "b")).attach(nn.Sequential(layer), "0")
    native.load_state_dict(state)
    out_native = layer(x)
    native.detach()

    class Wrapped(nn.Module):  # the same layer seen only as "a module that calls SDPA"
        def __init__(self) -> None:
            super().__init__()
            self.inner = layer

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(*self.inner_qkv(t))

        def inner_qkv(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
            full = torch.cat([layer.cls.expand(len(t), 1, 16), t], 1)
            return tuple(m(full).unsqueeze(1) for m in (layer.q_proj, layer.k_proj, layer.v_proj))

    wrapped = Wrapped()
    generic = ap.RollingQ(16, modalities=("a", "b")).attach(wrapped, "")
    generic.load_state_dict(state)
    heads = wrapped(x)  # (B, 1, L, d)
    torch.testing.assert_close(layer.out_proj(heads.squeeze(1)), out_native, atol=1e-6, rtol=1e-6)


def test_rollingq_method_is_a_deprecated_spelling_of_construction() -> None:
    with pytest.warns(DeprecationWarning, match=r"use RollingQ\(construction='svd'\)"):
        rq = ap.RollingQ(8, modalities=("a", "b"), method="svd")
    assert rq.construction == "svd"
