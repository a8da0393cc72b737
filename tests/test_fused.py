"""The fused reduction of the built-in sums against their float64 reference, and the hot path
without host-device synchronisation.

Reference: the same statistics with the fused reduction switched off, so that each computes its
states by its own ``update`` (float64, from `attnprobe.functional`, itself tested against numpy
in ``test_functional.py``), on the same model and input.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

import attnprobe as ap
from attnprobe.stats import Cosines, KeyMoments, Mass, QueryMoments, _fused
from tests._reference import FP32_SUMS

LAYOUT = {"cls": 1, "audio": 3, "video": 4}
STATES = (
    "mass_total",
    "num_queries",
    "key_count",
    "key_total",
    "key_total_sq",
    "query_count",
    "query_total",
    "query_total_sq",
    "cosine_total",
    "cosine_count",
)


class Attention(nn.Module):
    """Self-attention through SDPA with ``heads`` query and ``kv_heads`` key heads of 4."""

    def __init__(self, heads: int, kv_heads: int, causal: bool) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.causal = heads, kv_heads, causal
        self.q = nn.Linear(8, 4 * heads)
        self.kv = nn.Linear(8, 8 * kv_heads)

    def forward(self, x: Tensor, pad: Tensor | None = None) -> Tensor:
        batch, length, _ = x.shape
        q = self.q(x).view(batch, length, self.heads, 4).transpose(1, 2)  # (B, H, L, 4)
        kv = self.kv(x).view(batch, length, 2, self.kv_heads, 4).permute(2, 0, 3, 1, 4)
        mask = None if pad is None else ~pad[:, None, None, :]  # (B, 1, 1, L)
        return F.scaled_dot_product_attention(
            q,
            kv[0],
            kv[1],
            attn_mask=mask,
            is_causal=self.causal and mask is None,
            enable_gqa=self.heads != self.kv_heads,
        )


def _unfused(monkeypatch: pytest.MonkeyPatch) -> None:
    for cls in (Mass, KeyMoments, QueryMoments, Cosines):
        monkeypatch.setattr(cls, "fused", property(lambda self: frozenset()))


def _states(model: nn.Module, x: Tensor, labels: Tensor | None, **options: Any) -> list[Any]:
    with ap.probe(model, modalities=LAYOUT, **options) as p, torch.no_grad():
        if labels is not None:
            p.set_labels(labels)
        model(x, None if labels is None else labels < 0)
        if labels is not None:
            p.set_labels(labels[-1:])
        model(x[-1:], None if labels is None else labels[-1:] < 0)  # a second batch size
    return [layer.states for layer in p.result()]


CASES = {
    "mha-b3": dict(heads=2, kv_heads=2, batch=3, pad=False, causal=False, queries=None),
    "gqa-b1": dict(heads=4, kv_heads=2, batch=1, pad=False, causal=True, queries=None),
    "gqa-padded": dict(heads=4, kv_heads=2, batch=3, pad=True, causal=False, queries=None),
    "cls-causal": dict(heads=2, kv_heads=1, batch=2, pad=False, causal=True, queries=["cls"]),
    "cls-padded": dict(heads=2, kv_heads=2, batch=3, pad=True, causal=False, queries=["cls"]),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_sums_equal_the_float64_reference(
    case: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = CASES[case]
    torch.manual_seed(0)
    model = Attention(c["heads"], c["kv_heads"], c["causal"]).to(dtype)
    x = torch.randn(c["batch"], 8, 8).to(dtype)
    labels = None
    if c["pad"]:
        labels = ap.ModalityLayout(LAYOUT).labels(c["batch"], 8).clone()  # (B, 8)
        labels[1:, 6:] = -1  # padded tokens, with junk that must not leak into any sum
        x[1:, 6:] = 1e3
    options = {"queries": c["queries"], "key_stats": True}
    fused = _states(model, x, labels, **options)
    _unfused(monkeypatch)
    reference = _states(model, x, labels, **options)
    tolerance = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else FP32_SUMS
    for got, want in zip(fused, reference, strict=True):
        for name in STATES:
            torch.testing.assert_close(got[name], want[name], **tolerance, msg=name)


def test_autocast_does_not_lower_the_precision_of_the_sums(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under autocast the batched products would run in bfloat16 and round the sums to 8 bits
    (relative errors of 2e-3 were seen); the reduction switches autocast off. The reference
    (float64 updates) is untouched by autocast, which leaves float64 alone."""
    torch.manual_seed(0)
    model = Attention(4, 2, causal=False)
    x = torch.randn(3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = _states(model, x, None)
        _unfused(monkeypatch)
        reference = _states(model, x, None)
    for got, want in zip(fused, reference, strict=True):
        for name in STATES:
            torch.testing.assert_close(got[name], want[name], **FP32_SUMS, msg=name)


def test_compiled_reduction_equals_the_eager_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """``compile_reduction=True`` runs the same pure functions through ``torch.compile``: the
    same states as the float64 reference (GQA, padding with junk, two batch sizes, so the
    compiled functions see a new shape), and the model's outputs unchanged."""
    model, x, labels = _junk_case()
    with torch.no_grad():
        plain = model(x, labels < 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ap.AttnProbeWarning)
        with ap.probe(model, modalities=LAYOUT, compile_reduction=True) as p, torch.no_grad():
            p.set_labels(labels)
            probed = model(x, labels < 0)
        # bit-identical (padded rows are fully masked: NaN in both)
        torch.testing.assert_close(probed, plain, rtol=0, atol=0, equal_nan=True)
        compiled = _states(model, x, labels, compile_reduction=True)
        _unfused(monkeypatch)
        reference = _states(model, x, labels)
    assert set(_fused._COMPILED) == {"mass", "moments"}  # the compiled functions ran
    for got, want in zip(compiled, reference, strict=True):
        for name in STATES:
            torch.testing.assert_close(got[name], want[name], **FP32_SUMS, msg=name)


def test_a_rank_without_calls_extracts_zero_states() -> None:
    """The fused entries are fixed by the site's sizes: a site that saw no call (a DDP rank
    without data) gives zero states of the declared shapes."""
    from attnprobe.stats import Dims, SiteAccumulator

    site = SiteAccumulator("layer")
    dims = Dims(4, 2, 8, ("cls", "a"), ("cls", "a", "b"))
    site.start(dims, (Mass(), KeyMoments(), QueryMoments(), Cosines()))
    states = site.compute()
    assert states["mass_total"].shape == (4, 2, 3) and not states["mass_total"].any()
    assert states["key_total"].shape == (2, 3, 8) and states["cosine_count"].shape == (2, 3)
    assert states["query_total_sq"].shape == (4, 2, 8)


# -- no host-device synchronisation on the hot path ------------------------------------------
SYNCING = {
    "_local_scalar_dense",  # .item(), bool(), float(), int()
    "nonzero",
    "masked_select",
    "unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "equal",
    "is_nonzero",
    "repeat_interleave",  # with a tensor of repeats: an output size read from the device
    "argwhere",
}


class _Syncs(TorchDispatchMode):
    """Records the operations that make a GPU wait for its results (a data-dependent output
    shape, or a value read back), and every copy to another device."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in SYNCING or (name == "_to_copy" and "device" in kwargs):
            self.seen.append(str(func))
        return func(*args, **kwargs)


@pytest.mark.parametrize(
    "options",
    [
        {"key_stats": False},
        {},
        {"queries": ["cls"]},
        {"capture": "fused", "key_stats": False},
        {"per_sample": True},
    ],
    ids=["mass", "defaults", "cls", "fused", "per-sample"],
)
def test_no_host_sync_per_call(options: dict[str, Any]) -> None:
    """Once the labels of a batch shape are made (the first forward), a probed forward
    dispatches no operation that synchronises a GPU (on a GPU, ``gpu_check.py`` runs the same
    with ``torch.cuda.set_sync_debug_mode("error")``)."""
    torch.manual_seed(0)
    model = Attention(4, 2, causal=True).eval()
    x = torch.randn(2, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ap.AttnProbeWarning)  # capture="fused": not bit-exact
        probe = ap.probe(model, modalities=LAYOUT, **options)
    with probe, torch.no_grad():
        model(x)  # labels and indicators made here
        spy = _Syncs()
        with spy:
            model(x)
    assert spy.seen == []


def test_the_sync_spy_sees_what_it_should() -> None:
    spy = _Syncs()
    with spy:
        t = torch.tensor([0.0, 1.0, 2.0])
        t.nonzero()
        bool(t.sum() > 0)
        t.to("cpu", torch.float64)
    assert len(spy.seen) == 3, spy.seen


class _JunkAtPadding(Attention):
    """Writes ``inf`` into the queries of padded tokens and masks those rows out entirely, as
    kernels that leave such rows undefined do (their outputs and masses are then NaN)."""

    def forward(self, x: Tensor, pad: Tensor | None = None) -> Tensor:
        assert pad is not None
        batch, length, _ = x.shape
        q = self.q(x).view(batch, length, self.heads, 4).transpose(1, 2)  # (B, H, L, 4)
        q = q.masked_fill(pad[:, None, :, None], float("inf"))
        kv = self.kv(x).view(batch, length, 2, self.kv_heads, 4).permute(2, 0, 3, 1, 4)
        mask = ~pad[:, None, :, None] & ~pad[:, None, None, :]  # (B, 1, L, L)
        return F.scaled_dot_product_attention(
            q, kv[0], kv[1], attn_mask=mask, enable_gqa=self.heads != self.kv_heads
        )


def _junk_case() -> tuple[nn.Module, Tensor, Tensor]:
    """GQA attention with inf at the padded positions of two of three samples."""
    torch.manual_seed(0)
    model = _JunkAtPadding(4, 2, causal=False)
    x = torch.randn(3, 8, 8)
    labels = ap.ModalityLayout(LAYOUT).labels(3, 8).clone()  # (B, 8)
    labels[1:, 6:] = -1
    return model, x, labels


def test_junk_at_ignored_positions_does_not_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, labels = _junk_case()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ap.AttnProbeWarning)
        fused = _states(model, x, labels)
        _unfused(monkeypatch)
        reference = _states(model, x, labels)
    for got, want in zip(fused, reference, strict=True):
        for name in STATES:
            assert got[name].isfinite().all(), name
            torch.testing.assert_close(got[name], want[name], **FP32_SUMS, msg=name)
