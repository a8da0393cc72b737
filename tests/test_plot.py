"""Figures: each function draws what it says on real probe results, and refuses bad input."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.collections import Collection, PathCollection, PolyCollection, QuadMesh
from matplotlib.colors import LogNorm
from matplotlib.lines import Line2D
from numpy.typing import NDArray
from torch import nn

import attnprobe as ap
from attnprobe import plot
from attnprobe.models import FusionAttention

matplotlib.use("Agg")

LAYOUT = {"cls": 1, "audio": 4, "video": 4}


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    plt.close("all")


def _probe_fusion(reservoir_size: int = 64, heads: int = 2) -> ap.ProbeResult:
    torch.manual_seed(0)
    layer = FusionAttention(dim=8, num_heads=heads).eval()
    with ap.probe(layer, modalities=LAYOUT, reservoir_size=reservoir_size) as p, torch.no_grad():
        for _ in range(3):
            layer(torch.randn(4, 8, 8))
    return p.result()


@pytest.fixture(scope="module")
def result() -> ap.ProbeResult:
    """One FusionAttention layer, 2 heads, key reservoir of 64 per group."""
    return _probe_fusion()


@pytest.fixture(scope="module")
def bias(result: ap.ProbeResult) -> ap.analysis.ModalityBias:
    return ap.modality_bias(result, exclude=["cls"])


@pytest.fixture(scope="module")
def history() -> ap.History:
    """Four epochs of one FusionAttention layer (equal token counts: one fair share line)."""
    torch.manual_seed(0)
    layer = FusionAttention(dim=8, num_heads=2).eval()
    history = ap.History(exclude=["cls"])
    for epoch in range(4):
        with ap.probe(layer, modalities=LAYOUT) as p, torch.no_grad():
            layer(torch.randn(4, 8, 8))
        history.add(p.result(), epoch=epoch, step=10 * epoch)
        with torch.no_grad():
            layer.q_proj.weight.add_(0.3 * torch.randn_like(layer.q_proj.weight))
    return history


@pytest.fixture(scope="module")
def deep_history() -> ap.History:
    """Three epochs of a 2-layer encoder with unequal groups (audio 2 tokens, video 3)."""
    torch.manual_seed(0)
    block = nn.TransformerEncoderLayer(d_model=8, nhead=2, batch_first=True, dropout=0.0)
    model = nn.TransformerEncoder(block, num_layers=2, enable_nested_tensor=False).eval()
    history = ap.History(exclude=["cls"])
    for epoch in range(3):
        layout = {"cls": 1, "audio": 2, "video": 3}
        with ap.probe(model, modalities=layout) as p, torch.no_grad():
            model(torch.randn(4, 6, 8))
        history.add(p.result(), epoch=epoch)
    return history


def _sweep() -> pd.DataFrame:
    rows = []
    for corrupted in ("audio", "video"):
        for level in (1.0, 0.0, 0.5):  # unsorted on purpose
            audio = 0.7 - 0.4 * level if corrupted == "audio" else 0.7 + 0.1 * level
            accuracy = 0.9 - (0.4 if corrupted == "audio" else 0.1) * level
            for key, share in (("audio", audio), ("video", 1.0 - audio)):
                rows.append(
                    {
                        "corrupted": corrupted,
                        "level": level,
                        "key_modality": key,
                        "share": share,
                        "share_sem": 0.02 if corrupted == "audio" else np.nan,
                        "accuracy": accuracy,
                        "num_samples": 64,
                    }
                )
    return pd.DataFrame(rows)


class _Sweep:
    """A stand-in for a sweep result object: anything with to_frame()."""

    def to_frame(self) -> pd.DataFrame:
        return _sweep()


def _legend_texts(ax: Axes) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def _xdata(line: Line2D) -> NDArray[np.float64]:
    return np.asarray(line.get_xdata(), dtype=np.float64)


def _ydata(line: Line2D) -> NDArray[np.float64]:
    return np.asarray(line.get_ydata(), dtype=np.float64)


def _offsets(points: Collection) -> NDArray[np.float64]:
    return np.asarray(points.get_offsets(), dtype=np.float64)


def _new_ax() -> Axes:
    _, ax = plt.subplots()
    created: Axes = ax
    return created


# --------------------------------------------------------------------------- invariants


def test_every_function_uses_the_given_axes_and_leaves_global_state(
    result: ap.ProbeResult,
    bias: ap.analysis.ModalityBias,
    history: ap.History,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_show(*args: object, **kwargs: object) -> None:
        raise AssertionError("plot called plt.show()")

    monkeypatch.setattr(plt, "show", no_show)
    before = dict(matplotlib.rcParams)
    backend = matplotlib.get_backend()
    calls: list[Callable[[Axes | None], Axes]] = [
        lambda ax: plot.attention_share(history, ax=ax),
        lambda ax: plot.bias_heatmap(bias, ax=ax),
        lambda ax: plot.block_masses(bias, ax=ax),
        lambda ax: plot.key_distribution(result, ax=ax),
        lambda ax: plot.share_vs_noise(_sweep(), ax=ax),
        lambda ax: plot.accuracy_vs_noise(_sweep(), ax=ax),
    ]
    for call in calls:
        ax = _new_ax()
        assert call(ax) is ax
        new = call(None)
        assert isinstance(new, Axes) and new is not ax
        assert new.get_title() and new.get_xlabel() and new.get_ylabel()
        new.figure.canvas.draw()  # renders without warnings (missing glyphs, layout)
    assert dict(matplotlib.rcParams) == before
    assert matplotlib.get_backend() == backend
    assert set(plot.__all__) == {
        "attention_share",
        "bias_heatmap",
        "block_masses",
        "key_distribution",
        "key_distribution_legend",
        "share_vs_noise",
        "accuracy_vs_noise",
    }


def test_bad_axes_are_refused(history: ap.History) -> None:
    with pytest.raises(ap.AttnProbeError, match="expected ax to be a matplotlib Axes or None"):
        plot.attention_share(history, ax="ax")  # type: ignore[arg-type]
    with pytest.raises(ap.AttnProbeError, match="received Figure"):
        plot.share_vs_noise(_sweep(), ax=plt.figure())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- attention_share


def test_attention_share_one_line_per_key_modality(history: ap.History) -> None:
    ax = plot.attention_share(history)
    lines = ax.get_lines()
    assert len(lines) == 3  # audio, video, one shared fair-share line (4 vs 4 tokens)
    assert ax.get_xlabel() == "epoch"
    assert "cls" in ax.get_ylabel() and "cls" in ax.get_title()
    assert _legend_texts(ax) == ["audio", "video", "fair share (audio, video)"]
    assert lines[2].get_linestyle() == "--"
    assert list(_ydata(lines[2])) == [0.5, 0.5]

    frame = history.to_frame()
    rows = frame[(frame["query_modality"] == "cls") & (frame["key_modality"] == "video")]
    expected = rows.groupby("epoch")["share"].mean()  # mean over heads
    np.testing.assert_allclose(_xdata(lines[1]), [0, 1, 2, 3])
    np.testing.assert_allclose(_ydata(lines[1]), expected.to_numpy(dtype=float))


def test_attention_share_one_key_over_steps_from_a_frame(history: ap.History) -> None:
    ax = _new_ax()
    out = plot.attention_share(history.to_frame(), key="audio", x="step", query="all", ax=ax)
    assert out is ax
    assert len(ax.get_lines()) == 2  # one layer, and the fair share
    np.testing.assert_allclose(_xdata(ax.get_lines()[0]), [0, 10, 20, 30])
    assert ax.get_xlabel() == "training step"
    assert "audio" in ax.get_title()
    assert _legend_texts(ax) == ["FusionAttention", "fair share (audio)"]


def test_attention_share_many_layers_put_the_legend_outside(deep_history: ap.History) -> None:
    ax = plot.attention_share(deep_history)
    # 2 layers × 2 key modalities, then two fair-share lines (2/5 and 3/5)
    assert len(ax.get_lines()) == 6
    np.testing.assert_allclose([_ydata(ax.get_lines()[i])[0] for i in (4, 5)], [0.4, 0.6])
    texts = _legend_texts(ax)
    assert texts[:2] == ["key: audio", "key: video"]
    assert texts[2:4] == ["layer: layers.0.self_attn", "layer: layers.1.self_attn"]
    legend = ax.get_legend()
    assert legend is not None
    anchor = legend.get_bbox_to_anchor().transformed(ax.transAxes.inverted())
    assert anchor.x0 > 1.0  # right of the data
    markers = {line.get_marker() for line in ax.get_lines()[:4]}
    assert len(markers) == 2  # one marker per layer


def test_attention_share_without_fair_share_column(history: ap.History) -> None:
    frame = history.to_frame().drop(columns="token_share")
    assert len(plot.attention_share(frame).get_lines()) == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"x": "time"}, "expected x='epoch' or x='step', received x='time'"),
        ({"query": "text"}, r"no rows for query group 'text'; query groups in the history: \["),
        ({"key": "text"}, r"unknown key modality 'text'; key modalities: \['cls', 'audio'"),
        ({"key": "cls"}, r"excluded from shares \(History\(exclude=...\)\)"),
    ],
)
def test_attention_share_errors(history: ap.History, kwargs: dict[str, str], match: str) -> None:
    with pytest.raises(ap.AttnProbeError, match=match):
        plot.attention_share(history, **kwargs)  # type: ignore[arg-type]


def test_attention_share_input_errors(history: ap.History, result: ap.ProbeResult) -> None:
    with pytest.raises(ap.AttnProbeError, match=r"lacks column\(s\) \['share'\]"):
        plot.attention_share(history.to_frame().drop(columns="share"))
    with pytest.raises(ap.AttnProbeError, match=r"expected an attnprobe\.History or its"):
        plot.attention_share([1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(ap.AttnProbeError, match=r"no rows; record results with History\.add"):
        plot.attention_share(ap.History())
    steps_only = ap.History(exclude=["cls"])
    steps_only.add(result, step=5)
    with pytest.raises(ap.AttnProbeError, match=r"no 'epoch' values.*pass x='step'"):
        plot.attention_share(steps_only)
    assert len(plot.attention_share(steps_only, x="step").get_lines()) == 3


# --------------------------------------------------------------------------- bias_heatmap


def test_bias_heatmap_share(bias: ap.analysis.ModalityBias) -> None:
    ax = plot.bias_heatmap(bias)  # key: the first key group with shares (audio)
    assert isinstance(ax.collections[0], QuadMesh)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("layer", "head")
    assert "cls queries → audio keys" in ax.get_title()
    frame = bias.to_frame("head")
    rows = frame[(frame["query_modality"] == "cls") & (frame["key_modality"] == "audio")]
    assert [t.get_text() for t in ax.texts] == [f"{v:.2f}" for v in rows["share"]]
    mesh = ax.collections[0]
    assert isinstance(mesh, QuadMesh)
    assert (mesh.norm.vmin, mesh.norm.vmax) == (0.0, 1.0)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1"]


def test_bias_heatmap_normalised_mass_is_centred_at_one(bias: ap.analysis.ModalityBias) -> None:
    ax = _new_ax()
    frame = bias.to_frame("head")
    assert plot.bias_heatmap(frame, metric="normalised_mass", key="video", ax=ax) is ax
    mesh = ax.collections[0]
    assert isinstance(mesh.norm, LogNorm)
    assert mesh.norm.vmin is not None and mesh.norm.vmax is not None
    assert mesh.norm.vmin * mesh.norm.vmax == pytest.approx(1.0)  # 1 sits in the middle
    values = frame[(frame["query_modality"] == "cls") & (frame["key_modality"] == "video")]
    assert mesh.norm.vmax >= float(values["normalised_mass"].max())
    assert mesh.norm.vmin <= float(values["normalised_mass"].min())
    assert len(ax.texts) == 2


def test_bias_heatmap_large_grids_are_not_annotated() -> None:
    frame = pd.DataFrame(
        {
            "layer": "block",
            "head": range(13),
            "query_modality": "cls",
            "key_modality": "audio",
            "mass": 0.5,
        }
    )
    ax = plot.bias_heatmap(frame, metric="mass")
    assert len(ax.texts) == 0
    assert len(ax.get_yticklabels()) > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"metric": "entropy"}, "expected metric 'mass', 'share' or 'normalised_mass'"),
        (
            {"query": "text"},
            r"no rows for query group 'text'; query groups: \['cls', 'audio', 'video', 'all'\]",
        ),
        ({"key": "text"}, r"unknown key group 'text'; key groups: \['cls', 'audio', 'video'\]"),
        ({"key": "cls"}, r"NaN everywhere: 'cls' is excluded from shares.*metric='mass'"),
    ],
)
def test_bias_heatmap_errors(
    bias: ap.analysis.ModalityBias, kwargs: dict[str, str], match: str
) -> None:
    with pytest.raises(ap.AttnProbeError, match=match):
        plot.bias_heatmap(bias, **kwargs)  # type: ignore[arg-type]


def test_bias_heatmap_input_errors(bias: ap.analysis.ModalityBias, result: ap.ProbeResult) -> None:
    with pytest.raises(
        ap.AttnProbeError, match=r"lacks column\(s\) \['head'\].*to_frame\('head'\)"
    ):
        plot.bias_heatmap(bias.to_frame("layer"))
    with pytest.raises(ap.AttnProbeError, match=r"expected an attnprobe\.analysis\.ModalityBias"):
        plot.bias_heatmap(result)  # type: ignore[arg-type]
    assert len(plot.bias_heatmap(bias, metric="mass", key="cls").texts) == 2


# --------------------------------------------------------------------------- block_masses


def test_block_masses(bias: ap.analysis.ModalityBias) -> None:
    ax = plot.block_masses(bias)
    block = bias.block()
    assert [t.get_text() for t in ax.texts] == [f"{v:.2f}" for v in block.to_numpy().ravel()]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("key group", "query group")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cls", "audio", "video"]
    assert "mean over layers, mean over heads" in ax.get_title()
    mesh = ax.collections[0]
    assert (mesh.norm.vmin, mesh.norm.vmax) == (0.0, 1.0)


def test_block_masses_one_head_on_given_axes(bias: ap.analysis.ModalityBias) -> None:
    ax = _new_ax()
    assert plot.block_masses(bias, layer="FusionAttention", head=1, ax=ax) is ax
    block = bias.block(layer="FusionAttention", head=1)
    assert [t.get_text() for t in ax.texts] == [f"{v:.2f}" for v in block.to_numpy().ravel()]
    assert "layer FusionAttention, head 1" in ax.get_title()
    assert len(plot.block_masses(block).texts) == 9


def test_block_masses_errors(bias: ap.analysis.ModalityBias) -> None:
    with pytest.raises(ap.AttnProbeError, match=r"block_masses: .*2 heads, received head=5"):
        plot.block_masses(bias, head=5)
    with pytest.raises(ap.AttnProbeError, match=r"block_masses: .*no layer 'enc'"):
        plot.block_masses(bias, layer="enc")
    with pytest.raises(ap.AttnProbeError, match="received a DataFrame"):
        plot.block_masses(bias.block(), head=0)
    with pytest.raises(ap.AttnProbeError, match=r"expected an attnprobe\.analysis\.ModalityBias"):
        plot.block_masses("bias")  # type: ignore[arg-type]
    with pytest.raises(ap.AttnProbeError, match="expected a numeric query group"):
        plot.block_masses(pd.DataFrame({"audio": ["a", "b"]}))


# --------------------------------------------------------------------------- key_distribution


def test_key_distribution(result: ap.ProbeResult) -> None:
    ax = plot.key_distribution(result, query="cls")
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    # the fusion CLS key is one learned vector: one diamond; audio, video: points and a star
    assert len(scatters) == 5
    texts = _legend_texts(ax)
    assert [t.split(" (")[0] for t in texts[:3]] == ["cls", "audio", "video"]
    assert texts[0].startswith("cls (constant, ")
    assert texts[1].startswith("audio (n=48, ")  # 3 batches × 4 samples × 4 tokens
    assert texts[1].endswith(r"° to $\bar{q}$)")
    assert texts[3:] == ["mean key", r"$\bar{q}$ direction (cls, head 0)"]
    assert ax.get_aspect() == 1.0  # angles are true
    assert len(ax.texts) == 1  # the query arrow

    layer = result.layers[0]
    q = layer.query_mean[0, 0].double().numpy()
    unit = q / np.linalg.norm(q)
    centres = [scatters[0], scatters[2], scatters[4]]  # the diamond, then the stars
    assert len(_offsets(scatters[0])) == 1
    for g, centre in enumerate(centres):
        x, _ = _offsets(centre)[0]
        assert x == pytest.approx(float(layer.key_mean[0, g].double().numpy() @ unit))
    # the key points of a group are its reservoir sample, projected on q̄
    audio = layer.key_sample[1][:, 0].double().numpy() @ unit  # type: ignore[index]
    np.testing.assert_allclose(np.sort(_offsets(scatters[1])[:, 0]), np.sort(audio))


def test_key_distribution_panels_share_one_legend(result: ap.ProbeResult) -> None:
    fig, axes = plt.subplots(1, 2)
    for ax in axes:
        plot.key_distribution(result, query="cls", ax=ax, legend=False)
        assert ax.get_legend() is None
        assert "cls " in ax.get_xlabel() and "°" in ax.get_xlabel()  # the angles
    plot.key_distribution_legend(fig, result)
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == [
        "cls (one constant key)",
        "audio keys",
        "video keys",
        "mean key",
        r"$\bar{q}$ direction (mean cls query)",
    ]
    plt.close(fig)


def test_key_distribution_layer_result_subsample_and_gqa(result: ap.ProbeResult) -> None:
    layer = result.layers[0]
    ax = _new_ax()
    assert plot.key_distribution(layer, head=1, query="audio", max_points=10, ax=ax) is ax
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert [len(_offsets(s)) for s in (scatters[0], scatters[1], scatters[3])] == [1, 10, 10]
    again = plot.key_distribution(layer, head=1, query="audio", max_points=10)
    same = [c for c in again.collections if isinstance(c, PathCollection)]
    np.testing.assert_array_equal(_offsets(scatters[0]), _offsets(same[0]))

    # grouped-query attention: 2 query heads share 1 key/value head
    states = dict(layer.states)
    states.update(
        key_total=layer.states["key_total"][:1],
        key_total_sq=layer.states["key_total_sq"][:1],
        key_sample=tuple((rows[:, :1], prio) for rows, prio in layer.states["key_sample"]),
    )
    gqa = dataclasses.replace(layer, num_kv_heads=1, states=ap.stats.States(states))
    ax = plot.key_distribution(gqa, head=1)
    assert "head 1, kv head 0" in ax.get_title()


def test_projection_basis_is_orthonormal_and_starts_at_the_query() -> None:
    rng = np.random.default_rng(0)
    q = rng.normal(size=6)
    keys = rng.normal(size=(50, 6)) + 3.0 * np.eye(6)[2]
    u1, u2 = plot._projection_basis(q, keys)
    np.testing.assert_allclose(u1, q / np.linalg.norm(q))
    assert np.linalg.norm(u2) == pytest.approx(1.0)
    assert u1 @ u2 == pytest.approx(0.0, abs=1e-12)
    # u2 is the top principal direction of the keys with the q̄ component removed
    resid = keys - np.outer(keys @ u1, u1)
    resid -= resid.mean(0)
    top = np.linalg.eigh(resid.T @ resid)[1][:, -1]
    assert abs(top @ u2) == pytest.approx(1.0)
    # degenerate inputs still give an orthonormal pair
    u1, u2 = plot._projection_basis(q, np.tile(q, (4, 1)))
    assert u1 @ u2 == pytest.approx(0.0, abs=1e-12)
    assert np.linalg.norm(u2) == pytest.approx(1.0)


def test_key_distribution_errors(result: ap.ProbeResult) -> None:
    with pytest.raises(ap.AttnProbeError, match=r"no key samples.*reservoir_size > 0"):
        plot.key_distribution(_probe_fusion(reservoir_size=0))
    with pytest.raises(ap.AttnProbeError, match=r"0 <= head < 2 .*received head=2"):
        plot.key_distribution(result, head=2)
    with pytest.raises(ap.AttnProbeError, match=r"unknown query group 'text'; query groups"):
        plot.key_distribution(result, query="text")
    with pytest.raises(ap.AttnProbeError, match=r"no layer 'enc'; layers: \['FusionAttention'\]"):
        plot.key_distribution(result, layer="enc")
    with pytest.raises(ap.AttnProbeError, match="leave layer out"):
        plot.key_distribution(result.layers[0], layer="enc")
    with pytest.raises(ap.AttnProbeError, match=r"expected an attnprobe\.ProbeResult"):
        plot.key_distribution(result.to_frame())  # type: ignore[arg-type]
    with pytest.raises(ap.AttnProbeError, match="max_points to be a positive int"):
        plot.key_distribution(result, max_points=0)


# --------------------------------------------------------------------------- noise sweeps


def test_share_vs_noise() -> None:
    ax = plot.share_vs_noise(_sweep())
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["audio", "video"]
    np.testing.assert_allclose(_xdata(lines[0]), [0.0, 0.5, 1.0])  # sorted by level
    np.testing.assert_allclose(_ydata(lines[0]), [0.7, 0.5, 0.3])  # audio share, audio noisy
    np.testing.assert_allclose(_ydata(lines[1]), [0.3, 0.25, 0.2])  # video share, video noisy
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1  # video's share_sem is NaN: no band
    assert "λ" in ax.get_xlabel() and "corrupted" in ax.get_ylabel()
    assert _legend_texts(ax) == ["audio", "video"]


def test_share_vs_noise_from_an_object_without_sem() -> None:
    ax = _new_ax()
    assert plot.share_vs_noise(_Sweep(), ax=ax) is ax
    frame = _sweep().drop(columns="share_sem").assign(query_modality="cls")
    ax = plot.share_vs_noise(frame)
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert ax.get_title().startswith("cls attention")


def test_accuracy_vs_noise() -> None:
    ax = _new_ax()
    assert plot.accuracy_vs_noise(_Sweep(), ax=ax) is ax
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["audio", "video"]
    np.testing.assert_allclose(_xdata(lines[0]), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(_ydata(lines[0]), [0.9, 0.7, 0.5])
    np.testing.assert_allclose(_ydata(lines[1]), [0.9, 0.85, 0.8])
    assert ax.get_ylabel() == "accuracy"


def test_noise_sweep_errors() -> None:
    sweep = _sweep()
    with pytest.raises(ap.AttnProbeError, match=r"lacks column\(s\) \['share'\]"):
        plot.share_vs_noise(sweep.drop(columns="share"))
    with pytest.raises(ap.AttnProbeError, match=r"lacks column\(s\) \['accuracy'\]"):
        plot.accuracy_vs_noise(sweep.drop(columns="accuracy"))
    with pytest.raises(ap.AttnProbeError, match="no row has key_modality equal to corrupted"):
        plot.share_vs_noise(sweep.assign(corrupted="text"))
    twice = pd.concat([sweep.assign(query_modality=q) for q in ("cls", "all")])
    with pytest.raises(ap.AttnProbeError, match=r"several for corrupted='audio'.*query_modality"):
        plot.share_vs_noise(twice)
    conflicting = sweep.assign(accuracy=np.arange(len(sweep), dtype=float))
    with pytest.raises(ap.AttnProbeError, match="received different accuracies"):
        plot.accuracy_vs_noise(conflicting)
    with pytest.raises(ap.AttnProbeError, match="expected numbers in column 'level'"):
        plot.accuracy_vs_noise(sweep.assign(level="high"))
    with pytest.raises(ap.AttnProbeError, match="the sweep frame has no rows"):
        plot.share_vs_noise(sweep.iloc[:0])
    with pytest.raises(ap.AttnProbeError, match="expected a noise-sweep result"):
        plot.accuracy_vs_noise({"level": [0.0]})
