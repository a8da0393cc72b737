"""Cross-attention: queries from one sequence, keys from another (``key_modalities``).

References: the weights ``nn.MultiheadAttention`` itself returns, and HuggingFace's eager
cross-attention weights, summed per group by the numpy loop of `masses_from_weights`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

import attnprobe as ap
from tests._reference import masses_from_weights


def test_torch_decoder_cross_attention_matches_mha_weights() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerDecoderLayer(d_model=16, nhead=2, batch_first=True, dropout=0.0)
    decoder = nn.TransformerDecoder(layer, num_layers=2).eval()
    target, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    memory_padding = torch.tensor([[False] * 7, [False] * 5 + [True] * 2])
    key_labels = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, -1, -1]])
    with (
        ap.probe(
            decoder,
            modalities={"bos": 1, "text": 4},
            key_modalities={"audio": 3, "video": 4},
            layers="layers.*.multihead_attn",
        ) as p,
        torch.no_grad(),
    ):
        p.set_key_labels(key_labels)
        decoder(target, memory, memory_key_padding_mask=memory_padding)
    result = p.result()
    assert result.layer_names == ("layers.0.multihead_attn", "layers.1.multihead_attn")
    # reference: the same calls again, unprobed, asking the module for its weights
    weights: dict[str, torch.Tensor] = {}
    for name in result.layer_names:
        decoder.get_submodule(name).register_forward_hook(
            lambda m, args, kwargs, out, n=name: weights.__setitem__(
                n,
                m.forward(*args, **{**kwargs, "need_weights": True, "average_attn_weights": False})[
                    1
                ],
            ),
            with_kwargs=True,
        )
    with torch.no_grad():
        decoder(target, memory, memory_key_padding_mask=memory_padding)
    queries = torch.tensor([[0, 1, 1, 1, 1]] * 2)
    for layer_result in result.layers:
        assert layer_result.query_groups == ("bos", "text")
        assert layer_result.key_groups == ("audio", "video")
        expected = masses_from_weights(weights[layer_result.name], key_labels, queries, 2, 2)
        np.testing.assert_allclose(layer_result.mass.numpy(), expected, atol=1e-6, rtol=0)
        assert layer_result.key_count is not None
        assert layer_result.key_count.tolist() == [6.0, 6.0]  # padded memory is no key


def test_cross_attention_needs_key_modalities() -> None:
    layer = nn.TransformerDecoderLayer(d_model=16, nhead=2, batch_first=True)
    decoder = nn.TransformerDecoder(layer, num_layers=1).eval()
    with (
        pytest.raises(ap.errors.ModalityLayoutError, match="key_modalities"),
        ap.probe(decoder, modalities={"text": 5}, layers="layers.0.multihead_attn"),
    ):
        decoder(torch.randn(1, 5, 16), torch.randn(1, 7, 16))
    with pytest.raises(ap.errors.ProbeConfigError, match="select the cross-attention layers"):
        ap.probe(decoder, modalities={"text": 5}, key_modalities={"audio": 7})
    p = ap.probe(decoder, modalities={"text": 5}, layers="layers.0.self_attn")
    with pytest.raises(ap.errors.ProbeConfigError, match="no key_modalities"):
        p.set_key_labels(None)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_hf_bert_decoder_cross_attention_matches_eager(backend: str) -> None:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        is_decoder=True,
        add_cross_attention=True,
    )
    model = BertModel(config, add_pooling_layer=False).eval()
    model.set_attn_implementation(backend)
    ids = torch.tensor([[91, 5, 6, 7, 8, 9], [91, 11, 12, 13, 0, 0]])
    encoder = torch.randn(2, 8, 32)
    encoder_mask = torch.tensor([[1] * 8, [1] * 6 + [0] * 2])
    inputs = {
        "input_ids": ids,
        "attention_mask": (ids != 0).long(),
        "encoder_hidden_states": encoder,
        "encoder_attention_mask": encoder_mask,
    }
    key_layout = ap.ModalityLayout.from_labels(
        torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, -1, -1]]), ["image", "audio"]
    )
    with torch.no_grad():
        reference = model(**inputs).last_hidden_state
    # without key_modalities only the self-attention layers are selected, and vice versa
    self_names = ap.probe(model, modalities=ap.auto_layout(model)).layer_names
    assert all("crossattention" not in n for n in self_names) and len(self_names) == 2
    with (
        ap.probe(model, modalities=ap.auto_layout(model), key_modalities=key_layout) as p,
        torch.no_grad(),
    ):
        probed = model(**inputs).last_hidden_state
    assert torch.equal(reference, probed)
    result = p.result()
    assert all("crossattention" in n for n in result.layer_names) and len(result.layer_names) == 2
    weights: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    for name in result.layer_names:
        modules[name].register_forward_hook(
            lambda m, a, out, n=name: weights.__setitem__(n, out[1].detach())
        )
    model.set_attn_implementation("eager")
    with torch.no_grad():
        model(**inputs)
    queries = ap.auto_layout(model)(**inputs).labels(2, 6)
    for layer in result.layers:
        expected = masses_from_weights(weights[layer.name], key_layout.labels(2, 8), queries, 2, 2)
        np.testing.assert_allclose(layer.mass.numpy(), expected, atol=1e-5, rtol=0)
