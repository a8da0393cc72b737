"""attnprobe.metrics against numpy formulas written out on the probe's sums and counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import attnprobe as ap
from attnprobe import metrics
from attnprobe.models import FusionAttention

LAYOUT = {"cls": 1, "a": 2, "b": 3, "c": 2, "d": 1, "e": 2}


def probed(heads: int = 2, seed: int = 0, **options: object) -> ap.results.LayerResult:
    torch.manual_seed(seed)
    layer = FusionAttention(dim=8, num_heads=heads).eval()
    with ap.probe(layer, modalities=LAYOUT, **options) as p, torch.no_grad():  # type: ignore[arg-type]
        for _ in range(2):
            layer(torch.randn(4, 10, 8) * 2)
    return p.result().layers[0]


def test_shares_match_numpy_and_mass_shares_sums_in_group_order() -> None:
    layer = probed(per_sample=True)
    keys = ["b", "a", "d", "c", "e"]
    idx = [list(LAYOUT).index(k) for k in keys]
    total = layer.mass_total.double().numpy()[:, 0][:, idx]  # (H, M) for the cls query
    mass = total / layer.num_queries.double().numpy()[0]
    want = mass / mass.sum(-1, keepdims=True)
    got = metrics.shares(layer, "cls", keys)
    assert got.dtype == torch.float64 and got.shape == (2, 5)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    # per sample: each sample's own mass, the same formula
    sample = layer.sample_mass
    assert sample is not None
    per = metrics.shares(layer, "cls", keys, per_sample=True)  # (N, H, M)
    own = sample.double().numpy()[:, :, 0][..., idx]
    np.testing.assert_allclose(per.numpy(), own / own.sum(-1, keepdims=True), rtol=1e-12)
    # excluded groups are NaN and left out of the sum, which is numpy's for up to 7 groups
    full = torch.from_numpy(np.random.default_rng(0).uniform(size=(3, 4, 6)))
    included = np.array([False, True, True, True, False, True])
    kept = np.where(included, full.numpy(), 0.0)
    with np.errstate(invalid="ignore"):
        expected = kept / kept.sum(-1, keepdims=True)
    expected[..., ~included] = np.nan
    assert np.array_equal(
        metrics.mass_shares(full, torch.from_numpy(included)).numpy(), expected, equal_nan=True
    )  # bit for bit
    with pytest.raises(ap.errors.AnalysisError, match="one included flag per group"):
        metrics.mass_shares(full, [True, False])


def test_cosines_air_and_centroid_gap_match_numpy() -> None:
    layer = probed(heads=2)
    cos = layer.mean_cosine.double().numpy()  # (H, Gq, Gk)
    names = list(LAYOUT)
    np.testing.assert_array_equal(
        metrics.cosines(layer, "cls", ["c", "a"]).numpy(),
        cos[:, 0][:, [names.index("c"), names.index("a")]],
    )
    np.testing.assert_array_equal(
        metrics.air(layer, "a", "b", "e").numpy(),
        cos[:, names.index("a"), names.index("b")] - cos[:, names.index("a"), names.index("e")],
    )
    mu = layer.key_mean.double().numpy()  # (Hk, Gk, D)
    a, b = mu[:, names.index("a")], mu[:, names.index("d")]
    want = 1 - (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    np.testing.assert_allclose(metrics.centroid_gap(layer, "a", "d").numpy(), want, atol=1e-12)


def test_centroid_gap_of_a_zero_mean_key() -> None:
    torch.manual_seed(0)
    layer = FusionAttention(dim=8).eval()
    with torch.no_grad():
        layer.k_proj.weight.zero_()
        layer.k_proj.bias.zero_()  # every key is the zero vector
    with ap.probe(layer, modalities={"cls": 1, "a": 2, "b": 3}) as p, torch.no_grad():
        layer(torch.randn(2, 5, 8))
    result = p.result().layers[0]
    assert math.isnan(float(metrics.centroid_gap(result, "a", "b")[0]))
    assert float(metrics.centroid_gap(result, "a", "b", zero=1.0)[0]) == 1.0
    assert metrics.cosine_gap([1.0, 0.0], [-2.0, 0.0]) == 2.0
    assert metrics.cosine_gap([1.0, 1e-9], [1.0, 0.0]) == 0.0  # clipped, never negative


def test_group_lookups_explain_what_is_missing() -> None:
    layer = probed(queries="cls")
    assert metrics.group_indices(layer, "cls", ["e", "a"]) == (0, [5, 1])
    with pytest.raises(ap.errors.AnalysisError, match=r"no query group 'a'.*queries='a'"):
        metrics.group_indices(layer, "a", ["b"])
    with pytest.raises(
        ap.errors.AnalysisError, match=r"RollingQ: .*no key groups 'x', 'y'; key groups"
    ):
        metrics.group_indices(layer, "cls", ["a", "x", "y"], caller="RollingQ")
    with pytest.raises(ap.errors.AnalysisError, match="at least one key group"):
        metrics.key_indices(layer, [])
    with pytest.raises(ap.errors.AnalysisError, match="per_sample=True"):
        metrics.shares(layer, "cls", ["a"], per_sample=True)
    with pytest.raises(ap.errors.AnalysisError, match="key_stats=True"):
        metrics.centroid_gap(probed(key_stats=False), "a", "b")
