"""HuggingFace models with several token sequences, built tiny from configs: encoder–decoders
(BART, T5, Whisper, Pix2Struct), attention-pooling heads (SigLIP), special-token groups (DeiT's
distillation token, ``[SEP]``) and vision-language models that place image features by their
own inputs (Fuyu's placeholder ids, Kosmos-2's position mask, zero-padded patch rows).

Every mass is checked against the model's own eager attention weights, summed per group by the
numpy loops of `masses_from_weights`, with labels written out here by hand (not by the layout
under test).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from torch import Tensor, nn
from transformers import (
    BartConfig,
    BartModel,
    BertConfig,
    BertModel,
    DeiTConfig,
    DeiTModel,
    LEDConfig,
    LEDModel,
    LongformerConfig,
    LongformerModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    T5Config,
    T5ForConditionalGeneration,
    T5Model,
    WhisperConfig,
    WhisperForConditionalGeneration,
)

import attnprobe as ap
from tests import hf_zoo
from tests._reference import masses_from_weights
from tests._versions import older_than
from tests.test_hf import ATOL, assert_restored, assert_same_outputs, eager_weights

SMALL = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2}
SMALL |= {"decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64}


def check(
    result: ap.ProbeResult,
    weights: dict[str, Tensor],
    labels: dict[str, tuple[Tensor, Tensor]],
) -> float:
    """``labels``: layer -> (query labels [B, Lq], key labels [B, Lk]), by hand."""
    worst = 0.0
    assert set(result.layer_names) == set(labels), (result.layer_names, list(labels))
    for layer in result.layers:
        queries, keys = labels[layer.name]
        expected = masses_from_weights(
            weights[layer.name], keys, queries, len(layer.key_groups), len(layer.query_groups)
        )
        got = layer.mass.numpy()
        assert np.array_equal(np.isnan(got), np.isnan(expected)), layer.name
        worst = max(worst, float(np.nanmax(np.abs(got - expected))))
    assert worst < ATOL, worst
    return worst


def probed(model: nn.Module, inputs: dict[str, Any], layouts: Any) -> ap.ProbeResult:
    with torch.no_grad():
        reference = model(**inputs)
    with torch.no_grad(), ap.probe(model, modalities=layouts) as p:
        again = model(**inputs)
    assert_same_outputs(reference, again)
    return p.result()


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_bart_with_equal_lengths_labels_cross_attention_keys_by_the_encoder(backend: str) -> None:
    """Encoder and decoder sequences of the same length: cross-attention labelled with the
    decoder's layout would fit; the keys must carry the encoder's labels (and padding)."""
    torch.manual_seed(0)
    config = BartConfig(vocab_size=64, max_position_embeddings=32, **SMALL)
    model = BartModel(config).eval()
    model.set_attn_implementation(backend)
    ids = torch.tensor([[0, 5, 6, 7, 2, 1], [0, 8, 9, 2, 1, 1]])  # right-padded source
    mask = (ids != 1).long()
    decoder_ids = torch.tensor([[2, 0, 11, 12, 13, 14], [2, 0, 15, 16, 17, 18]])
    inputs = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder_ids}
    layouts = ap.auto_layout(model)
    assert isinstance(layouts, ap.labels.LayerLayouts)
    result = probed(model, inputs, layouts)
    source = torch.where(mask.bool(), 0, -1)  # (B, L): "source", padding ignored
    # the decoder: its first token is decoder_start_token_id (2) -> "start", the rest "text"
    target = torch.tensor([[0, 1, 1, 1, 1, 1]] * 2)
    enc = "encoder.layers.0.self_attn"
    labels = {
        enc: (source, source),
        "decoder.layers.0.self_attn": (target, target),
        "decoder.layers.0.encoder_attn": (target, source),
    }
    check(result, eager_weights(model, result.layer_names, **inputs), labels)
    cross = result["decoder.layers.0.encoder_attn"]
    assert (cross.query_groups, cross.key_groups) == (("start", "text"), ("source",))
    assert result[enc].key_groups == ("source",)
    assert_restored(model, backend)


def test_t5_generate_follows_the_decoder_cache_and_the_encoder_keys() -> None:
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=64, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    model = T5ForConditionalGeneration(config).eval()
    ids = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 0]])
    mask = (ids != 0).long()
    layouts = ap.auto_layout(model)
    with torch.no_grad(), ap.probe(model, modalities=layouts) as p:
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    result = p.result()
    cross = result["decoder.block.0.layer.1.EncDecAttention"]
    assert cross.key_groups == ("source",) and cross.query_groups == ("start", "text")
    # each of the 3 decoding steps' calls sees the encoder's 4 + 3 unpadded tokens as keys
    assert cross.key_count is not None and cross.key_count.tolist() == [3 * 7.0]
    assert int(cross.num_queries.sum()) == 2 * 3  # one query per sample and step
    own = result["decoder.block.0.layer.0.SelfAttention"]
    assert own.key_groups == ("start", "text")


def test_whisper_audio_frames_are_the_keys_of_cross_attention() -> None:
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=64, num_mel_bins=8, max_source_positions=8, max_target_positions=16,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
        suppress_tokens=[], begin_suppress_tokens=[], **SMALL,
    )  # fmt: skip
    model = WhisperForConditionalGeneration(config).eval()
    features = torch.randn(2, 8, 16)  # (B, mel, T): 16 frames -> 8 encoder positions
    decoder_ids = torch.tensor([[1, 5, 6], [1, 7, 8]])
    inputs = {"input_features": features, "decoder_input_ids": decoder_ids}
    layouts = ap.auto_layout(model)
    result = probed(model, inputs, layouts)
    audio = torch.zeros(2, 8, dtype=torch.long)
    target = torch.tensor([[0, 1, 1]] * 2)
    labels = {
        "model.encoder.layers.0.self_attn": (audio, audio),
        "model.decoder.layers.0.self_attn": (target, target),
        "model.decoder.layers.0.encoder_attn": (target, audio),
    }
    check(result, eager_weights(model, result.layer_names, **inputs), labels)
    assert result["model.decoder.layers.0.encoder_attn"].key_groups == ("audio",)


def test_siglip_pooling_head_gets_a_query_group_of_its_own() -> None:
    torch.manual_seed(0)
    config = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=16,
    )  # fmt: skip
    model = SiglipVisionModel(config).eval()
    pixels = torch.randn(2, 3, 32, 32)
    layouts = ap.auto_layout(model)
    assert isinstance(layouts, ap.labels.LayerLayouts)
    result = probed(model, {"pixel_values": pixels}, layouts)
    head = result["head.attention"]
    assert (head.query_groups, head.key_groups) == (("pool",), ("patches",))
    # reference: the head's MHA weights, recomputed from the tower's output
    with torch.no_grad():
        tokens = model.post_layernorm(
            model.encoder(model.embeddings(pixels)).last_hidden_state
        )  # (B, 4, d)
        attention = model.head.attention
        probe = model.head.probe.repeat(2, 1, 1)  # (B, 1, d)
        weights = attention(probe, tokens, tokens, average_attn_weights=False)[1]  # (B, H, 1, 4)
    expected = masses_from_weights(
        weights, torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long), 1, 1
    )
    np.testing.assert_allclose(head.mass.numpy(), expected, atol=ATOL, rtol=0)
    assert result.skipped == {}


def test_deit_distillation_token_and_bert_sep_are_groups_of_their_own() -> None:
    torch.manual_seed(0)
    config = DeiTConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=16,
    )  # fmt: skip
    deit = DeiTModel(config, add_pooling_layer=False).eval()
    layout = ap.auto_layout(deit)
    assert layout.names == ("cls", "distillation", "patches")
    pixels = torch.randn(1, 3, 32, 32)
    result = probed(deit, {"pixel_values": pixels}, layout)
    labels = torch.tensor([[0, 1, 2, 2, 2, 2]])
    name = result.layer_names[0]
    check(
        result,
        eager_weights(deit, result.layer_names, pixel_values=pixels),
        {name: (labels, labels)},
    )

    bert = BertModel(
        BertConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=128,
        )
    ).eval()
    layout = ap.labels.TokenLayout(
        special="cls", special_first=True, sep_token_id=102, segments=True
    )
    assert layout.names == ("cls", "sep", "segment_a", "segment_b")
    ids = torch.tensor([[101, 7, 8, 102, 9, 102]])
    types = torch.tensor([[0, 0, 0, 0, 1, 1]])
    result = probed(bert, {"input_ids": ids, "token_type_ids": types}, layout)
    labels = torch.tensor([[0, 2, 2, 1, 3, 1]])
    name = result.layer_names[0]
    check(
        result,
        eager_weights(bert, result.layer_names, input_ids=ids, token_type_ids=types),
        {name: (labels, labels)},
    )


def test_self_check_on_an_encoder_decoder_with_its_layer_layouts() -> None:
    torch.manual_seed(0)
    model = BartModel(BartConfig(vocab_size=64, max_position_embeddings=32, **SMALL)).eval()
    ids = torch.tensor([[0, 5, 6, 7, 2, 1], [0, 8, 9, 2, 1, 1]])
    inputs = {
        "input_ids": ids,
        "attention_mask": (ids != 1).long(),
        "decoder_input_ids": torch.tensor([[2, 0, 11, 12], [2, 0, 15, 16]]),
    }
    check = ap.self_check(model, inputs, ap.auto_layout(model))
    assert check.passed and len(check.layers) == 3, check.to_frame()
    assert "decoder.layers.0.encoder_attn" in check.layers


def test_timm_map_pooling_and_deit_distillation_token() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, depth=1, global_pool="map", img_size=32
    ).eval()
    with torch.no_grad():
        reference = vit(x)
    with torch.no_grad(), ap.probe(vit, modalities=ap.auto_layout(vit)) as p:
        assert torch.equal(vit(x), reference)
    pool = p.result()["attn_pool"]
    # timm's pooling head reads the patches only (pool_include_prefix=False)
    assert (pool.query_groups, pool.key_groups) == (("pool",), ("patches",))
    assert ap.self_check(vit, x, ap.auto_layout(vit)).passed
    deit = timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, depth=1, img_size=32
    ).eval()
    layout = ap.auto_layout(deit)
    assert layout.names == ("cls", "distillation", "patches")
    assert ap.self_check(deit, x, layout).passed


def test_an_hf_module_without_cross_arguments_is_self_attention_even_with_a_key_layout() -> None:
    """A decoder layer pattern carries the encoder's key layout for its cross-attention; its
    self-attention module (whose forward takes no other sequence, as Canary's) must still be
    labelled by its own layout — a one-group key layout would fit any length silently."""
    from tests.test_hf import llama, text_inputs

    model = llama()
    layout = ap.auto_layout(model)
    with (
        torch.no_grad(),
        ap.probe(
            model,
            modalities={"model.layers.*": layout},
            key_modalities={"model.layers.*": ap.ModalityLayout.uniform("audio")},
        ) as p,
    ):
        model(**text_inputs())
    for layer in p.result().layers:
        assert layer.key_groups == layout.names, layer


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_t5_position_bias_follows_the_kept_query_rows(backend: str) -> None:
    """queries="start" keeps one query row of the decoder: T5's relative position bias
    [1, H, Lq, Lk], which the backend adds to the scores, must be cut to that row too."""
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=64, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    model = T5Model(config).eval()
    model.set_attn_implementation(backend)
    ids = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 0]])
    mask = (ids != 0).long()
    decoder_ids = torch.tensor([[0, 11, 12], [0, 13, 14]])
    inputs = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder_ids}
    layouts = ap.auto_layout(model)
    with torch.no_grad():
        reference = model(**inputs)
    with torch.no_grad(), ap.probe(model, modalities=layouts, queries="start") as p:
        again = model(**inputs)
    assert_same_outputs(reference, again)
    result = p.result()
    source = torch.where(mask.bool(), 0, -1)  # (B, Le)
    start = torch.tensor([[0, -1, -1]] * 2)  # (B, Ld): only the start token's row is kept
    target = torch.tensor([[0, 1, 1]] * 2)
    labels = {
        "decoder.block.0.layer.0.SelfAttention": (start, target),
        "decoder.block.0.layer.1.EncDecAttention": (start, source),
    }
    check(result, hf_zoo.eager_weights(model, inputs), labels)  # T5 returns its bias second
    assert_restored(model, backend)


# -- vision-language models from the zoo: image positions as the model itself places them ------
@functools.cache
def zoo(model_type: str) -> hf_zoo.Built:
    """A tiny random ``model_type`` from `tests.hf_zoo` (built once per test process)."""
    try:
        hf_zoo.find_entry(model_type)
    except KeyError:
        # an older transformers than the newest supported (make test-oldest) lacks the model
        pytest.skip(f"transformers {transformers.__version__} has no {model_type!r}")
    built = hf_zoo.build(model_type, attn_implementation="sdpa", timeout=None)
    assert isinstance(built, hf_zoo.Built), built
    return built


def text_ids(pad: int, bos: int, block: list[tuple[int, int]], shift: int) -> tuple[Tensor, Tensor]:
    """Two samples around one image block each, at different offsets, the first left-padded:
    ``(input_ids [2, L], hand labels [2, L])`` with labels bos 0, text 1, image 2, padding -1;
    ``block`` is the (id, label) of each position of the image block."""
    ids, marks = [i for i, _ in block], [g for _, g in block]
    text = list(range(20, 40))
    rows = [
        [pad, pad, bos, *text[:2], *ids, *text[2 : 4 + shift]],
        [bos, *text[:shift], *ids, *text[shift : shift + 6]],
    ]
    labels = [
        [-1, -1, 0, 1, 1, *marks, *[1] * (2 + shift)],
        [0, *[1] * shift, *marks, *[1] * 6],
    ]
    assert len(rows[0]) == len(rows[1]) == len(labels[0]) == len(labels[1])
    return torch.tensor(rows), torch.tensor(labels)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_fuyu_image_group_is_where_the_model_scatters_its_patches(backend: str) -> None:
    """Fuyu has no vision tower: its patch rows are projected and scattered into the text
    embeddings at the config's image_token_id; the image group is exactly those positions."""
    built = zoo("fuyu")
    model, config = built.model, built.model.config
    model.set_attn_implementation(backend)
    patches = built.inputs["pixel_values"]  # (B, N, C·p·p): one row per patch
    text_config = config.text_config
    # 4 rows of 4 patches, each row ended by a text token (the processor's |NEWLINE|)
    row = [(config.image_token_id, 2)] * 4 + [(39, 1)]
    assert patches.shape[1] == 16
    ids, labels = text_ids(text_config.pad_token_id or 0, text_config.bos_token_id, row * 4, 3)
    inputs = {"input_ids": ids, "attention_mask": (labels >= 0).long(), "pixel_values": patches}
    layout = ap.auto_layout(model)
    assert isinstance(layout, ap.labels.TokenLayout) and layout.names == ("bos", "text", "image")
    result = probed(model, inputs, layout)
    assert result.layer_names and all(
        n.startswith("model.language_model.") for n in result.layer_names
    )
    check(
        result,
        hf_zoo.eager_weights(model, inputs),
        {n: (labels, labels) for n in result.layer_names},
    )
    with pytest.raises(ap.errors.ProbeConfigError, match="no vision tower"):
        ap.auto_layout(model, tower="vision")
    assert_restored(model, backend)


@pytest.mark.parametrize(("model_type", "backend"), [("kosmos-2", "sdpa"), ("kosmos-2.5", "eager")])
def test_kosmos_image_group_is_the_models_position_mask_not_the_ids(
    model_type: str, backend: str
) -> None:
    """Kosmos-2 and 2.5 write the image features where image_embeds_position_mask is 1, over
    any ids: random ids there must still be "image", and the placeholder id elsewhere "text"."""
    built = zoo(model_type)
    model = built.model
    model.set_attn_implementation(backend)
    text_config = model.config.text_config
    n = model.config.latent_query_num
    placeholder = int(
        built.inputs["input_ids"][1, built.inputs["image_embeds_position_mask"][1].bool()][0]
    )
    block = [(int(i), 2) for i in torch.randint(20, 40, (n,))]  # any ids, marked as image
    ids, labels = text_ids(text_config.pad_token_id, text_config.bos_token_id, block, 2)
    ids[1, -1] = placeholder  # the usual placeholder id, without the mask: text
    inputs = {
        "input_ids": ids,
        "attention_mask": (labels >= 0).long(),
        "image_embeds_position_mask": (labels == 2).long(),
        **{k: v for k, v in built.inputs.items() if k in ("pixel_values", "flattened_patches")},
    }
    layouts = ap.auto_layout(model)
    projector = "image_to_text_projection.x_attn"
    text = layouts.query_layout("text_model.model.layers.0.self_attn", model)
    assert isinstance(text, ap.labels.TokenLayout) and text.names == ("bos", "text", "image")
    result = probed(model, inputs, layouts)
    texts = [n for n in result.layer_names if n.startswith("text_model.")]
    assert texts and set(result.layer_names) == {*texts, projector}
    weights = hf_zoo.eager_weights(model, inputs)
    # the projector's latents (group 0 of its keys) attend to cat([image features, latents])
    latents = torch.zeros(2, n, dtype=torch.long)  # (B, n)
    features = weights[projector].shape[-1] - n
    keys = torch.cat([torch.ones(2, features, dtype=torch.long), latents], dim=1)  # (B, F + n)
    assert result[projector].key_groups == ("latent", "image")
    labels_by_layer = {n: (labels, labels) for n in texts} | {projector: (latents, keys)}
    check(result, weights, labels_by_layer)
    assert_restored(model, backend)


def test_pix2struct_encoder_and_kosmos_2_5_vision_tower_ignore_zero_padded_patch_rows() -> None:
    """Pix2Struct-style encoders take patch rows padded with rows of zeros, which they mask (from
    the attention_mask given with them, or from the zeros): padding is no image token, neither
    as a query nor, for Pix2Struct's decoder, as a cross-attention key."""
    rows = torch.zeros(2, 16, dtype=torch.long)  # (B, N): image 0, padding -1
    rows[0, -3:] = -1
    pix2struct = zoo("pix2struct")
    model = pix2struct.model
    patches = pix2struct.inputs["flattened_patches"].clone()  # (B, N, 2 + C·p·p)
    patches[0, -3:] = 0  # the first sample's last 3 rows are padding
    assert patches.shape[:2] == rows.shape
    decoder_ids = pix2struct.inputs["decoder_input_ids"]
    inputs = {
        "flattened_patches": patches,
        "attention_mask": (patches.sum(-1) != 0).float(),  # as Pix2Struct's processor gives it
        "decoder_input_ids": decoder_ids,
    }
    layouts = ap.auto_layout(model)
    assert isinstance(layouts, ap.labels.LayerLayouts)
    result = probed(model, inputs, layouts)
    target = torch.zeros_like(decoder_ids)  # (B, T): "start" 0, then "text" 1
    target[:, 1:] = 1
    assert (decoder_ids[:, 0] == model.config.decoder_start_token_id).all()
    labels: dict[str, tuple[Tensor, Tensor]] = {}
    for name in result.layer_names:
        if name.startswith("encoder."):
            labels[name] = (rows, rows)
        else:
            labels[name] = (target, rows if "encoder_decoder" in name else target)
    check(result, hf_zoo.eager_weights(model, inputs), labels)
    cross = [layer for layer in result.layers if "encoder_decoder" in layer.name]
    assert cross and all(layer.key_groups == ("image",) for layer in cross)

    # Kosmos-2.5's vision tower masks the zero rows itself (its attention modules look their
    # kernel up with getattr on the interface, so they always run eager_attention_forward and
    # are not captured here: the labels are checked against the rows)
    kosmos = zoo("kosmos-2.5")
    layout = ap.auto_layout(kosmos.model, tower="vision")
    assert isinstance(layout, ap.labels.FrameLayout) and layout.names == ("image",)
    assert layout.source == "vision_model"
    patches = kosmos.inputs["flattened_patches"].clone()
    patches[0, -3:] = 0
    inputs = {**kosmos.inputs, "flattened_patches": patches}
    seen: list[dict[str, Any]] = []
    tower = kosmos.model.get_submodule("vision_model")
    handle = tower.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(dict(kwargs)), with_kwargs=True
    )
    try:
        with torch.no_grad():
            kosmos.model(**inputs)
    finally:
        handle.remove()
    assert torch.equal(layout(**seen[0]).labels(*rows.shape), rows)
    # the rows the tower itself masks: no weight on them as keys, some on every other row
    weights = hf_zoo.eager_weights(kosmos.model, inputs)["vision_model.encoder.layer.0.attention"]
    keys = weights.sum(dim=(1, 2))  # (B, N): weight each key row receives
    assert torch.equal(keys == 0, rows < 0)


def test_t5gemma2_merged_decoder_keys_and_the_encoders_image_tokens() -> None:
    """T5Gemma2: the encoder reads image placeholders among its tokens (group "image"), its
    SigLIP tower has its own layout and pooling head, and each decoder attention call attends to
    its own tokens followed by the encoder's (`MergedKeys`): keys text, then source / image."""
    built = zoo("t5gemma2")
    model, inputs = built.model, built.inputs
    layouts = ap.auto_layout(model)
    assert layouts.merged_keys("model.decoder.layers.0.self_attn", model)
    result = probed(model, inputs, layouts)
    assert not result.skipped
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    image = model.config.image_token_index
    source = torch.where(mask == 0, -1, (ids == image).long())  # (B, Le): source 0, image 1
    target = torch.zeros_like(inputs["decoder_input_ids"])  # (B, Ld): text 0
    merged = torch.cat([target, torch.where(source < 0, -1, source + 1)], dim=1)
    patches = torch.zeros(ids.shape[0], 16, dtype=torch.long)  # (B, 16): 64 / 16 = 4 × 4
    labels: dict[str, tuple[Tensor, Tensor]] = {}
    for name in result.layer_names:
        if "text_model" in name:
            labels[name] = (source, source)
        elif name.endswith("head.attention"):
            labels[name] = (torch.zeros(ids.shape[0], 1, dtype=torch.long), patches)
        elif "vision_tower" in name:
            labels[name] = (patches, patches)
        else:
            labels[name] = (target, merged)
    assert result["model.decoder.layers.0.self_attn"].key_groups == ("text", "source", "image")
    check(result, hf_zoo.eager_weights(model, inputs), labels)


def test_florence2_encoder_image_tokens_are_read_from_the_models_own_ids() -> None:
    """Florence-2 merges the image features into the text embeddings before its encoder (which
    receives inputs_embeds): the encoder's "image" group is where the model's input_ids hold the
    placeholder, and the decoder's cross-attention keys carry it; the DaViT tower (window and
    channel attention, no patch grid) is left out, and says so."""
    built = zoo("florence2")
    model, inputs = built.model, built.inputs
    result = probed(model, inputs, ap.auto_layout(model))
    assert result.skipped and all(
        n.startswith("model.vision_tower.") and why == "matches none of the modalities patterns"
        for n, why in result.skipped.items()
    )
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    source = torch.where(mask == 0, -1, (ids == model.config.image_token_id).long())  # (B, Le)
    assert int((source == 1).sum()) > 0
    target = torch.zeros_like(inputs["decoder_input_ids"])  # (B, Ld)
    labels = {
        n: (source, source)
        if ".encoder." in n
        else (target, source if "encoder_attn" in n else target)
        for n in result.layer_names
    }
    check(result, hf_zoo.eager_weights(model, inputs), labels)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_udop_encoder_appends_the_image_patches_no_token_box_covers(backend: str) -> None:
    """UDOP's encoder sequence is its tokens, then the patches of its 4 × 4 grid that no
    token's box centre falls in (then zero padding to 16, masked): boxes placed by hand. The
    padding patches are ignored in both samples, so the probe keeps a subset of query rows and
    T5's relative position bias must follow them (it is folded into the mask)."""
    built = zoo("udop")
    model, inputs = built.model, dict(built.inputs)
    model.set_attn_implementation(backend)
    config = model.config
    grid = config.image_size // config.patch_size
    assert grid == 4 and inputs["pixel_values"].shape[-1] == 64
    mask = inputs["attention_mask"]
    length = mask.shape[1]

    def box(patch: int) -> list[float]:  # a box centred in patch (row-major) of the grid
        x, y = (patch % grid + 0.5) / grid, (patch // grid + 0.5) / grid
        return [x - 0.05, y - 0.05, x + 0.05, y + 0.05]

    covered = [[0, 5, 10, 5, 0, 0, 10, 0], [15] * length]  # per token; sample 0: 3 patches
    inputs["bbox"] = torch.tensor([[box(p) for p in row] for row in covered])
    uncovered = [16 - 3, 16 - 1]
    image = torch.tensor([[1] * n + [-1] * (16 - n) for n in uncovered])  # (B, 16)
    source = torch.cat([torch.where(mask == 0, -1, 0), image], dim=1)  # (B, L + 16)
    assert getattr(config, "decoder_start_token_id", None) is None
    target = torch.zeros_like(inputs["decoder_input_ids"])  # (B, Ld): text (no start token)
    layouts = ap.auto_layout(model)
    result = probed(model, inputs, layouts)
    assert not result.skipped
    labels = {
        n: (source, source)
        if n.startswith("encoder.")
        else (target, source if "EncDecAttention" in n else target)
        for n in result.layer_names
    }
    check(result, hf_zoo.eager_weights(model, inputs), labels)
    assert result["encoder.block.0.layer.0.SelfAttention"].key_groups == ("source", "image")
    cross = result["decoder.block.0.layer.1.EncDecAttention"]
    assert cross.key_groups == ("source", "image") and cross.query_groups == ("text",)
    assert_restored(model, backend)


def test_prophetnet_cross_attention_queries_are_the_main_and_predict_streams() -> None:
    """ProphetNet's decoder runs its target tokens (main stream) and `ngram` predict streams
    of as many positions as one sequence: the cross-attention's queries are all of them (the
    target's groups, then "predict"); the n-gram self-attention is read on its main stream, and
    the probe says that its predict-stream softmaxes ([B, ngram, H, L, 2L]) are not in the
    result."""
    built = zoo("prophetnet")
    model, inputs = built.model, built.inputs
    ngram = model.config.ngram
    assert ngram >= 1
    decoder_ids = inputs["decoder_input_ids"]
    source = torch.where(inputs["attention_mask"] == 0, -1, 0)  # (B, Le)
    start = model.config.decoder_start_token_id
    target = torch.ones_like(decoder_ids)  # (B, Ld): start 0 (a first start token), text 1
    target[:, 0] = (decoder_ids[:, 0] != start).long()
    streams = torch.cat([target] + [torch.full_like(target, 2)] * ngram, dim=1)  # predict 2
    with pytest.warns(ap.errors.AttnProbeWarning, match="predict streams"):
        result = probed(model, inputs, ap.auto_layout(model))
    assert not result.skipped
    labels = {
        n: (source, source)
        if ".encoder." in n
        else (target, target)
        if n.endswith("self_attn")
        else (streams, source)
        for n in result.layer_names
    }
    check(result, hf_zoo.eager_weights(model, inputs), labels)
    cross = result["prophetnet.decoder.layers.0.cross_attn"]
    assert cross.query_groups == ("start", "text", "predict")
    assert result["prophetnet.decoder.layers.0.self_attn"].key_groups == ("start", "text")


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_diffusion_gemma_canvas_attends_to_the_prompt_cache_then_itself(backend: str) -> None:
    """DiffusionGemma's block-diffusion decoder reads the encoder's KV cache without adding to
    it: each call's keys are the prompt's tokens (bos, text, padding ignored) then the canvas
    (`MergedKeys`, own tokens last), although the module receives no cross-attention input."""
    if older_than("transformers", 5, 24):
        # on 5.23 the test sees the encoder vision tower layers left outside the layout
        pytest.skip("DiffusionGemma's layout follows transformers 5.24's modeling file")
    built = zoo("diffusion_gemma")
    model = built.model
    model.set_attn_implementation(backend)
    ids, mask = built.inputs["input_ids"], built.inputs["attention_mask"]
    canvas = model.config.canvas_length
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(model.config.text_config.vocab_size, (2, canvas), generator=generator)
    inputs = dict(built.inputs, decoder_input_ids=noise)  # else drawn inside forward
    assert inputs["decoder_attention_mask"].shape == (2, ids.shape[1] + canvas)
    bos = model.config.text_config.bos_token_id
    prompt = torch.full_like(ids, 2)  # (B, Le): text 2
    first = mask.long().argmax(1)  # (B,) the first non-padding position
    prompt[torch.arange(2), first] = torch.where(ids[torch.arange(2), first] == bos, 1, 2)
    prompt[mask == 0] = -1
    queries = torch.zeros(2, canvas, dtype=torch.long)  # (B, Lc): canvas 0
    keys = torch.cat([prompt, queries], dim=1)  # (B, Le + Lc)
    result = probed(model, inputs, ap.auto_layout(model))
    assert result.skipped and all(  # no images here: the tower has a layout of its own
        ".vision_tower." in n and why == "matches none of the modalities patterns"
        for n, why in result.skipped.items()
    )
    encoder = torch.where(prompt < 0, -1, prompt - 1)  # (B, Le): bos 0, text 1
    labels = {
        n: (encoder, encoder) if ".encoder." in n else (queries, keys) for n in result.layer_names
    }
    assert any(".decoder." in n for n in labels)
    check(result, hf_zoo.eager_weights(model, inputs), labels)
    decoder = result["model.decoder.layers.0.self_attn"]
    assert decoder.query_groups == ("canvas",)
    assert decoder.key_groups == ("canvas", "bos", "text", "image")
    assert_restored(model, backend)


def test_led_banded_encoder_attention_with_global_tokens_and_window_padding() -> None:
    """LED's encoder: sliding-window attention (w = 2) over the sequence padded to a multiple
    of the window (7 -> 8 positions, the 8th ignored), global tokens (two in sample 0, one in
    sample 1: unequal global slots), right padding in sample 1. Reference: dense weights from
    the definition (`hf_zoo.longformer_weights`), not from the module's banded scores."""
    torch.manual_seed(0)
    config = LEDConfig(vocab_size=64, max_encoder_position_embeddings=32,
                       max_decoder_position_embeddings=32, attention_window=4, **SMALL)  # fmt: skip
    model = LEDModel(config).eval()  # attention by hand: no implementation to choose
    ids = torch.tensor([[0, 5, 6, 7, 8, 9, 2], [0, 10, 11, 2, 1, 1, 1]])
    mask = (ids != 1).long()
    global_mask = torch.zeros_like(ids)
    global_mask[:, 0] = 1
    global_mask[0, 3] = 1
    decoder_ids = torch.tensor([[2, 0, 11, 12], [2, 0, 15, 16]])
    inputs = {"input_ids": ids, "attention_mask": mask, "global_attention_mask": global_mask,
              "decoder_input_ids": decoder_ids}  # fmt: skip
    result = probed(model, inputs, ap.auto_layout(model))
    assert not result.skipped
    source = torch.where(mask.bool(), 0, -1)  # (B, 7)
    padded = torch.cat([source, torch.full((2, 1), -1)], dim=1)  # (B, 8): the window padding
    target = torch.tensor([[0, 1, 1, 1]] * 2)
    labels = {
        "encoder.layers.0.self_attn.longformer_self_attn": (padded, padded),
        "decoder.layers.0.self_attn": (target, target),
        "decoder.layers.0.encoder_attn": (target, source),
    }
    weights = hf_zoo.eager_weights(model, inputs)
    assert weights["encoder.layers.0.self_attn.longformer_self_attn"].shape == (2, 2, 8, 8)
    check(result, weights, labels)
    assert_restored(model, model.config._attn_implementation)
    # self_check compares with the maps of the kept query rows (the 8th is ignored everywhere)
    assert ap.self_check(model, inputs, ap.auto_layout(model)).passed


def test_longformer_dense_weights_from_its_band_by_hand() -> None:
    """The band → dense layout on a 4-token example with one global token, by hand."""
    from attnprobe.capture._banded import dense_weights

    w = 1  # band slots: key i - 1, i, i + 1
    local = torch.zeros(1, 4, 1, 1 + 3)  # (B, L, H, G + 2w + 1): one global slot
    local[0, 1, 0] = torch.tensor([0.1, 0.2, 0.3, 0.4])  # global slot -> position 0
    local[0, 2, 0] = torch.tensor([0.5, 0.0, 0.5, 0.0])
    is_global = torch.tensor([[True, False, False, False]])
    rows = torch.tensor([[[0.25, 0.25, 0.25, 0.25]]])  # (B·H, G, L): the global query's row
    dense = dense_weights(local, rows, is_global, torch.zeros(1, 4, dtype=torch.bool), w)[0, 0]
    expected = torch.tensor(
        [
            [0.25, 0.25, 0.25, 0.25],  # position 0 is global: its own row
            [0.1 + 0.2, 0.3, 0.4, 0.0],  # global key 0, band keys 0, 1, 2
            [0.5, 0.0, 0.5, 0.0],  # global key 0, band keys 1, 2, 3
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    torch.testing.assert_close(dense, expected)


def test_longformer_auto_layout_follows_the_window_padding() -> None:
    """LongformerModel pads 7 tokens to 8 (a multiple of attention_window = 4) before its
    attention: auto_layout's labels carry the 8th position as ignored, the global CLS attends
    everywhere."""
    torch.manual_seed(0)
    config = LongformerConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, attention_window=4, max_position_embeddings=40, pad_token_id=1,
    )  # fmt: skip
    model = LongformerModel(config).eval()
    ids = torch.tensor([[0, 5, 6, 7, 8, 9, 2], [0, 10, 11, 2, 1, 1, 1]])
    mask = (ids != 1).long()
    global_mask = torch.zeros_like(ids)
    global_mask[:, 0] = 1
    inputs = {"input_ids": ids, "attention_mask": mask, "global_attention_mask": global_mask}
    result = probed(model, inputs, ap.auto_layout(model))
    # cls 0, then the first segment 1; padding and the window padding ignored
    labels = torch.tensor([[0, 1, 1, 1, 1, 1, 1, -1], [0, 1, 1, 1, -1, -1, -1, -1]])
    name = "encoder.layer.0.attention.self"
    assert result.layer_names == (name,)
    check(result, hf_zoo.eager_weights(model, inputs), {name: (labels, labels)})
