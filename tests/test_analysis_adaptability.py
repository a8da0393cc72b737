"""noise_sweep on models whose attention provably follows quality, and on static attention."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor, nn

import attnprobe as ap
from tests._imports import loaded_by

LAYOUT = {"cls": 1, "audio": 4, "video": 6}


class Fusion(nn.Module):
    """A CLS query attends over audio and video tokens. Adaptive: a token's key encodes how
    close its content channels are to the clean pattern (all ones), so corruption lowers its
    attention. Static: the key reads a channel the corruption never touches."""

    def __init__(self, adaptive: bool) -> None:
        super().__init__()
        self.adaptive = adaptive
        self.head = nn.Linear(8, 3)

    def forward(self, audio: Tensor, video: Tensor) -> Tensor:
        x = torch.cat([audio, video], dim=1)  # (B, L, 8)
        # (B, L): closeness to the clean pattern, or a channel no corruption touches
        score = -((x[..., 1:] - 1.0) ** 2).mean(-1) if self.adaptive else x[..., 0]
        batch, length, dim = x.shape
        k = torch.zeros(batch, 1, 1 + length, dim)
        k[:, 0, 1:, 0] = score
        q = torch.zeros(batch, 1, 1 + length, dim)
        q[..., 0] = 4.0
        v = torch.cat([torch.zeros(batch, 1, dim), x], dim=1).unsqueeze(1)  # (B, 1, 1+L, 8)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, 1+L, 8)
        return self.head(out[:, 0, 0])  # (B, 3)


def batches(seed: int = 0) -> list[tuple[Tensor, Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(3):
        audio = torch.cat(
            [torch.randn(8, 4, 1, generator=g), 1 + 0.1 * torch.randn(8, 4, 7, generator=g)], -1
        )
        video = torch.cat(
            [torch.randn(8, 6, 1, generator=g), 1 + 0.1 * torch.randn(8, 6, 7, generator=g)], -1
        )
        out.append((audio, video, torch.randint(0, 3, (8,), generator=g)))
    return out


def prepare(batch: Any, modality: str | None, level: float, generator: torch.Generator) -> Any:
    audio, video, y = batch

    def content_only(x: Tensor) -> Tensor:  # channel 0 plays the role of a position code
        return torch.cat([x[..., :1], ap.corruption.corrupt(x[..., 1:], level, generator)], dim=-1)

    if modality == "audio":
        audio = content_only(audio)
    elif modality == "video":
        video = content_only(video)
    return (audio, video), y


def test_adaptive_attention_correlates_with_quality() -> None:
    torch.manual_seed(0)
    model = Fusion(adaptive=True)
    sweep = ap.noise_sweep(
        model, batches(), prepare, modalities=LAYOUT, corrupted=["audio", "video"], query="cls"
    )
    scores = sweep.adaptability().set_index("corrupted")
    for modality in ("audio", "video"):
        assert scores.loc[modality, "pearson_r"] > 0.8
        assert scores.loc[modality, "spearman_rho"] > 0.8
        assert scores.loc[modality, "pearson_p"] < 1e-6
        assert scores.loc[modality, "delta_mass"] > 0.1
        assert scores.loc[modality, "num_pairs"] == 24 * 5
    # the scores equal scipy on the per-sample table
    samples = sweep.samples_frame()
    own = samples[(samples["corrupted"] == "audio") & (samples["key_modality"] == "audio")]
    want = stats.pearsonr(1 - own["level"], own["share"]).statistic
    assert scores.loc["audio", "pearson_r"] == pytest.approx(want, abs=1e-12)
    # shares of the non-excluded groups sum to 1 per sample
    totals = samples.groupby(["corrupted", "level", "sample"])["share"].sum()
    np.testing.assert_allclose(totals.to_numpy(), 1.0, atol=1e-9)
    frame = sweep.to_frame()
    assert set(frame.columns) >= {"corrupted", "level", "share", "share_sem", "accuracy"}
    clean_audio = frame[(frame["corrupted"] == "audio") & (frame["level"] == 0.0)]
    assert clean_audio["num_samples"].tolist() == [24, 24]


def test_static_attention_gives_no_correlation() -> None:
    torch.manual_seed(0)
    model = Fusion(adaptive=False)
    sweep = ap.noise_sweep(
        model, batches(), prepare, modalities=LAYOUT, corrupted=["audio", "video"], query="cls"
    )
    scores = sweep.adaptability()
    assert scores["pearson_r"].abs().max() < 1e-6
    assert scores["delta_mass"].abs().max() < 1e-9


def test_accuracy_per_level_matches_a_direct_run() -> None:
    torch.manual_seed(1)
    model = Fusion(adaptive=True)
    data = batches(seed=1)
    sweep = ap.noise_sweep(
        model, data, prepare, modalities=LAYOUT, corrupted=["video"], levels=[0.0, 1.0], seed=5
    )
    frame = sweep.to_frame()
    with torch.no_grad():
        hits = [(model(a, v).argmax(-1) == y).float() for a, v, y in data]
    clean = frame[(frame["level"] == 0.0)]["accuracy"].unique()
    assert clean.tolist() == [pytest.approx(float(torch.cat(hits).mean()))]
    # the same seed reproduces the corrupted run exactly
    again = ap.noise_sweep(
        model, data, prepare, modalities=LAYOUT, corrupted=["video"], levels=[0.0, 1.0], seed=5
    )
    assert again.samples_frame().equals(sweep.samples_frame())
    assert model.training  # the mode is restored


def test_bad_arguments_are_explained() -> None:
    model = Fusion(adaptive=True)
    with pytest.raises(ap.errors.AnalysisError, match="not a group"):
        ap.noise_sweep(model, batches(), prepare, modalities=LAYOUT, corrupted=["text"])
    with pytest.raises(ap.errors.AnalysisError, match="levels in"):
        ap.noise_sweep(
            model, batches(), prepare, modalities=LAYOUT, corrupted=["audio"], levels=[2]
        )
    with pytest.raises(ap.errors.AnalysisError, match="is in exclude"):
        ap.noise_sweep(model, batches(), prepare, modalities=LAYOUT, corrupted=["cls"])
    with pytest.raises(ap.errors.AnalysisError, match=r"\[0, 1\]"):
        ap.corruption.corrupt(torch.ones(2, 3), 1.5)


def test_the_analyzers_run_no_model_and_old_import_paths_work() -> None:
    """Analysis is results in, results out: importing `attnprobe.analysis` loads neither the
    probe nor the runner (read from the import statements); `noise_sweep`, which runs the model,
    lives in `attnprobe.sweep` and its former import paths still reach it."""
    loaded = loaded_by("attnprobe.analysis")
    forbidden = ("attnprobe._probe", "attnprobe.capture", "attnprobe.runner", "attnprobe.sweep")
    assert sorted(m for m in loaded if m.startswith(forbidden)) == []
    from attnprobe.analysis import corrupt, noise_sweep
    from attnprobe.analysis.adaptability import noise_sweep as old_path
    from attnprobe.corruption import corrupt as corruption_corrupt
    from attnprobe.sweep import noise_sweep as sweep_noise_sweep

    assert noise_sweep is old_path is ap.noise_sweep is sweep_noise_sweep
    assert ap.analysis.noise_sweep is sweep_noise_sweep
    assert corrupt is ap.corruption.corrupt is ap.analysis.corrupt is corruption_corrupt
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        _ = ap.analysis.missing  # type: ignore[attr-defined]
