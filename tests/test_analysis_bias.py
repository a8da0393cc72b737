"""Modality bias and history against numpy computations from hand-written attention weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import attnprobe as ap
from tests._reference import masses_from_weights, reference_attention
from tests.test_probe import SdpaBlock

NAMES = ["cls", "audio", "video"]


def probed_block(seed: int = 0) -> tuple[ap.ProbeResult, np.ndarray, torch.Tensor]:
    """A probed SDPA block with per-sample padding, its float64 weights and its labels."""
    torch.manual_seed(seed)
    block = SdpaBlock(dim=16, heads=4).eval()
    x = torch.randn(3, 9, 16) * 2.0
    labels = torch.tensor(
        [
            [0, 1, 1, 1, 2, 2, 2, 2, 2],
            [0, 1, 1, 2, 2, 2, 2, 2, -1],
            [0, 1, 1, 1, 1, 1, 2, 2, -1],
        ]
    )
    mask = (labels >= 0).view(3, 1, 1, 9)  # padded keys masked out
    with ap.probe(block, modalities={"cls": 1, "audio": 3, "video": 5}) as p, torch.no_grad():
        p.set_labels(labels)
        block(x, mask)
        q, k, _ = block.project(x)
    weights = reference_attention(q, k, mask)  # (B, H, L, L) float64
    return p.result(), weights, labels


def expected_numbers(weights: np.ndarray, labels: torch.Tensor, exclude: set[str]) -> dict:
    mass = masses_from_weights(torch.from_numpy(weights), labels, labels, 3, 3)  # (H, 3, 3)
    rows = labels.numpy()
    # every non-padded query row pooled (token-weighted over query groups)
    all_rows = np.zeros((weights.shape[1], 3))
    for g in range(3):
        for b in range(weights.shape[0]):
            keep = rows[b] >= 0
            all_rows[:, g] += weights[b][:, keep][:, :, rows[b] == g].sum(-1).sum(-1)
    all_rows /= (rows >= 0).sum()
    mass = np.concatenate([mass, all_rows[:, None, :]], axis=1)  # (H, 4, 3)
    included = np.array([n not in exclude for n in NAMES])
    share = np.where(included, mass, 0) / np.where(included, mass, 0).sum(-1, keepdims=True)
    share[..., ~included] = np.nan
    tokens = np.array([(rows == g).sum() for g in range(3)], dtype=float)
    token_share = np.where(included, tokens, 0) / np.where(included, tokens, 0).sum()
    token_share[~included] = np.nan
    return {"mass": mass, "share": share, "token_share": token_share}


@pytest.mark.parametrize("exclude", [(), ("cls",)])
def test_bias_numbers_match_numpy(exclude: tuple[str, ...]) -> None:
    result, weights, labels = probed_block()
    bias = ap.modality_bias(result, exclude=exclude)
    want = expected_numbers(weights, labels, set(exclude))
    frame = bias.to_frame("head")
    assert list(frame.columns) == list(ap.analysis.BIAS_COLUMNS)
    queries = [*NAMES, "all"]
    for h in range(4):
        for qi, query in enumerate(queries):
            for ki, key in enumerate(NAMES):
                row = frame[
                    (frame["head"] == h)
                    & (frame["query_modality"] == query)
                    & (frame["key_modality"] == key)
                ].iloc[0]
                np.testing.assert_allclose(row["mass"], want["mass"][h, qi, ki], atol=1e-6)
                np.testing.assert_allclose(
                    row["share"], want["share"][h, qi, ki], atol=1e-6, equal_nan=True
                )
                np.testing.assert_allclose(
                    row["token_share"], want["token_share"][ki], atol=1e-12, equal_nan=True
                )
                np.testing.assert_allclose(
                    row["normalised_mass"],
                    want["share"][h, qi, ki] / want["token_share"][ki],
                    atol=1e-5,
                    equal_nan=True,
                )
    # pooled row counts every non-padded query token
    assert frame[frame["query_modality"] == "all"]["num_queries"].iloc[0] == 25
    # layer level = mean over heads; model level = mean over layers (one layer here)
    layer = bias.to_frame("layer")
    assert "head" not in layer.columns
    got = layer.set_index(["query_modality", "key_modality"])["mass"]
    np.testing.assert_allclose(got[("cls", "audio")], want["mass"][:, 0, 1].mean(), atol=1e-6)
    model = bias.to_frame("model")
    assert "layer" not in model.columns and len(model) == 12


def test_log_ratio_block_and_dominant() -> None:
    result, weights, labels = probed_block(seed=1)
    bias = ap.modality_bias(result, exclude=["cls"])
    want = expected_numbers(weights, labels, {"cls"})
    ratio = bias.log_ratio("audio", "video", level="head")
    cls_head0 = ratio[(ratio["head"] == 0) & (ratio["query_modality"] == "cls")]["log_ratio"]
    np.testing.assert_allclose(
        cls_head0.iloc[0], np.log(want["mass"][0, 0, 1] / want["mass"][0, 0, 2]), atol=1e-5
    )
    block = bias.block()
    assert list(block.index) == NAMES and list(block.columns) == NAMES
    np.testing.assert_allclose(block.to_numpy(), want["mass"][:, :3].mean(0), atol=1e-6)
    np.testing.assert_allclose(bias.block(head=2).to_numpy(), want["mass"][2, :3], atol=1e-6)
    dominant = bias.dominant(level="head", query="cls")
    for h in range(4):
        best = NAMES[1 + int(np.argmax(want["share"][h, 0, 1:]))]
        assert dominant[dominant["head"] == h]["dominant"].iloc[0] == best
    with pytest.raises(ap.AttnProbeError, match="unknown key modality"):
        bias.log_ratio("audio", "text")
    with pytest.raises(ap.AttnProbeError, match="received head=9"):
        bias.block(head=9)
    with pytest.raises(ap.AttnProbeError, match="unknown key groups"):
        ap.modality_bias(result, exclude=["text"])
    with pytest.raises(ap.AttnProbeError, match="leaves no key group"):
        ap.modality_bias(result, exclude=NAMES)
    with pytest.raises(ap.AttnProbeError, match=r"expected an attnprobe\.ProbeResult"):
        ap.modality_bias(pd.DataFrame())  # type: ignore[arg-type]


def test_history_round_trip(tmp_path: Path) -> None:
    history = ap.History(exclude=["cls"])
    for epoch in range(3):
        result, _, _ = probed_block(seed=epoch)
        history.add(result, epoch=epoch, step=10 * epoch, accuracy=0.5 + epoch / 10)
    history.add(pd.DataFrame({"metric": ["air"], "value": [0.25]}), step=30)
    frame = history.to_frame()
    assert list(frame.columns[:3]) == ["step", "epoch", "accuracy"]
    assert frame["epoch"].dtype == "Int64" and frame["epoch"].isna().sum() == 1
    assert len(history) == 4 and len(frame) == 3 * 4 * 4 * 3 + 1
    path = history.save(tmp_path / "history.csv")
    loaded = ap.History.load(path).to_frame()
    pd.testing.assert_frame_equal(
        loaded.drop(columns=["metric", "value"]).dropna(subset=["layer"]),
        frame.drop(columns=["metric", "value"]).dropna(subset=["layer"]),
        check_dtype=False,
    )
    assert not list(tmp_path.glob("*.tmp"))
    parquet = ap.History.load(history.save(tmp_path / "history.parquet")).to_frame()
    pd.testing.assert_frame_equal(parquet, frame)
    with pytest.raises(ap.AttnProbeError, match=r"step=\.\.\. or epoch"):
        history.add(result)
    with pytest.raises(ap.AttnProbeError, match=r"\.csv or \.parquet"):
        history.save(tmp_path / "history.json")
    with pytest.raises(ap.AttnProbeError, match="no file"):
        ap.History.load(tmp_path / "missing.csv")
    with pytest.raises(ap.AttnProbeError, match="already has columns"):
        history.add(frame.head(1), step=1)


def reference_entropy(weights: np.ndarray, labels: torch.Tensor) -> np.ndarray:
    """Mean within-group entropy per (head, query group, key group), by loops."""
    rows = labels.numpy()
    heads = weights.shape[1]
    total, count = np.zeros((heads, 3, 3)), np.zeros((heads, 3, 3))
    for b in range(weights.shape[0]):
        for i in range(weights.shape[2]):
            gq = rows[b, i]
            if gq < 0:
                continue
            for h in range(heads):
                for gk in range(3):
                    a = weights[b, h, i, rows[b] == gk]
                    if a.sum() <= 0:
                        continue
                    p = a / a.sum()
                    p = p[p > 0]
                    total[h, gq, gk] += -(p * np.log(p)).sum()
                    count[h, gq, gk] += 1
    return total / count


def test_within_group_entropy_matches_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnprobe.stats import _builtin

    # two rows a chunk
    monkeypatch.setattr(_builtin, "ENTROPY_CHUNK_ELEMENTS", 3 * 4 * 9 * 2)
    torch.manual_seed(4)
    block = SdpaBlock(dim=16, heads=4).eval()
    x = torch.randn(3, 9, 16) * 2.0
    labels = torch.tensor(
        [
            [0, 1, 1, 1, 2, 2, 2, 2, 2],
            [0, 1, 1, 2, 2, 2, 2, 2, -1],
            [0, 1, 1, 1, 1, 1, 2, 2, -1],
        ]
    )
    mask = (labels >= 0).view(3, 1, 1, 9)
    for queries in (None, ["cls", "video"]):
        with (
            ap.probe(
                block, modalities={"cls": 1, "audio": 3, "video": 5}, entropy=True, queries=queries
            ) as p,
            torch.no_grad(),
        ):
            p.set_labels(labels)
            block(x, mask)
            q, k, _ = block.project(x)
        weights = reference_attention(q, k, mask)
        want = reference_entropy(weights, labels)  # (H, 3, 3)
        layer = p.result().layers[0]
        rows = [NAMES.index(g) for g in layer.query_groups]
        np.testing.assert_allclose(layer.entropy.numpy(), want[:, rows], atol=1e-6)
    bias = ap.modality_bias(p.result())
    frame = bias.to_frame("head")
    got = frame[(frame["head"] == 1) & (frame["query_modality"] == "video")]["entropy"]
    np.testing.assert_allclose(got.to_numpy(), want[1, 2], atol=1e-6)
    no_entropy = ap.modality_bias(probed_block()[0]).to_frame()
    assert no_entropy["entropy"].isna().all()
    with pytest.raises(ap.AttnProbeError, match="entropy=True"):
        _ = probed_block()[0].layers[0].entropy
