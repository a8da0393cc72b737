"""Reliability under real training conditions: random layouts and batch splits (hypothesis),
activation checkpointing, torch.compile, mixed precision, and memory over many steps."""

from __future__ import annotations

import gc
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

import attnprobe as ap
from attnprobe import functional as AF
from tests._reference import masses_from_weights, reference_attention

FIELDS = ("mass_total", "num_queries", "key_count", "key_total", "key_total_sq", "query_total")


class Sdpa(nn.Module):
    """Self-attention through SDPA with a boolean key mask: ``[B, L, 8]``, 2 heads of 4."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4)  # (3, B, H, L, D)
        return qkv[0], qkv[1], qkv[2]

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        q, k, v = self.heads(x)
        mask = keep.view(x.shape[0], 1, 1, -1)  # (B, 1, 1, L), True = attend
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# -- property-based: random layouts, padding, splits and merge orders ----------------------------
@st.composite
def batches(draw: st.DrawFn) -> tuple[int, Tensor, list[int], list[int]]:
    groups = draw(st.integers(1, 4))
    length = draw(st.integers(2, 9))
    n = draw(st.integers(1, 7))
    labels = torch.tensor(
        draw(
            st.lists(
                st.lists(st.integers(-1, groups - 1), min_size=length, max_size=length),
                min_size=n,
                max_size=n,
            )
        )
    )  # (N, L), -1 = padding
    labels[:, 0] = draw(st.integers(0, groups - 1))  # every sample keeps a real token
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=n - 1))) if n > 1 else []
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
    order = draw(st.permutations(range(len(sizes))))
    return groups, labels, sizes, list(order)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_random_layouts_splits_and_merge_orders_equal_the_one_shot_reference(
    case: tuple[int, Tensor, list[int], list[int]],
) -> None:
    groups, labels, sizes, order = case
    torch.manual_seed(0)
    model = Sdpa()
    names = [f"g{i}" for i in range(groups)]
    x = torch.randn(labels.shape[0], labels.shape[1], 8)

    def run(xs: Tensor, ls: Tensor) -> ap.ProbeResult:
        with ap.probe(model, modalities=ap.ModalityLayout.from_labels(ls, names)) as p:
            model(xs, ls >= 0)
        return p.result()

    whole = run(x, labels)
    parts = [run(xs, ls) for xs, ls in zip(x.split(sizes), labels.split(sizes), strict=True)]

    def merge(indices: list[int]) -> ap.ProbeResult:
        result = parts[indices[0]]
        for i in indices[1:]:
            result = result.merge(parts[i])
        return result

    shuffled, in_order = merge(order), merge(list(range(len(parts))))
    for field in FIELDS:
        a, b = getattr(shuffled.layers[0], field), getattr(in_order.layers[0], field)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)  # merging is exact
        # against one probe over everything: the float64 sums agree up to the float32
        # rounding of the model's own kernels, which depends on the batch shape
        torch.testing.assert_close(a, getattr(whole.layers[0], field), rtol=1e-5, atol=1e-6)
    # and the one-shot result against float64 attention written out by hand
    with torch.no_grad():
        q, k, _ = model.heads(x)
    weights = reference_attention(q, k, (labels >= 0).view(len(x), 1, 1, -1))
    expected = masses_from_weights(torch.from_numpy(weights), labels, labels, groups, groups)
    got = whole.layers[0].mass.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, equal_nan=True)


@settings(max_examples=40, deadline=None)
@given(
    st.one_of(
        st.dictionaries(st.text(max_size=3), st.integers(-3, 3), min_size=1, max_size=4),
        st.lists(st.integers(-5, 5), min_size=1, max_size=6),
    )
)
def test_random_invalid_layouts_raise_the_documented_error(spec: object) -> None:
    """A layout spec is either valid or refused with `ModalityLayoutError` (never an error from
    deep inside torch)."""
    if isinstance(spec, dict):
        valid = all(name for name in spec) and all(count >= 0 for count in spec.values())
        try:
            layout = ap.ModalityLayout(spec)
        except ap.errors.ModalityLayoutError:
            assert not valid
            return
        assert valid and layout.length == sum(spec.values())
    else:
        labels = torch.tensor([spec])  # (1, L) labels with names g0..g2
        valid = int(labels.min()) >= -1 and int(labels.max()) <= 2
        try:
            ap.ModalityLayout.from_labels(labels, ["g0", "g1", "g2"])
        except ap.errors.ModalityLayoutError:
            assert not valid
            return
        assert valid


# -- activation checkpointing ----------------------------------------------------------------------
class Checkpointed(nn.Module):
    def __init__(self, reentrant: bool | None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True) for _ in range(2)
        )
        self.reentrant = reentrant

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            if self.reentrant is None:
                x = block(x)
            else:
                x = checkpoint(block, x, use_reentrant=self.reentrant)
        return x


@pytest.mark.parametrize("reentrant", [True, False])
def test_activation_checkpointing_counts_each_forward_once(reentrant: bool) -> None:
    """The recomputation in backward is not recorded: the result and the gradients equal the
    run without checkpointing."""
    layout = {"cls": 1, "a": 3, "b": 4}
    results, grads = {}, {}
    for mode in (None, reentrant):
        model = Checkpointed(mode).train()
        x = torch.randn(3, 8, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)
        with ap.probe(model, modalities=layout) as p:
            for _ in range(2):
                model(x).square().sum().backward()
        results[mode] = p.result()
        grads[mode] = [q.grad.clone() for q in model.parameters()]
    for plain, ckpt in zip(results[None].layers, results[reentrant].layers, strict=True):
        assert ckpt.num_calls == plain.num_calls == 2  # two forwards, no recomputation
        for field in FIELDS:
            torch.testing.assert_close(getattr(ckpt, field), getattr(plain, field))
    for a, b in zip(grads[None], grads[reentrant], strict=True):
        torch.testing.assert_close(a, b)


def test_huggingface_gradient_checkpointing_counts_once() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        attn_implementation="sdpa",
    )
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = transformers.BertModel(config).train()
        model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        if checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x
            (enable or model.gradient_checkpointing_enable)()
        with ap.probe(model, modalities={"cls": 1, "text": 5}) as p:
            model(input_ids=ids).last_hidden_state.sum().backward()
        results.append(p.result())
    for plain, ckpt in zip(*[r.layers for r in results], strict=True):
        torch.testing.assert_close(ckpt.num_queries, plain.num_queries)
        torch.testing.assert_close(ckpt.mass_total, plain.mass_total)


# -- torch.compile -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mha", "sdpa", "rollingq"])
def test_compiling_a_probed_model_fails_loudly(kind: str) -> None:
    """Compiling while a probe (or a RollingQ query edit) is attached raises `CaptureError`
    saying what to do; it never runs with the probe silently capturing nothing."""
    torch.manual_seed(0)
    if kind == "mha":
        model: nn.Module = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 1, enable_nested_tensor=False
        ).eval()
        args: tuple[Tensor, ...] = (torch.randn(2, 5, 16),)
    else:
        model = nn.Sequential()
        model.add_module("0", Sdpa())
        args = (torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool))

        class Wrap(nn.Module):
            def __init__(self, inner: nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: Tensor, keep: Tensor) -> Tensor:
                return self.inner[0](x, keep)

        model = Wrap(model)
    layout = {"cls": 1, "a": 2, "b": 2}
    compiled = torch.compile(model, backend="eager")
    try:
        if kind == "rollingq":
            rq = ap.RollingQ(4, modalities=("a", "b"), num_heads=2, per_head=True)
            rq.attach(model, "inner.0")
            with pytest.raises(ap.errors.CaptureError, match=r"torch\.compile"):
                compiled(*args)
            rq.detach()
        else:
            with (
                ap.probe(model, modalities=layout),
                pytest.raises(ap.errors.CaptureError, match=r"torch\.compile"),
            ):
                compiled(*args)
        # closed: the compiled model runs, and equals the eager one
        torch.testing.assert_close(compiled(*args), model(*args))
    finally:
        with warnings.catch_warnings():  # some torch versions warn while importing inductor
            warnings.simplefilter("ignore", DeprecationWarning)
            torch._dynamo.reset()


# -- mixed precision -------------------------------------------------------------------------------
def test_bf16_autocast_masses_sum_to_one_and_accumulate_in_float64() -> None:
    torch.manual_seed(0)
    model = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2, enable_nested_tensor=False
    ).eval()
    x = torch.randn(4, 24, 32)
    layout = {"cls": 1, "a": 11, "b": 12}
    with torch.no_grad(), ap.probe(model, modalities=layout) as full:
        model(x)
    with (
        torch.no_grad(),
        torch.autocast("cpu", dtype=torch.bfloat16),
        ap.probe(model, modalities=layout) as half,
    ):
        model(x)
    for low, ref in zip(half.result().layers, full.result().layers, strict=True):
        assert low.mass_total.dtype == torch.float64 and low.key_total.dtype == torch.float64
        # documented tolerance (guarantees page): 1e-2 under bf16
        assert float(low.residual.abs().max()) < 1e-2
        torch.testing.assert_close(low.mass, ref.mass, atol=2e-2, rtol=0)
    # per query row: the indicator pass the probe runs, on bf16 queries and keys under autocast
    g = torch.Generator().manual_seed(3)
    q, k = (torch.randn(4, 4, 24, 8, generator=g).bfloat16() for _ in range(2))
    labels = torch.tensor([0] + [1] * 11 + [2] * 12).repeat(4, 1)  # (B, L)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rows = AF.group_attention_mass(q, k, labels, 3)  # (B, H, Lq, G)
    sums = rows.double().sum(-1)  # (B, H, Lq)
    assert float((sums - 1).abs().max()) < 1e-2


# -- memory over many steps -----------------------------------------------------------------------
def _live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), Tensor))  # no __class__ lookups


def test_a_thousand_probed_training_steps_keep_no_tensors() -> None:
    """1,000 training steps under a probe: the number of live tensors does not grow after the
    first steps (no retained graphs, captured tensors or hook closures), the process's peak
    memory grows by less than a small bound, and nothing the probe holds requires grad."""
    import resource

    torch.manual_seed(0)
    model = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2, enable_nested_tensor=False
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    layout = {"cls": 1, "a": 3, "b": 4}
    x = torch.randn(4, 8, 16)
    with ap.probe(model, modalities=layout, reservoir_size=16) as p:
        counts, peaks = [], []
        for step in range(1000):
            loss = model(x).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step in (100, 999):
                counts.append(_live_tensors())
                peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB
        result = p.result()
    assert counts[1] <= counts[0], counts
    assert peaks[1] - peaks[0] < 20 * 1024, peaks  # < 20 MiB over 900 steps
    for layer in result.layers:
        for value in vars(layer).values():
            tensors = value if isinstance(value, tuple) else (value,)
            for t in tensors:
                if isinstance(t, Tensor):
                    assert not t.requires_grad and t.grad_fn is None
    assert math.isclose(float(result.layers[0].num_queries.sum()), 1000 * 4 * 8)
