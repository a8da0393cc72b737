"""key_gap against numpy/scipy computations on keys and queries computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from scipy.spatial.distance import cosine
from torch import Tensor, nn

import attnprobe as ap
from attnprobe.analysis import _distances as D


class GivenQK(nn.Module):
    """Attention over given queries and keys (one head), so tests can design them."""

    def forward(self, q: Tensor, k: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, k)  # (B, 1, L, D)


def run(q: Tensor, k: Tensor, **kwargs: object) -> ap.ProbeResult:
    model = GivenQK()
    with ap.probe(model, modalities={"cls": 1, "audio": 4, "video": 5}, **kwargs) as p:
        model(q, k)
    return p.result()


def test_constructed_pattern_gives_the_expected_air() -> None:
    """Audio keys point along the CLS query, video keys orthogonal: AIR(audio, video) = 1."""
    torch.manual_seed(0)
    batch, dim = 6, 8
    q = torch.zeros(batch, 1, 10, dim)
    q[:, :, 0, 0] = torch.rand(batch, 1) + 0.5  # CLS query along e0
    k = torch.zeros(batch, 1, 10, dim)
    k[:, :, 1:5, 0] = torch.rand(batch, 1, 4) + 0.1  # audio keys along e0
    k[:, :, 5:, 1] = torch.rand(batch, 1, 5) + 0.1  # video keys along e1
    gap = ap.key_gap(run(q, k), "audio", "video", query="cls", metrics=["air", "air_population"])
    row = gap.to_frame().iloc[0]
    assert row["air"] == pytest.approx(1.0, abs=1e-12)
    assert row["air_population"] == pytest.approx(1.0, abs=1e-12)
    reverse = ap.key_gap(run(q, k), "video", "audio", query="cls", metrics=["air"])
    assert reverse.to_frame().iloc[0]["air"] == pytest.approx(-1.0, abs=1e-12)


def test_streaming_metrics_match_numpy_on_all_keys() -> None:
    torch.manual_seed(1)
    batch, dim = 40, 6
    q = torch.randn(batch, 1, 10, dim)
    k = torch.randn(batch, 1, 10, dim)
    k[:, :, 5:] = k[:, :, 5:] * 1.5 + 0.7  # video keys shifted and wider
    result = run(q, k, second_moment=True)
    frame = ap.key_gap(result, "audio", "video", query="cls").to_frame()
    row = frame.iloc[0]
    keys = k[:, 0].double().numpy()  # (B, L, D)
    audio, video = keys[:, 1:5].reshape(-1, dim), keys[:, 5:].reshape(-1, dim)
    assert row["centroid_gap"] == pytest.approx(cosine(audio.mean(0), video.mean(0)), abs=1e-12)
    # per-sample AIR: the CLS query of each sample against that sample's mean keys
    cls = q[:, 0, 0].double().numpy()  # (B, D)
    per_sample = [
        (1 - cosine(cls[i], keys[i, 1:5].mean(0))) - (1 - cosine(cls[i], keys[i, 5:].mean(0)))
        for i in range(batch)
    ]
    assert row["air"] == pytest.approx(np.mean(per_sample), abs=1e-6)  # float32 reduction
    population = (1 - cosine(cls.mean(0), audio.mean(0))) - (1 - cosine(cls.mean(0), video.mean(0)))
    assert row["air_population"] == pytest.approx(population, abs=1e-6)
    # Fréchet distance from the streaming Σ k kᵀ equals the batch formula (scipy sqrtm)
    mu_a, mu_b = audio.mean(0), video.mean(0)
    cov_a, cov_b = np.cov(audio, rowvar=False), np.cov(video, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a)
    trace = np.trace(cov_a + cov_b - 2 * np.real(scipy.linalg.sqrtm(root @ cov_b @ root)))
    assert row["frechet"] == pytest.approx(float(((mu_a - mu_b) ** 2).sum() + trace), rel=1e-6)
    # without second moments the Fréchet distance is not available
    no_outer = ap.key_gap(run(q, k), "audio", "video").to_frame().iloc[0]
    assert np.isnan(no_outer["frechet"]) and np.isnan(no_outer["air"])


def test_sampled_metrics_use_the_reservoir_and_are_seeded() -> None:
    torch.manual_seed(2)
    q = torch.randn(30, 1, 10, 4)
    k = torch.randn(30, 1, 10, 4)
    k[:, :, 5:] += 2.0  # clearly different video keys
    result = run(q, k, reservoir_size=500)  # holds every key: 120 audio, 150 video
    audio = k[:, 0, 1:5].reshape(-1, 4).double().numpy()
    video = k[:, 0, 5:].reshape(-1, 4).double().numpy()
    frame = ap.key_gap(result, "audio", "video", permutations=50, seed=3).to_frame()
    row = frame.iloc[0]
    assert row["mmd2"] == pytest.approx(D.mmd2_unbiased(audio, video, seed=3).mmd2, rel=1e-9)
    assert row["mmd_p_value"] <= 1 / 51 + 1e-12
    assert row["sliced_w2"] == pytest.approx(D.sliced_wasserstein2(audio, video, seed=3), 1e-9)
    assert row["auc"] > 0.95
    again = ap.key_gap(result, "audio", "video", permutations=50, seed=3).to_frame()
    assert again.equals(frame)
    same = ap.key_gap(run(q, torch.randn(30, 1, 10, 4), reservoir_size=500), "audio", "video")
    assert abs(same.to_frame().iloc[0]["auc"] - 0.5) < 0.15
    assert abs(same.to_frame().iloc[0]["mmd2"]) < 0.02


def test_gqa_heads_map_to_their_key_heads() -> None:
    class Gqa(nn.Module):
        def forward(self, q: Tensor, k: Tensor) -> Tensor:
            return F.scaled_dot_product_attention(q, k, k, enable_gqa=True)

    torch.manual_seed(3)
    q, k = torch.randn(5, 4, 10, 8), torch.randn(5, 2, 10, 8)
    model = Gqa()
    with ap.probe(model, modalities={"cls": 1, "audio": 4, "video": 5}) as p:
        model(q, k)
    frame = ap.key_gap(p.result(), "audio", "video", query="cls").to_frame()
    assert frame["kv_head"].tolist() == [0, 0, 1, 1]
    keys = k.double().numpy()
    for head in range(4):
        kv = head // 2
        want = cosine(
            keys[:, kv, 1:5].reshape(-1, 8).mean(0), keys[:, kv, 5:].reshape(-1, 8).mean(0)
        )
        assert frame.iloc[head]["centroid_gap"] == pytest.approx(want, abs=1e-6)  # float32 sums


def test_bad_requests_are_explained() -> None:
    result = run(torch.randn(2, 1, 10, 4), torch.randn(2, 1, 10, 4))
    with pytest.raises(ap.AttnProbeError, match="no key group 'text'"):
        ap.key_gap(result, "audio", "text")
    with pytest.raises(ap.AttnProbeError, match="two different modalities"):
        ap.key_gap(result, "audio", "audio")
    with pytest.raises(ap.AttnProbeError, match="pass query="):
        ap.key_gap(result, "audio", "video", metrics=["air"])
    with pytest.raises(ap.AttnProbeError, match="reservoir_size"):
        ap.key_gap(result, "audio", "video", metrics=["mmd2"])
    with pytest.raises(ap.AttnProbeError, match="unknown metrics"):
        ap.key_gap(result, "audio", "video", metrics=["kl"])
    no_stats = run(torch.randn(2, 1, 10, 4), torch.randn(2, 1, 10, 4), key_stats=False)
    with pytest.raises(ap.AttnProbeError, match="key_stats=True"):
        ap.key_gap(no_stats, "audio", "video")
