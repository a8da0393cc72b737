"""Models with several token sequences: per-layer layouts in one probe, cross-attention told
apart per call, and the layers a default probe leaves out.

References: the same layers probed by separate single-layout probes (``torch.equal`` on every
summed state), and the weights ``nn.MultiheadAttention`` itself returns, summed per group by
the numpy loop of `masses_from_weights`.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import attnprobe as ap
from attnprobe.errors import ModalityLayoutError, ProbeConfigError
from attnprobe.models import FusionAttention
from tests._reference import masses_from_weights

LA, LV, D = 4, 6, 16


def _encoder() -> nn.Module:
    layer = nn.TransformerEncoderLayer(D, 2, 2 * D, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


class TwoStream(nn.Module):
    """An audio encoder, a video encoder, cross-modal attention both ways and a joint layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a_enc, self.v_enc = _encoder(), _encoder()
        self.a2v = nn.MultiheadAttention(D, 2, batch_first=True)  # audio queries, video keys
        self.v2a = nn.MultiheadAttention(D, 2, batch_first=True)  # video queries, audio keys
        self.joint = FusionAttention(D, num_heads=2, dropout=0.0)

    def forward(self, audio: Tensor, video: Tensor) -> Tensor:
        a, v = self.a_enc(audio), self.v_enc(video)  # (B, La, D), (B, Lv, D)
        a = a + self.a2v(a, v, v, need_weights=False)[0]  # (B, La, D)
        v = v + self.v2a(v, a, a, need_weights=False)[0]  # (B, Lv, D)
        out: Tensor = self.joint(torch.cat([a, v], dim=1))  # (B, 1 + La + Lv, D)
        return out


AUDIO, VIDEO = {"audio": LA}, {"video": LV}
JOINT = {"cls": 1, "audio": LA, "video": LV}
MODALITIES = {"a_enc.*": AUDIO, "v_enc.*": VIDEO, "a2v": AUDIO, "v2a": VIDEO, "joint": JOINT}
KEYS = {"a2v": VIDEO, "v2a": AUDIO}


def _msg(text: str) -> str:
    return re.escape(text)


def _inputs(batch: int = 3) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, LA, D, generator=g), torch.randn(batch, LV, D, generator=g)


def _assert_same_states(a: ap.results.LayerResult, b: ap.results.LayerResult) -> None:
    assert (a.name, a.query_groups, a.key_groups) == (b.name, b.query_groups, b.key_groups)
    assert a.states.keys() == b.states.keys()
    for key in a.states:
        x, y = a.states[key], b.states[key]
        assert isinstance(x, Tensor) and isinstance(y, Tensor), key
        assert torch.equal(x, y), (a.name, key)


@pytest.mark.parametrize("options", [{}, {"queries": ["audio", "video"]}, {"per_sample": True}])
def test_one_probe_with_per_layer_layouts_equals_separate_probes(options: dict) -> None:
    model = TwoStream().eval()
    inputs = [_inputs(3), _inputs(2)]
    with (
        torch.no_grad(),
        ap.probe(model, modalities=MODALITIES, key_modalities=KEYS, **options) as p,
    ):
        outputs = [model(*x) for x in inputs]
    one = p.result()
    assert one.layer_names == (
        "a_enc.layers.0.self_attn",
        "a_enc.layers.1.self_attn",
        "v_enc.layers.0.self_attn",
        "v_enc.layers.1.self_attn",
        "a2v",
        "v2a",
        "joint",
    )
    assert one.skipped == {}
    assert one["a2v"].query_groups == ("audio",) and one["a2v"].key_groups == ("video",)
    assert one["joint"].key_groups == ("cls", "audio", "video")
    separate = [
        ({"modalities": AUDIO, "layers": "a_enc.*"}),
        ({"modalities": VIDEO, "layers": "v_enc.*"}),
        ({"modalities": AUDIO, "key_modalities": VIDEO, "layers": "a2v"}),
        ({"modalities": VIDEO, "key_modalities": AUDIO, "layers": "v2a"}),
        ({"modalities": JOINT, "layers": "joint"}),
    ]
    results = []
    for kwargs in separate:
        if "queries" in options and not set(options["queries"]) & set(kwargs["modalities"]):
            continue
        extra = dict(options)
        if "queries" in extra:
            extra["queries"] = [q for q in extra["queries"] if q in kwargs["modalities"]]
        with torch.no_grad(), ap.probe(model, **kwargs, **extra) as q:
            again = [model(*x) for x in inputs]
        for out, ref in zip(again, outputs, strict=True):
            assert torch.equal(out, ref)
        results.extend(q.result().layers)
    assert [r.name for r in results] == list(one.layer_names)
    for mine, theirs in zip(one.layers, results, strict=True):
        _assert_same_states(mine, theirs)
    # one result merges like any other
    merged = one.merge(one)
    assert torch.equal(merged["a2v"].mass_total, 2 * one["a2v"].mass_total)


def test_cross_modal_masses_match_mha_weights() -> None:
    model = TwoStream().eval()
    audio, video = _inputs(2)
    with torch.no_grad(), ap.probe(model, modalities=MODALITIES, key_modalities=KEYS) as p:
        model(audio, video)
    result = p.result()
    with torch.no_grad():
        a, v = model.a_enc(audio), model.v_enc(video)
        weights = model.a2v(a, v, v, average_attn_weights=False)[1]  # (B, H, La, Lv)
    keys = torch.zeros(2, LV, dtype=torch.long)
    queries = torch.zeros(2, LA, dtype=torch.long)
    expected = masses_from_weights(weights, keys, queries, 1, 1)
    np.testing.assert_allclose(result["a2v"].mass.numpy(), expected, atol=1e-6, rtol=0)


def test_a_default_probe_keeps_the_layers_its_layout_fits_and_says_which_it_left_out() -> None:
    model = TwoStream().eval()
    with torch.no_grad(), ap.probe(model, modalities=JOINT) as p:
        model(*_inputs())
    with pytest.warns(ap.AttnProbeWarning, match="layers left out of the result"):
        result = p.result()
    assert result.layer_names == ("joint",)
    assert set(result.skipped) == {
        "a_enc.layers.0.self_attn",
        "a_enc.layers.1.self_attn",
        "v_enc.layers.0.self_attn",
        "v_enc.layers.1.self_attn",
        "a2v",
        "v2a",
    }
    assert (
        "covers 11 tokens (cls=1, audio=4, video=6) but the sequence has 4"
        in (result.skipped["a_enc.layers.0.self_attn"])
    )
    assert "is cross-attention" in result.skipped["a2v"]
    assert "left out (.skipped)" in repr(result)
    # an explicit selection stays strict
    with (
        pytest.raises(ModalityLayoutError, match=_msg("layer 'a_enc.layers.0.self_attn'")),
        ap.probe(model, modalities=JOINT, layers=["a_enc.layers.0.self_attn", "joint"]),
    ):
        model(*_inputs())


def test_cross_attention_is_told_apart_per_call_with_equal_lengths() -> None:
    """Audio and video of the same length: a cross call labelled by the query layout would
    fit silently; it must be labelled by the key layout (or refused without one)."""
    model = TwoStream().eval()
    audio = torch.randn(2, LV, D)  # as long as the video
    with (
        torch.no_grad(),
        ap.probe(model, modalities={"x": LV}, layers="a2v"),
        pytest.raises(ModalityLayoutError, match="this call is cross-attention"),
    ):
        model(audio, torch.randn(2, LV, D))
    layouts = {"a2v": {"audio": LV}}
    with (
        torch.no_grad(),
        ap.probe(
            model, modalities=layouts, key_modalities={"a2v": {"video": LV}}, layers="a2v"
        ) as p,
    ):
        model(audio, torch.randn(2, LV, D))
    assert p.result()["a2v"].key_groups == ("video",)


def test_bad_per_layer_layouts_have_pinned_errors() -> None:
    model = TwoStream()
    with pytest.raises(
        ProbeConfigError,
        match=_msg(
            "probe: the modalities pattern 'enc.*' matches no attention module; attention "
            "modules: 'a_enc.layers.0.self_attn'"
        ),
    ):
        ap.probe(model, modalities={"enc.*": AUDIO, "joint": JOINT})
    with pytest.raises(
        ProbeConfigError,
        match=_msg(
            "probe: two modalities layouts for layer 'joint': the pattern 'j*' comes first and "
            "wins, so 'joint' gives no layer its layout."
        ),
    ):
        ap.probe(model, modalities={"j*": JOINT, "joint": JOINT})
    with pytest.raises(
        ProbeConfigError,
        match=_msg(
            "probe: layer 'a2v' has a key layout (key_modalities) but no layout of its queries"
        ),
    ):
        ap.probe(model, modalities={"joint": JOINT}, key_modalities={"a2v": VIDEO})
    with pytest.raises(
        ProbeConfigError,
        match=_msg("probe: layer 'joint' matches none of the modalities patterns"),
    ):
        ap.probe(model, modalities={"a_enc.*": AUDIO}, layers=["joint"])
    with pytest.raises(
        ProbeConfigError,
        match=_msg("probe: expected the keys of a per-layer modalities mapping to be"),
    ):
        ap.probe(model, modalities={1: AUDIO})  # type: ignore[dict-item]
    with pytest.raises(
        ProbeConfigError,
        match=_msg("probe: modalities is a LayerLayouts, which holds the key layouts too"),
    ):
        ap.probe(model, modalities=ap.labels.LayerLayouts(MODALITIES), key_modalities=KEYS)
    # a key layout that does not fit the keys
    wrong_keys = {"a2v": {"video": LV + 1}}
    with (
        torch.no_grad(),
        ap.probe(model, modalities=MODALITIES, key_modalities=wrong_keys, layers="a2v"),
        pytest.raises(
            ModalityLayoutError,
            match=_msg(
                "layer 'a2v': keys: the modality layout covers 7 tokens (video=7) but the "
                "sequence has 6 tokens"
            ),
        ),
    ):
        model(*_inputs())
    # set_labels with several layouts must say which
    p = ap.probe(model, modalities=MODALITIES, key_modalities=KEYS)
    with pytest.raises(ProbeConfigError, match=_msg("set_labels: this probe has 3 query layouts")):
        p.set_labels(None)
    p.set_labels(torch.zeros(2, LA, dtype=torch.long), layers="a_enc.*")


class CrossPool(nn.Module):
    """A cross-modal fusion layer: one learned query (``cls``) reads the audio and video
    tokens of the other streams (keys from another sequence than the query)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.query = nn.Parameter(torch.randn(1, 1, D))
        self.attn = nn.MultiheadAttention(D, 1, batch_first=True)

    def forward(self, audio: Tensor, video: Tensor) -> Tensor:
        tokens = torch.cat([audio, video + 1.5], dim=1)  # (B, La + Lv, D), shifted video keys
        query = self.query.expand(audio.shape[0], 1, D)  # (B, 1, D)
        out: Tensor = self.attn(query, tokens, tokens, need_weights=False)[0][:, 0]  # (B, D)
        return out


def test_rollingq_on_a_cross_modal_fusion_layer() -> None:
    model = CrossPool().eval()
    options = {
        "modalities": {"cls": 1},
        "key_modalities": {"audio": LA, "video": LV},
        "layers": "attn",
    }

    def stats() -> ap.results.LayerResult:
        with torch.no_grad(), ap.probe(model, **options) as p:
            model(*_inputs(8))
        return p.result()["attn"]

    before = stats()
    rq = ap.RollingQ(D, modalities=["audio", "video"], query="cls").attach(model, "attn")
    step = rq.step(before)
    assert step.rotated and step.air == (float(rq.air(before)[0]),)
    audio, video = _inputs(8)
    with torch.no_grad():
        out = model(audio, video)
        # reference by hand: the learned query projected, rotated by R, attending to the keys
        tokens = torch.cat([audio, video + 1.5], dim=1)  # (B, L, D)
        w, b = model.attn.in_proj_weight, model.attn.in_proj_bias
        q = model.query[0] @ w[:D].T + b[:D]  # (1, D)
        q = q @ rq.rotation[0].T  # (1, D): R q
        k = tokens @ w[D : 2 * D].T + b[D : 2 * D]  # (B, L, D)
        v = tokens @ w[2 * D :].T + b[2 * D :]  # (B, L, D)
        weights = torch.softmax(k @ q[0] / D**0.5, dim=-1)  # (B, L)
        expected = model.attn.out_proj((weights.unsqueeze(-1) * v).sum(1))  # (B, D)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # the probe sees the rotated query: its AIR moved
    assert float(rq.air(stats())[0]) != pytest.approx(float(rq.air(before)[0]), abs=1e-3)
    rq.detach()


def test_rollingq_checks_heads_and_head_size_at_attach() -> None:
    model = TwoStream()
    with pytest.raises(
        ProbeConfigError,
        match=_msg(
            "RollingQ.attach: 'joint' (FusionAttention) has head size 8, this corrector was "
            "built for head_dim=16; build it as RollingQ(head_dim=8, num_heads=2, "
            "per_head=True, ...)."
        ),
    ):
        ap.RollingQ(16, modalities=["audio", "video"]).attach(model, "joint")
    with pytest.raises(
        ProbeConfigError,
        match=_msg(
            "RollingQ.attach: 'a2v' (MultiheadAttention) has 2 heads; the paper's rotation acts "
            "on a single-head query. Build it as RollingQ(head_dim=8, num_heads=2, "
            "per_head=True, ...) (extension: one rotation per head)."
        ),
    ):
        ap.RollingQ(8, modalities=["audio", "video"]).attach(model, "a2v")
    with pytest.raises(
        ProbeConfigError,
        match=_msg(
            "RollingQ.attach: 'joint' (FusionAttention) has 2 heads, this corrector was built "
            "for num_heads=4"
        ),
    ):
        ap.RollingQ(8, modalities=["audio", "video"], num_heads=4, per_head=True).attach(
            model, "joint"
        )
    assert not hasattr(model.joint, "rollingq") or model.joint.rollingq is None
    rq = ap.RollingQ(8, modalities=["audio", "video"], num_heads=2, per_head=True)
    rq.attach(model, "joint").detach()


def test_self_check_takes_per_layer_layouts_and_key_layouts() -> None:
    model = TwoStream().eval()
    check = ap.self_check(model, _inputs(2), MODALITIES, key_modalities=KEYS)
    assert check.passed and len(check.layers) == 7, check.to_frame()
    assert set(check.to_frame()["reference"]) == {"math SDPA maps (V = I)"}


class MergedDecoder(nn.Module):
    """A decoder layer whose attention reads its own tokens and an encoder's in one call
    (T5Gemma2's merged attention): keys = ``cat([own, encoder])``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.attn = nn.MultiheadAttention(D, 2, batch_first=True)

    def forward(self, text: Tensor, memory: Tensor) -> Tensor:
        keys = torch.cat([text, memory], dim=1)  # (B, Lt + Lm, D)
        return self.attn(text, keys, keys, need_weights=False)[0]


def test_merged_keys_label_the_own_tokens_then_the_other_sequence() -> None:
    model = MergedDecoder().eval()
    text, memory = torch.randn(2, 3, D), torch.randn(2, 5, D)
    layouts = ap.labels.LayerLayouts(
        {"attn": {"bos": 1, "text": 2}},
        keys={"attn": ap.labels.MergedKeys({"image": 4, "text": 1})},
    )
    assert repr(layouts) == (
        "LayerLayouts(queries={'attn': [bos, text]}, keys={'attn': own + [image, text]})"
    )
    with torch.no_grad(), ap.probe(model, modalities=layouts) as p:
        model(text, memory)
    layer = p.result()["attn"]
    # a name in both sequences ("text") is one group; the other's new groups come after
    assert layer.key_groups == ("bos", "text", "image")
    with torch.no_grad():
        keys = torch.cat([text, memory], dim=1)
        weights = model.attn(text, keys, keys, average_attn_weights=False)[1]  # (B, H, 3, 8)
    key_labels = torch.tensor([[0, 1, 1, 2, 2, 2, 2, 1]] * 2)  # own [bos, text, text], then
    query_labels = torch.tensor([[0, 1, 1]] * 2)  # the encoder's [image ×4, text]
    expected = masses_from_weights(weights, key_labels, query_labels, 3, 2)
    np.testing.assert_allclose(layer.mass.numpy(), expected, atol=1e-6, rtol=0)


def test_merged_keys_have_pinned_errors() -> None:
    model = MergedDecoder().eval()
    with pytest.raises(ProbeConfigError, match=_msg("received MergedKeys, which describes keys")):
        ap.probe(model, modalities={"attn": ap.labels.MergedKeys({"image": 4})})
    with pytest.raises(ProbeConfigError, match=_msg("received a MergedKeys; pass the layout")):
        ap.labels.MergedKeys(ap.labels.MergedKeys({"image": 4}))
    # keys fewer than the layer's own tokens: not merged keys
    short = ap.labels.LayerLayouts({"attn": {"text": 3}}, keys=ap.labels.MergedKeys({"x": 1}))
    fewer = _msg("this call attends to 2 keys, fewer than its own 3 tokens that MergedKeys counts")
    with (
        torch.no_grad(),
        ap.probe(model, modalities=short, layers=["attn"]),
        pytest.raises(ModalityLayoutError, match=fewer),
    ):
        model.attn(torch.randn(1, 3, D), torch.randn(1, 2, D), torch.randn(1, 2, D))


def test_merged_keys_with_the_own_tokens_last() -> None:
    """Kosmos-2's projector: learned latents attend to ``cat([image features, latents])``."""
    torch.manual_seed(4)
    attn = nn.MultiheadAttention(D, 2, batch_first=True).eval()
    latents, image = torch.randn(2, 3, D), torch.randn(2, 5, D)
    keys = torch.cat([image, latents], dim=1)  # (B, 5 + 3, D)
    layouts = ap.labels.LayerLayouts(
        {"latent": 3}, keys=ap.labels.MergedKeys(ap.ModalityLayout.uniform("image"), own="last")
    )
    assert "[image] + own" in repr(layouts)
    with torch.no_grad(), ap.probe(attn, modalities=layouts, layers=[""]) as p:
        attn(latents, keys, keys, need_weights=False)
    layer = p.result().layers[0]
    assert layer.key_groups == ("latent", "image")
    with torch.no_grad():
        weights = attn(latents, keys, keys, average_attn_weights=False)[1]  # (B, H, 3, 8)
    key_labels = torch.tensor([[1] * 5 + [0] * 3] * 2)  # image first, the latents last
    expected = masses_from_weights(weights, key_labels, torch.zeros(2, 3, dtype=torch.long), 2, 1)
    np.testing.assert_allclose(layer.mass.numpy(), expected, atol=1e-6, rtol=0)
    with pytest.raises(ProbeConfigError, match=_msg("expected own='first' (the layer's own")):
        ap.labels.MergedKeys({"image": 5}, own="middle")
