"""attnprobe.runner: the probed masses against a hand-written softmax, eval mode and no
gradients inside, the train/eval mode and the hooks restored after an exception, and the
outputs of ``call`` collected."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import attnprobe as ap
from attnprobe.models import FusionAttention
from attnprobe.runner import ProbedRun, run_model, run_probed

LAYOUT = {"cls": 1, "audio": 2, "video": 3}


def layer_and_batches(seed: int = 0) -> tuple[FusionAttention, list[Tensor]]:
    torch.manual_seed(seed)
    layer = FusionAttention(dim=8, num_heads=2, dropout=0.5)  # train mode: dropout active
    g = torch.Generator().manual_seed(seed + 1)
    return layer, [torch.randn(3, 5, 8, generator=g) * 2 for _ in range(3)]


def softmax_masses(layer: FusionAttention, batches: list[Tensor]) -> np.ndarray:
    """``[H, Gq, Gk]`` masses of every query group, by a softmax written out in numpy."""
    weights = {n: p.detach().double().numpy() for n, p in layer.named_parameters()}
    heads, dim = layer.num_heads, layer.dim
    labels = np.repeat(np.arange(3), list(LAYOUT.values()))  # (L,) group of each token
    totals = np.zeros((heads, 3, 3))
    counts = np.zeros(3)
    for tokens in batches:
        x = tokens.double().numpy()
        x = np.concatenate([np.broadcast_to(weights["cls"], (len(x), 1, dim)), x], axis=1)
        q = x @ weights["q_proj.weight"].T + weights["q_proj.bias"]  # (B, L, d)
        k = x @ weights["k_proj.weight"].T + weights["k_proj.bias"]
        q = q.reshape(len(x), -1, heads, dim // heads).transpose(0, 2, 1, 3)  # (B, H, L, dh)
        k = k.reshape(len(x), -1, heads, dim // heads).transpose(0, 2, 1, 3)
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dim // heads)  # (B, H, L, L)
        w = np.exp(scores - scores.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        for gq in range(3):
            for gk in range(3):
                rows = w[:, :, labels == gq][:, :, :, labels == gk]  # (B, H, Lq_g, Lk_g)
                totals[:, gq, gk] += rows.sum(-1).sum((0, 2))
            counts[gq] += len(x) * (labels == gq).sum()
    return totals / counts.reshape(1, -1, 1)


def test_masses_match_a_hand_written_softmax_and_the_mode_is_restored() -> None:
    layer, batches = layer_and_batches()
    assert layer.training
    seen: list[tuple[bool, bool]] = []

    def call(model: nn.Module, batch: Tensor) -> int:
        seen.append((model.training, torch.is_grad_enabled()))
        return int(model(batch).shape[0])

    run = run_probed(layer, batches, call=call, modalities=LAYOUT)
    assert isinstance(run, ProbedRun)
    assert seen == [(False, False)] * 3  # eval mode, no gradients, every batch
    assert run.outputs == (3, 3, 3)
    assert run.layer_names == ("",)  # the model itself is the probed module
    assert [x.name for x in run.result.layers] == ["FusionAttention"]
    got = run.result.layers[0]
    np.testing.assert_allclose(got.mass.double().numpy(), softmax_masses(layer, batches), atol=1e-6)
    assert got.num_queries.tolist() == [9.0, 18.0, 27.0]
    assert layer.training  # restored
    layer.eval()
    run_probed(layer, batches[:1], modalities=LAYOUT)
    assert not layer.training  # an eval model stays in eval mode


@pytest.mark.parametrize("form", ["tensor", "tuple", "mapping"])
def test_batches_as_a_tensor_a_tuple_or_a_mapping(form: str) -> None:
    layer, batches = layer_and_batches(seed=2)
    forms: dict[str, list[Any]] = {
        "tensor": list(batches),
        "tuple": [(b,) for b in batches],
        "mapping": [{"tokens": b} for b in batches],
    }
    fed = forms[form]
    run = run_probed(layer, fed, modalities=LAYOUT, queries="cls", key_stats=False)
    np.testing.assert_allclose(
        run.result.layers[0].mass.double().numpy(),
        softmax_masses(layer, batches)[:, :1],
        atol=1e-6,
    )
    assert run.outputs == ()  # without call, the model's outputs are not kept


def test_outputs_of_call_are_collected_in_order() -> None:
    layer, batches = layer_and_batches(seed=3)
    run = run_probed(layer, batches, call=lambda m, b: m(b)[:, 0], modalities=LAYOUT, queries="cls")
    layer.eval()
    with torch.no_grad():
        want = [layer(b)[:, 0] for b in batches]
    assert len(run.outputs) == 3
    for got, expected in zip(run.outputs, want, strict=True):
        assert torch.equal(got, expected)
        assert not got.requires_grad


class Failing(nn.Module):
    """A fusion layer whose second forward raises."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = FusionAttention(dim=8)
        self.calls = 0

    def forward(self, tokens: Tensor) -> Tensor:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("boom")
        out: Tensor = self.inner(tokens)
        return out


def test_mode_and_hooks_are_restored_after_an_exception() -> None:
    model = Failing().train()
    batches = [torch.randn(2, 5, 8) for _ in range(3)]
    with pytest.raises(RuntimeError, match="boom"):
        run_probed(model, batches, modalities=LAYOUT, layers="inner")
    assert model.training and model.inner.training
    assert not model.inner._forward_hooks and not model.inner._forward_pre_hooks
    model.calls = 5  # no more failures: the layer runs unprobed as before
    with torch.no_grad():
        model(batches[0])
    # a probe that sees no batch raises too, and still restores the mode
    with pytest.raises(ap.errors.CaptureError, match="no forward pass"):
        run_probed(model, [], modalities=LAYOUT, layers="inner")
    assert model.training
    with pytest.raises(RuntimeError, match="boom"):
        model.calls = 1
        run_model(model, batches)
    assert model.training


def test_run_model_runs_without_a_probe() -> None:
    layer, batches = layer_and_batches(seed=4)
    outputs = run_model(layer, batches, call=lambda m, b: (m.training, torch.is_grad_enabled()))
    assert outputs == ((False, False),) * 3
    assert run_model(layer, batches) == ()
    assert layer.training and not layer._forward_hooks
