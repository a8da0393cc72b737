"""HuggingFace transformers and timm models, built from configs with random weights.

Every mass is checked against the model's own eager attention weights (``output_attentions``,
captured from each attention module's output), summed per group by `masses_from_weights`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    ViTConfig,
    ViTModel,
)
from transformers.masking_utils import AttentionMaskInterface
from transformers.modeling_utils import AttentionInterface

import attnprobe as ap
from attnprobe.capture._hf import PREFIX
from tests._reference import masses_from_weights

ATOL = 1e-5


# -- models --------------------------------------------------------------------------------------
def bert() -> BertModel:
    config = BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=2,
    )
    return BertModel(config).eval()


def vit() -> ViTModel:
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
    )
    return ViTModel(config, add_pooling_layer=False).eval()


def clip() -> CLIPModel:
    config = CLIPConfig(
        text_config={
            "vocab_size": 99,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 16,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        },
        projection_dim=16,
    )
    return CLIPModel(config).eval()


def llama_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=120,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def llama() -> LlamaForCausalLM:
    return LlamaForCausalLM(llama_config()).eval()


IMAGE_TOKEN = 100


def llava() -> LlavaForConditionalGeneration:
    vision = CLIPVisionConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=llama_config(),
        image_token_id=IMAGE_TOKEN,
        vision_feature_layer=-1,
    )
    return LlavaForConditionalGeneration(config).eval()


# -- inputs --------------------------------------------------------------------------------------
def bert_inputs() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[5, 11, 12, 13, 6, 21, 22, 6, 0, 0], [5, 31, 32, 6, 41, 42, 43, 44, 45, 6]])
    types = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]])
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": (ids != 0).long()}


def text_inputs(left_pad: bool = True) -> dict[str, torch.Tensor]:
    """Two prompts of different lengths starting with BOS (1); the shorter one padded."""
    ids = torch.tensor([[0, 0, 0, 1, 7, 8, 9, 10, 11, 12], [1, 21, 22, 23, 24, 25, 26, 27, 28, 29]])
    if not left_pad:
        ids = torch.tensor([[1, 7, 8, 9, 10, 11, 12, 0, 0, 0], ids[1].tolist()])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def llava_inputs() -> dict[str, torch.Tensor]:
    """Image tokens at different positions per sample (left padding, different text)."""
    image = [IMAGE_TOKEN] * 16  # (32 / 8)² patches per image
    ids = torch.tensor([[0, 0, 1, 5, 6, *image, 7, 8, 9], [1, 5, 6, 7, 8, 11, *image, 9, 10]])
    torch.manual_seed(3)
    return {
        "input_ids": ids,
        "attention_mask": (ids != 0).long(),
        "pixel_values": torch.randn(2, 3, 32, 32),
    }


# -- the eager reference -------------------------------------------------------------------------
@contextlib.contextmanager
def implementation(model: nn.Module, name: str) -> Iterator[None]:
    before = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def eager_weights(model: nn.Module, names: tuple[str, ...], **inputs: Any) -> dict[str, Any]:
    """Attention weights ``[B, H, Lq, Lk]`` of the named modules, from their eager outputs."""
    weights: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [
        modules[n].register_forward_hook(
            lambda m, a, out, n=n: weights.__setitem__(n, out[1].detach())
        )
        for n in names
    ]
    try:
        with implementation(model, "eager"), torch.no_grad():
            model(**inputs, output_attentions=True)
    finally:
        for handle in handles:
            handle.remove()
    return weights


def check_against_eager(
    model: nn.Module, result: ap.ProbeResult, layout: ap.ModalityLayout, inputs: dict[str, Any]
) -> float:
    """Largest difference between the probe's masses and the eager reference."""
    weights = eager_weights(model, result.layer_names, **inputs)
    worst = 0.0
    for layer in result.layers:
        w = weights[layer.name]
        labels = layout.labels(w.shape[0], w.shape[-1])
        groups = len(layer.key_groups)
        expected = masses_from_weights(w, labels, labels, groups, groups)
        got = layer.mass.numpy()
        assert got.shape == expected.shape
        assert np.array_equal(np.isnan(got), np.isnan(expected)), layer.name
        worst = max(worst, float(np.nanmax(np.abs(got - expected))))
    assert worst < ATOL, worst
    return worst


def run(model: nn.Module, inputs: dict[str, Any], **probe_kwargs: Any) -> tuple[Any, Any]:
    with torch.no_grad():
        reference = model(**inputs)
    with ap.probe(model, **probe_kwargs) as p, torch.no_grad():
        probed = model(**inputs)
    return reference, probed, p.result()  # type: ignore[return-value]


def assert_same_outputs(reference: Any, probed: Any) -> None:
    for key, value in reference.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, probed[key]), key


def assert_restored(model: nn.Module, implementation_name: str) -> None:
    assert not [k for k in AttentionInterface._global_mapping if k.startswith(PREFIX)]
    assert not [k for k in AttentionMaskInterface._global_mapping if k.startswith(PREFIX)]
    for module in model.modules():
        # HF keeps hooks of its own (output capturing); none of attnprobe's may be left
        hooks = [*module._forward_pre_hooks.values(), *module._forward_hooks.values()]
        assert not [h for h in hooks if getattr(h, "__module__", "").startswith("attnprobe")]
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            assert config._attn_implementation == implementation_name


# -- per model -----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_bert_segments_match_eager(backend: str) -> None:
    torch.manual_seed(0)
    model = bert()
    model.set_attn_implementation(backend)
    inputs = bert_inputs()
    layout = ap.auto_layout(model)
    assert layout.names == ("cls", "segment_a", "segment_b")
    reference, probed, result = run(model, inputs, modalities=layout)
    assert_same_outputs(reference, probed)
    assert result.layer_names == (
        "encoder.layer.0.attention.self",
        "encoder.layer.1.attention.self",
    )
    # cls; segment a = tokens 1-4 (+0-3 in sample 2); segment b; padding dropped
    assert result.layers[0].num_queries.tolist() == [2.0, 4.0 + 3.0, 3.0 + 6.0]
    check_against_eager(model, result, layout(**inputs), inputs)
    assert_restored(model, backend)


def test_vit_cls_and_patches_match_eager() -> None:
    torch.manual_seed(0)
    model = vit()
    inputs = {"pixel_values": torch.randn(2, 3, 32, 32)}
    layout = ap.auto_layout(model)
    assert layout.names == ("cls", "patches")
    reference, probed, result = run(model, inputs, modalities=layout)
    assert_same_outputs(reference, probed)
    assert result.layers[0].num_queries.tolist() == [2.0, 32.0]
    check_against_eager(model, result, layout(**inputs), inputs)
    assert_restored(model, "sdpa")


def test_clip_both_towers_with_two_probes_or_one() -> None:
    torch.manual_seed(0)
    model = clip()
    ids = torch.tensor([[1, 7, 8, 9, 2, 0], [1, 11, 12, 13, 14, 2]])
    inputs = {
        "input_ids": ids,
        "attention_mask": (ids != 0).long(),
        "pixel_values": torch.randn(2, 3, 32, 32),
    }
    text, vision = ap.auto_layout(model, tower="text"), ap.auto_layout(model, tower="vision")
    with torch.no_grad():
        reference = model(**inputs)
    with (
        ap.probe(model, modalities=text) as p_text,
        ap.probe(model, modalities=vision) as p_vision,
        torch.no_grad(),
    ):
        probed = model(**inputs)
    assert_same_outputs(reference, probed)
    assert all(n.startswith("text_model.") for n in p_text.layer_names)
    assert all(n.startswith("vision_model.") for n in p_vision.layer_names)
    assert text.names == ("bos", "text")
    check_against_eager(model, p_text.result(), text(**inputs), inputs)
    check_against_eager(model, p_vision.result(), vision(**inputs), inputs)
    assert_restored(model, "sdpa")
    # one probe with both towers' layouts (the default) records what the two probes did
    both = ap.auto_layout(model)
    assert isinstance(both, ap.labels.LayerLayouts)
    with ap.probe(model, modalities=both) as p, torch.no_grad():
        again = model(**inputs)
    assert_same_outputs(reference, again)
    one = p.result()
    two = [*p_text.result().layers, *p_vision.result().layers]
    assert sorted(one.layer_names) == sorted(layer.name for layer in two)
    for layer in two:
        assert torch.equal(one[layer.name].mass_total, layer.mass_total), layer.name
    assert_restored(model, "sdpa")


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_llama_gqa_causal_left_padding_match_eager(backend: str) -> None:
    torch.manual_seed(0)
    model = llama()
    model.set_attn_implementation(backend)
    inputs = text_inputs(left_pad=True)
    layout = ap.auto_layout(model)
    assert layout.names == ("bos", "text")
    reference, probed, result = run(model, inputs, modalities=layout, reservoir_size=8)
    assert_same_outputs(reference, probed)
    layer = result.layers[0]
    assert (layer.num_heads, layer.num_kv_heads) == (4, 2)
    assert layer.num_queries.tolist() == [2.0, 6.0 + 9.0]
    check_against_eager(model, result, layout(**inputs), inputs)
    assert_restored(model, backend)


def test_llava_image_tokens_match_eager_per_sample() -> None:
    torch.manual_seed(0)
    model = llava()
    inputs = llava_inputs()
    layout = ap.auto_layout(model)
    assert layout.names == ("bos", "text", "image")
    reference, probed, result = run(model, inputs, modalities=layout)
    assert_same_outputs(reference, probed)
    assert all(n.startswith("model.language_model.") for n in result.layer_names)
    labels = layout(**inputs)
    # image positions differ per sample: found from the ids, not assumed
    assert labels.labels(2, 24)[0, 5].item() == 2 and labels.labels(2, 24)[1, 5].item() == 1
    assert result.layers[0].num_queries.tolist() == [2.0, 12.0, 32.0]
    check_against_eager(model, result, labels, inputs)
    # the vision tower, with its own layout, in the same model
    vision = ap.auto_layout(model, tower="vision")
    _, _, vision_result = run(model, inputs, modalities=vision)
    assert all(n.startswith("model.vision_tower.") for n in vision_result.layer_names)
    check_against_eager(model, vision_result, vision(**inputs), inputs)
    assert_restored(model, "sdpa")


def test_timm_vit_tiny_fused_attention_matches_eager() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    assert model.blocks[0].attn.fused_attn  # the default: SDPA
    x = torch.randn(2, 3, 224, 224)
    layout = ap.auto_layout(model)
    assert layout.names == ("cls", "patches")
    with torch.no_grad():
        reference = model(x)
    with ap.probe(model, modalities=layout) as p, torch.no_grad():
        probed = model(x)
    assert torch.equal(reference, probed)
    assert len(p.layer_names) == 12
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    # eager reference: timm's own non-fused path, weights read at its attention dropout
    weights: dict[int, torch.Tensor] = {}
    for i, block in enumerate(model.blocks):
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(
            lambda m, a, o, i=i: weights.__setitem__(i, a[0].detach())
        )
    with torch.no_grad():
        model(x)
    labels = layout(x).labels(2, 197)
    for i, layer in enumerate(p.result().layers):
        expected = masses_from_weights(weights[i], labels, labels, 2, 2)
        np.testing.assert_allclose(layer.mass.numpy(), expected, atol=ATOL, rtol=0)


# -- generation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("padded", [False, True])
def test_generate_attributes_cached_keys_to_their_groups(padded: bool) -> None:
    """generate() under the probe equals one eager forward over the sequence it fed the model."""
    torch.manual_seed(0)
    model = llava()
    inputs = llava_inputs()
    if not padded:
        inputs["input_ids"][0, :2] = torch.tensor([21, 22])
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    layout = ap.auto_layout(model)
    new = 4
    with ap.probe(model, modalities=layout) as p, torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            suppress_tokens=[IMAGE_TOKEN],
        )
    result = p.result()
    assert out.shape[1] == 24 + new
    fed = out[:, : 24 + new - 1]  # the last token is produced, never fed back
    full = dict(
        inputs,
        input_ids=fed,
        attention_mask=torch.cat(
            [inputs["attention_mask"], torch.ones(2, new - 1, dtype=torch.long)], dim=1
        ),
    )
    labels = layout(**full)
    bos = 2.0 if padded else 1.0  # unpadded, sample 0 starts with a text token
    text = 12.0 + (0 if padded else 3) + 2 * (new - 1)
    assert result.layers[0].num_queries.tolist() == [bos, text, 32.0]
    check_against_eager(model, result, labels, full)


# -- options and backends ------------------------------------------------------------------------
def test_query_restriction_and_fused_on_hf() -> None:
    torch.manual_seed(0)
    model = bert()
    inputs = bert_inputs()
    layout = ap.auto_layout(model)
    _, _, full = run(model, inputs, modalities=layout)
    _, _, cls = run(model, inputs, modalities=layout, queries="cls")
    for a, b in zip(full.layers, cls.layers, strict=True):
        torch.testing.assert_close(b.mass[:, 0], a.mass[:, 0], atol=1e-6, rtol=0)
    with pytest.warns(ap.AttnProbeWarning, match="fused"):
        reference, probed, fused = run(model, inputs, modalities=layout, capture="fused")
    torch.testing.assert_close(probed.last_hidden_state, reference.last_hidden_state)
    for a, b in zip(full.layers, fused.layers, strict=True):
        torch.testing.assert_close(b.mass, a.mass, atol=1e-6, rtol=0)
    assert_restored(model, "sdpa")


def test_custom_registered_backend_is_wrapped_and_restored() -> None:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    calls = []

    def custom(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return sdpa_attention_forward(*args, **kwargs)

    AttentionInterface.register("test_custom", custom)
    AttentionMaskInterface.register("test_custom", AttentionMaskInterface._global_mapping["sdpa"])
    try:
        torch.manual_seed(0)
        model = llama()
        model.set_attn_implementation("test_custom")
        inputs = text_inputs()
        layout = ap.auto_layout(model)
        with pytest.raises(ap.errors.CaptureError, match="eager or sdpa"):
            ap.probe(model, modalities=layout, queries="bos").attach()
        assert_restored(model, "test_custom")
        reference, probed, result = run(model, inputs, modalities=layout)
        assert_same_outputs(reference, probed)
        # per layer: one call in the unprobed forward; the model's and the indicator pass's
        # in the probed one
        assert len(calls) == 2 + 2 * 2
        check_against_eager(model, result, layout(**inputs), inputs)
        assert_restored(model, "test_custom")
    finally:
        AttentionInterface._global_mapping.pop("test_custom", None)
        AttentionMaskInterface._global_mapping.pop("test_custom", None)


def test_nothing_survives_an_exception_inside_the_probe() -> None:
    torch.manual_seed(0)
    model = llama()
    with (
        pytest.raises(RuntimeError, match="boom"),
        ap.probe(model, modalities=ap.auto_layout(model)),
    ):
        assert model.config._attn_implementation == PREFIX + "sdpa"
        raise RuntimeError("boom")
    assert_restored(model, "sdpa")
    # a forward that fails half-way (bad ids) restores everything too
    with pytest.raises(IndexError), ap.probe(model, modalities=ap.auto_layout(model)):
        model(input_ids=torch.tensor([[1, 500]]))
    assert_restored(model, "sdpa")


def test_same_layer_in_two_probes_and_nested_release() -> None:
    torch.manual_seed(0)
    model = llama()
    inputs = text_inputs()
    layout = ap.auto_layout(model)
    outer = ap.probe(model, modalities=layout).attach()
    with (
        ap.probe(model, modalities=layout, layers="model.layers.0.self_attn") as inner,
        torch.no_grad(),
    ):
        model(**inputs)
    assert model.config._attn_implementation == PREFIX + "sdpa"  # outer still attached
    with torch.no_grad():
        model(**inputs)
    outer.close()
    assert_restored(model, "sdpa")
    a, b = outer.result().layers[0], inner.result().layers[0]
    assert a.num_queries.tolist() == [2 * x for x in b.num_queries.tolist()]
    torch.testing.assert_close(a.mass, b.mass)


def test_text_layout_needs_input_ids_and_right_tower() -> None:
    model = llama()
    layout = ap.auto_layout(model)
    embeds = model.get_input_embeddings()(torch.tensor([[1, 5, 6]]))
    with (
        pytest.raises(ap.errors.ModalityLayoutError, match="input_ids"),
        ap.probe(model, modalities=layout),
    ):
        model(inputs_embeds=embeds)
    assert_restored(model, "sdpa")
    # a fixed layout of the wrong length names the layer and the lengths
    with ap.probe(model, modalities={"bos": 1, "text": 2}) as p:
        model(input_ids=torch.tensor([[1, 5, 6, 7]]))
    with pytest.raises(ap.errors.ModalityLayoutError, match="3 tokens"):
        p.result()


# -- self-check ----------------------------------------------------------------------------------
def test_self_check_on_hf_timm_and_torch_models() -> None:
    torch.manual_seed(0)
    model = llava()
    inputs = llava_inputs()
    check = ap.self_check(model, inputs, ap.auto_layout(model))
    assert check.passed and 0.0 <= check.worst < ATOL
    assert set(check.to_frame()["reference"]) == {"HF eager attention weights"}
    assert model.config.text_config._attn_implementation == "sdpa"
    assert_restored(model, "sdpa")
    timm = pytest.importorskip("timm")
    vit_tiny = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2)
    x = torch.randn(1, 3, 224, 224)
    check = ap.self_check(vit_tiny, x, ap.auto_layout(vit_tiny))
    assert check.passed and len(check.layers) == 2
    assert vit_tiny.blocks[0].attn.fused_attn and vit_tiny.training
    assert "timm" in repr(check.to_frame()["reference"][0])


def test_self_check_reports_a_wrong_probe() -> None:
    """A deliberately wrong adapter (keys scaled) is caught by the check."""
    from attnprobe.capture._hf import HuggingFaceAdapter

    class Wrong(HuggingFaceAdapter):
        def attach(self, module: nn.Module, recorder: Any, stack: Any) -> None:
            original = recorder.record

            def record(inputs: ap.AttentionInputs, kernel: Any) -> None:
                inputs.key = inputs.key * 3.0
                original(inputs, kernel)

            recorder.record = record
            super().attach(module, recorder, stack)

    unregister = ap.register_adapter(Wrong())
    try:
        torch.manual_seed(0)
        model = llama()
        check = ap.self_check(model, text_inputs(), ap.auto_layout(model))
    finally:
        unregister()
    assert not check.passed and check.worst > 1e-3
    assert "FAILED" in repr(check)


def test_auto_layout_from_another_model_is_explained() -> None:
    model = llava()
    with pytest.raises(ap.errors.ProbeConfigError, match="build it from the model you probe"):
        ap.probe(model.model.language_model, modalities=ap.auto_layout(model))
    with pytest.raises(ap.errors.ProbeConfigError, match="expected a HuggingFace"):
        ap.auto_layout(nn.Linear(2, 2))


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("left_pad", [False, True])
def test_query_restriction_on_a_gqa_decoder(backend: str, left_pad: bool) -> None:
    """One BOS row per sample (the single-query GQA path of HF's sdpa) equals the full run."""
    torch.manual_seed(0)
    model = llama()
    model.set_attn_implementation(backend)
    inputs = text_inputs(left_pad=left_pad)
    if not left_pad:
        inputs = {"input_ids": inputs["input_ids"][1:].repeat(2, 1)}
    layout = ap.auto_layout(model)
    _, _, full = run(model, inputs, modalities=layout)
    _, _, bos = run(model, inputs, modalities=layout, queries="bos")
    for a, b in zip(full.layers, bos.layers, strict=True):
        assert b.query_groups == ("bos",)
        torch.testing.assert_close(b.mass[:, 0], a.mass[:, 0], atol=1e-6, rtol=0)
    assert_restored(model, backend)


def test_timm_explicit_path_names_fused_attn() -> None:
    """A timm block on its explicit (non-SDPA) path: the error says how to switch it back."""
    timm = pytest.importorskip("timm")
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=1, img_size=32
    ).eval()
    model.blocks[0].attn.fused_attn = False
    with ap.probe(model, modalities=ap.auto_layout(model)) as p, torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(
        ap.errors.CaptureError, match=r"fused_attn = False.*module.fused_attn = True"
    ):
        p.result()


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_two_probes_on_hf_attention_each_give_their_solo_result(backend: str) -> None:
    """One interception per HF module, shared: a CLS-only probe and a full probe (with
    samples) attached together record what each records alone."""
    torch.manual_seed(0)
    model = bert()
    model.set_attn_implementation(backend)
    inputs = bert_inputs()
    layout = ap.auto_layout(model)
    first: dict[str, Any] = {"queries": "cls"}
    second: dict[str, Any] = {"per_sample": True, "reservoir_size": 4}
    solo = [run(model, inputs, modalities=layout, **options)[2] for options in (first, second)]
    with (
        ap.probe(model, modalities=layout, **first) as a,
        ap.probe(model, modalities=layout, **second) as b,
        torch.no_grad(),
    ):
        model(**inputs)
    for together, alone in zip((a.result(), b.result()), solo, strict=True):
        for x, y in zip(together, alone, strict=True):
            assert x.states == y.states
    assert_restored(model, backend)


def test_a_probed_config_still_compares_equal_to_its_implementation() -> None:
    """Modeling files branch on ``config._attn_implementation == "sdpa"`` (GLM-5-Next builds a
    boolean mask only then): while probed, the wrapper's name must take the same branch."""
    import copy

    model = llama()
    with ap.probe(model, modalities=ap.auto_layout(model)):
        name = model.config._attn_implementation
        assert name.startswith(PREFIX) and name == "sdpa" and name in ("sdpa", "flash")
        assert name != "eager" and name in AttentionInterface._global_mapping
        assert type(copy.deepcopy(name)) is str and copy.deepcopy(name) == PREFIX + "sdpa"
    assert model.config._attn_implementation == "sdpa"
    assert type(model.config._attn_implementation) is str
