"""Bad inputs at the public API: each gets a clear `AttnProbeError` or a documented NaN with an
`AttnProbeWarning` (the table on the guarantees page lists one row per test here)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

import attnprobe as ap

LAYOUT = {"cls": 1, "a": 3, "b": 4}


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.TransformerEncoder(
        nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 1, enable_nested_tensor=False
    ).eval()


def probed(x: Tensor, layout: object = LAYOUT, **options: object) -> ap.results.LayerResult:
    m = model()
    with torch.no_grad(), ap.probe(m, modalities=layout, **options) as p:  # type: ignore[arg-type]
        m(x)
    return p.result().layers[0]


def clean() -> Tensor:
    return torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_inputs_give_nan_and_a_warning(value: float) -> None:
    x = clean()
    x[1, 3, 2] = value
    with pytest.warns(ap.AttnProbeWarning, match="NaN or Inf reached its attention"):
        layer = probed(x)
    assert torch.isnan(layer.mass).any()


def test_an_empty_batch_alone_gives_nan_and_a_warning() -> None:
    with pytest.warns(ap.AttnProbeWarning, match="saw no query token"):
        layer = probed(torch.randn(0, 8, 8))
    assert torch.isnan(layer.mass).all()


def test_an_empty_batch_among_others_changes_nothing() -> None:
    m = model()
    x = clean()
    results = []
    for batches in ([x], [x[:0], x, x[:0]]):
        with torch.no_grad(), ap.probe(m, modalities=LAYOUT) as p:
            for batch in batches:
                m(batch)
        results.append(p.result().layers[0])
    assert torch.equal(results[0].mass_total, results[1].mass_total)
    assert torch.equal(results[0].num_queries, results[1].num_queries)


@pytest.mark.parametrize("length", [6, 10])
def test_a_sequence_longer_or_shorter_than_the_layout_is_refused(length: int) -> None:
    with pytest.raises(
        ap.errors.ModalityLayoutError,
        match=rf"covers 8 tokens \(cls=1, a=3, b=4\) but the sequence has {length} tokens",
    ):
        probed(torch.randn(2, length, 8))


def test_a_modality_with_zero_tokens_gets_zero_mass() -> None:
    layer = probed(clean(), {"cls": 1, "a": 7, "b": 0})
    # the queries of cls and a put exactly 0 on b; b has no query row, so its row is NaN
    assert torch.equal(layer.mass[:, :2, 2], torch.zeros(2, 2, dtype=torch.float64))
    torch.testing.assert_close(layer.mass[:, :2].sum(-1), torch.ones(2, 2, dtype=torch.float64))
    assert torch.isnan(layer.mass[:, 2]).all() and float(layer.num_queries[..., 2].sum()) == 0
    # per sample: sample 1 has no "b" token; its mass on "b" is exactly 0
    labels = torch.tensor([[0, 1, 1, 1, 2, 2, 2, 2], [0, 1, 1, 1, 1, 1, 1, 1]])
    layer = probed(
        clean(), ap.ModalityLayout.from_labels(labels, ["cls", "a", "b"]), per_sample=True
    )
    assert layer.sample_mass is not None
    # sample_mass [N, H, Gq, Gk]: sample 1's cls and a queries put exactly 0 on b
    assert float(layer.sample_mass[1, :, :2, 2].abs().max()) == 0.0


def test_labels_of_a_wrong_dtype_or_range_are_refused() -> None:
    with pytest.raises(ap.errors.ModalityLayoutError, match="expected an integer label tensor"):
        ap.ModalityLayout.from_labels(torch.zeros(2, 8), ["cls", "a"])
    with pytest.raises(ap.errors.ModalityLayoutError, match="label"):
        ap.ModalityLayout.from_labels(torch.full((2, 8), 5), ["cls", "a"])
    with pytest.raises(ap.errors.ModalityLayoutError, match="label"):
        ap.ModalityLayout.from_labels(torch.full((2, 8), -2), ["cls", "a"])


def test_inputs_of_a_wrong_dtype_fail_as_they_do_without_the_probe() -> None:
    """A float64 batch into a float32 model is the model's own error; the probe neither hides
    nor changes it, and leaves nothing attached."""
    m = model()
    x = clean().double()
    with pytest.raises(RuntimeError) as plain:
        m(x)
    with pytest.raises(RuntimeError) as under_probe, ap.probe(m, modalities=LAYOUT):
        m(x)
    assert str(under_probe.value) == str(plain.value)
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())


def test_a_non_attention_module_selected_is_reported() -> None:
    m = model()
    with ap.probe(m, modalities=LAYOUT, layers="layers.0.linear1") as p:
        m(clean())
    with pytest.raises(ap.errors.CaptureError, match="no attention call was captured"):
        p.result()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ap.AttnProbeWarning)
        assert len(p.result(strict=False).layers) == 0


def test_an_unknown_layer_name_is_refused() -> None:
    with pytest.raises(ap.errors.ProbeConfigError, match=r"layers\.7"):
        ap.probe(model(), modalities=LAYOUT, layers="layers.7.self_attn")
