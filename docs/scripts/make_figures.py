"""Draw the figures of the documentation from the project's own code.

Run from the repository root: ``python docs/scripts/make_figures.py`` (CPU, one thread, about 15 s;
``python docs/scripts/make_figures.py guides`` or ``concepts`` draws one set). Everything is
seeded, so a rerun writes the same files.

``guides`` (``docs/figures/<function>.png``, one per function of `attnprobe.plot`): trains a
tiny two-layer fusion Transformer on synthetic data in which audio is the informative modality
and video a noisy one, records its attention with a probe every epoch, and runs
``attnprobe.noise_sweep`` on held-out data.

``concepts`` (``docs/figures/concepts/<page>.png``, one per concept page): a layout's label map;
an attention map next to the mass table the probe computes from it; and, for two copies of the
bundled late-fusion model (`attnprobe.models.LateFusionTransformer`) trained on data in which
both modalities are equally informative, one on clean samples and one with a modality of 60 %
of the samples corrupted: the key gap over training, the noise sweep of each, and one RollingQ
rotation of the clean-trained model's fusion query.
"""

from __future__ import annotations

import argparse
import copy
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a script that only writes files

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor, nn

import attnprobe as ap
from attnprobe import plot
from attnprobe.models import LateFusionTransformer
from attnprobe.rollingq import anchor_statistics

OUT = Path(__file__).resolve().parents[1] / "figures"
WIDTH = 6.5  # inches
DPI = 110
LENGTHS = {"audio": 6, "video": 10}
LAYOUT = {"cls": 1, **LENGTHS}
CLASSES, FEATURES, DIM = 4, 8, 32


class TinyFusion(nn.Module):
    """``[CLS, audio tokens, video tokens]`` through a 2-layer encoder; classify from CLS."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.ModuleDict({m: nn.Linear(FEATURES, DIM) for m in LENGTHS})
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, DIM))
        self.pos = nn.Parameter(0.02 * torch.randn(1, 1 + sum(LENGTHS.values()), DIM))
        layer = nn.TransformerEncoderLayer(
            DIM, 4, 2 * DIM, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(DIM, CLASSES)

    def forward(self, audio: Tensor, video: Tensor) -> Tensor:
        cls = self.cls.expand(audio.shape[0], 1, DIM)  # (B, 1, d)
        tokens = [cls, self.embed["audio"](audio), self.embed["video"](video)]
        x = torch.cat(tokens, dim=1) + self.pos  # (B, 1 + La + Lv, d)
        logits: Tensor = self.head(self.encoder(x)[:, 0])  # (B, C)
        return logits


def make_data(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Class prototypes plus noise: audio clean (σ = 1), video noisy (σ = 4)."""
    protos = {m: 1.5 * torch.randn(CLASSES, FEATURES, generator=generator) for m in LENGTHS}
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    noise = {"audio": 1.0, "video": 4.0}
    audio, video = (
        protos[m][labels].unsqueeze(1)
        + noise[m] * torch.randn(n, LENGTHS[m], FEATURES, generator=generator)
        for m in ("audio", "video")
    )  # (N, L_m, F)
    return audio, video, labels


Held = tuple[Tensor, Tensor, Tensor]


def train() -> tuple[ap.History, ap.ProbeResult, nn.Module, Held]:
    """Train for a few epochs; record the probe's bias on held-out data after each."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    audio, video, labels = make_data(1024, generator)
    model = TinyFusion()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = ap.History(exclude=["cls"])
    eval_batch = (audio[:256], video[:256])

    def record(epoch: int, reservoir: int = 0) -> ap.ProbeResult:
        model.eval()
        with torch.no_grad(), ap.probe(model, modalities=LAYOUT, reservoir_size=reservoir) as p:
            model(*eval_batch)
        result = p.result()
        history.add(result, epoch=epoch)
        return result

    record(0)
    for epoch in range(1, 11):
        model.train()
        order = torch.randperm(256 * 3, generator=generator) + 256  # train on the rest
        for start in range(0, order.numel(), 64):
            batch = order[start : start + 64]
            loss = nn.functional.cross_entropy(model(audio[batch], video[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        last = record(epoch, reservoir=256 if epoch == 10 else 0)
    return history, last, model, (audio[:256], video[:256], labels[:256])


def sweep(
    model: nn.Module,
    held: Held,
    layer: str,
    modalities: Mapping[str, int] | ap.ModalityLayout,
    levels: list[float],
) -> ap.analysis.NoiseSweep:
    """The noise sweep of a trained model on its held-out data (256 samples it never trained
    on): one modality corrupted at a time, the CLS query's shares."""
    audio, video, labels = held
    batches = [
        (audio[i : i + 64], video[i : i + 64], labels[i : i + 64]) for i in range(0, 256, 64)
    ]

    def prepare(
        batch: Held, modality: str | None, level: float, g: torch.Generator
    ) -> tuple[tuple[Tensor, Tensor], Tensor]:
        a, v, y = batch
        if modality == "audio":
            a = ap.corruption.corrupt(a, level, g)
        elif modality == "video":
            v = ap.corruption.corrupt(v, level, g)
        return (a, v), y

    return ap.noise_sweep(
        model,
        batches,
        prepare,
        modalities=modalities,
        layer=layer,
        corrupted=["audio", "video"],
        query="cls",
        levels=levels,
    )


def axes(height: float) -> Axes:
    _, ax = plt.subplots(figsize=(WIDTH, height), layout="constrained")
    created: Axes = ax
    return created


def save(ax: Axes, name: str) -> Path:
    path = OUT / f"{name}.png"
    figure = ax.get_figure(root=True)
    assert figure is not None
    figure.savefig(path, dpi=DPI)
    plt.close("all")
    return path


# --------------------------------------------------------------------------- concept pages

CONCEPTS = OUT / "concepts"
CONCEPT_DPI = 100
C_CLASSES, C_FEATURES, C_DIM, C_EPOCHS = 4, 8, 16, 6
C_LENGTHS = {"audio": 6, "video": 6}
CORRUPTED_FRACTION = 0.6  # the samples of the second model with one modality corrupted
# the colours `attnprobe.plot` gives the groups of the fusion layout (cls, audio, video)
MODALITY_COLORS = dict(zip(("audio", "video"), sns.color_palette("colorblind")[1:3], strict=True))


def concept_data(n: int, generator: torch.Generator, corrupt_fraction: float) -> Held:
    """Both modalities equally informative: a class prototype plus N(0, 1) noise per token.

    The prototypes are fixed (the same task for every call); ``corrupt_fraction`` of the samples
    get one modality (half of them audio, half video) corrupted at ``λ ~ U(0, 1)`` with
    `attnprobe.corruption.corrupt`."""
    protos = [
        torch.randn(C_CLASSES, C_FEATURES, generator=torch.Generator().manual_seed(100 + i))
        for i in range(2)
    ]
    labels = torch.randint(0, C_CLASSES, (n,), generator=generator)
    audio, video = (
        proto[labels].unsqueeze(1) + torch.randn(n, C_LENGTHS[m], C_FEATURES, generator=generator)
        for proto, m in zip(protos, ("audio", "video"), strict=True)
    )  # (N, L_m, F)
    if corrupt_fraction > 0:
        which = torch.rand(n, generator=generator)
        level = torch.rand(n, generator=generator)
        on_audio = which < corrupt_fraction / 2
        on_video = (which >= corrupt_fraction / 2) & (which < corrupt_fraction)
        audio = ap.corruption.corrupt(audio, torch.where(on_audio, level, 0.0), generator)
        video = ap.corruption.corrupt(video, torch.where(on_video, level, 0.0), generator)
    return audio, video, labels


def fusion_model() -> LateFusionTransformer:
    return LateFusionTransformer(
        {m: C_FEATURES for m in C_LENGTHS},
        C_LENGTHS,
        C_CLASSES,
        dim=C_DIM,
        depth=1,
        heads=2,
        dropout=0.0,
        encoder_dropout=0.0,
    )


@dataclass
class Trained:
    """A trained fusion model, its held-out data and what was recorded along the way."""

    model: LateFusionTransformer
    train_inputs: tuple[Tensor, Tensor]
    held_out: Held
    gaps: pd.DataFrame  # epoch, centroid_gap, air (fusion layer, held-out data)
    last: ap.ProbeResult  # after training, with a reservoir of keys


def train_fusion(corrupt_fraction: float) -> Trained:
    """Train the bundled late-fusion model; record the key gap on held-out data every epoch."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    audio, video, labels = concept_data(1024, generator, corrupt_fraction)
    held_out = concept_data(256, torch.Generator().manual_seed(5), 0.0)  # clean
    model = fusion_model()
    layout = model.fusion_layout()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rows = []

    def record(epoch: int) -> ap.ProbeResult:
        model.eval()
        with (
            torch.no_grad(),
            ap.probe(model, modalities=layout, layers="fusion", reservoir_size=256) as p,
        ):
            model(*held_out[:2])
        model.train()
        result = p.result()
        gap = ap.key_gap(result, "audio", "video", query="cls", metrics=["centroid_gap", "air"])
        rows.append({"epoch": epoch, **gap.to_frame().iloc[0][["centroid_gap", "air"]]})
        return result

    record(0)
    for epoch in range(1, C_EPOCHS + 1):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            logits = model(audio[batch], video[batch])
            assert isinstance(logits, Tensor)
            loss = nn.functional.cross_entropy(logits, labels[batch])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        last = record(epoch)
    return Trained(model, (audio, video), held_out, pd.DataFrame(rows), last)


def figure(columns: int, width: float, height: float) -> tuple[Figure, list[Axes]]:
    fig, grid = plt.subplots(1, columns, figsize=(width, height), layout="constrained")
    return fig, list(np.atleast_1d(grid))


def save_figure(fig: Figure, name: str) -> Path:
    path = CONCEPTS / f"{name}.png"
    fig.savefig(path, dpi=CONCEPT_DPI)
    plt.close(fig)
    return path


def layouts_figure() -> Path:
    """The label map of a batch: CLS, text, an ignored separator, image, padding."""
    spans = ap.ModalityLayout.from_spans(
        {"cls": slice(0, 1), "text": slice(1, 7), "image": slice(8, 16)}, length=16
    )  # position 7, the separator, is in no span: ignored
    labels = spans.labels(3, 16).clone()  # (B, L)
    labels[1, 5:7] = -1  # sample 1: four text tokens, two padded
    labels[2, 13:16] = -1  # sample 2: five image tokens, three padded
    batch = ap.ModalityLayout.from_labels(labels, spans.names).labels(3, 16)  # (B, L)
    fig, (ax,) = figure(1, 6.5, 2.3)
    palette = sns.color_palette("colorblind")
    colors = [(0.92, 0.92, 0.92), *palette[:3]]  # ignored, then cls, text, image
    ax.imshow(batch.numpy() + 1, cmap=ListedColormap(colors), vmin=0, vmax=3, aspect="equal")
    for (b, j), value in np.ndenumerate(batch.numpy()):
        ax.text(
            j,
            b,
            str(value),
            ha="center",
            va="center",
            fontsize=8,
            color="0.35" if value < 0 else "white",
        )
    ax.set_xticks(range(16))
    ax.set_yticks(range(3), [f"sample {b}" for b in range(3)])
    ax.tick_params(length=0, labelsize=8)
    ax.set_xlabel("token position j")
    ax.set_xticks(np.arange(-0.5, 16, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, 3, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title("labels[b, j]: group index, −1 = ignored (separator at 7, padding)", fontsize=10)
    names = ["ignored (−1)", *(f"{n} ({i})" for i, n in enumerate(spans.names))]
    handles = [Patch(color=c, label=n) for c, n in zip(colors, names, strict=True)]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, frameon=False, fontsize=8)
    return save_figure(fig, "layouts")


def attention_mass_figure() -> Path:
    """One sample's attention map, cut into group blocks, and the probe's mass table."""
    torch.manual_seed(0)
    layout = {"cls": 1, "audio": 5, "video": 8}
    mha = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    x = 2.5 * torch.randn(1, 14, 16)  # (B, L, d): one sample, scaled for a visible pattern
    with torch.no_grad(), ap.probe(mha, modalities=layout) as p:
        _, weights = mha(x, x, x, average_attn_weights=False)  # (B, H, L, L)
    bias = ap.modality_bias(p.result())
    table = bias.block(head=0)  # (query group, key group)
    # the table is the mean over each block's rows of the row's sum inside the block
    edges = np.cumsum([0, *layout.values()])
    by_hand = [
        [float(weights[0, 0, a:b, c:d].sum(-1).mean()) for c, d in itertools.pairwise(edges)]
        for a, b in itertools.pairwise(edges)
    ]
    assert np.allclose(table.to_numpy(), by_hand, atol=1e-6)

    fig, (left, right) = figure(2, 9.0, 3.9)
    image = left.imshow(weights[0, 0].numpy(), cmap="viridis", vmin=0.0, aspect="auto")
    fig.colorbar(image, ax=left, shrink=0.85, label="attention probability")
    for edge in edges[1:-1]:
        left.axhline(edge - 0.5, color="white", linewidth=1.5)
        left.axvline(edge - 0.5, color="white", linewidth=1.5)
    centres = (edges[:-1] + edges[1:] - 1) / 2
    left.set_xticks(centres, list(layout))
    left.set_yticks(centres, list(layout))
    left.tick_params(length=0)
    left.set_xlabel("key token j")
    left.set_ylabel("query token i")
    left.set_title("A[i, j], one sample, head 0", fontsize=10)
    plot.block_masses(table, ax=right)
    right.set_title(
        "mass[Q, K] from the probe\n(head 0: block row sums, averaged over rows)", fontsize=10
    )
    return save_figure(fig, "attention-mass")


def key_gap_figure(static: Trained, adaptive: Trained) -> Path:
    """The keys after training, and the centroid gap and AIR over training."""
    fig, (left, right) = figure(2, 10.0, 4.3)
    plot.key_distribution(static.last, layer="fusion", query="cls", ax=left, max_points=200)
    row = static.gaps.iloc[-1]
    left.set_title(
        f"Fusion keys after training (clean data)\n"
        f"1 − cos(μ_audio, μ_video) = {row['centroid_gap']:.2f}, AIR = {row['air']:+.2f}",
        fontsize=10,
    )
    legend = left.get_legend()  # outside to the right by default: move it below the axes
    assert legend is not None
    handles, texts = legend.legend_handles, [t.get_text() for t in legend.get_texts()]
    legend.remove()
    left.legend(
        handles,
        texts,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        ncols=2,
        fontsize=8,
        frameon=False,
    )
    for trained, style, name in ((static, "-", "clean data"), (adaptive, "--", "60 % corrupted")):
        gaps = trained.gaps
        right.plot(
            gaps["epoch"], gaps["centroid_gap"], "o" + style, color="0.2", label=f"key gap, {name}"
        )
        right.plot(
            gaps["epoch"],
            gaps["air"],
            "s" + style,
            color=sns.color_palette("colorblind")[3],
            label=f"AIR, {name}",
        )
    right.axhline(0.0, color="0.7", linewidth=0.8)
    right.set_xlabel("epoch (0 = initialisation)")
    right.set_ylabel("on the held-out data")
    right.set_title("Key gap 1 − cos(μ_a, μ_b) and AIR(audio, video)", fontsize=10)
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8)
    return save_figure(fig, "key-gap")


def adaptability_figure(static: Trained, adaptive: Trained) -> tuple[Path, pd.DataFrame]:
    """Share of the CLS attention on a corrupted modality against its noise level."""
    fig, axes_ = figure(2, 9.0, 3.6)
    scores = []
    for ax, trained, name in zip(
        axes_,
        (static, adaptive),
        ("trained on clean data", "trained with 60 % corrupted"),
        strict=True,
    ):
        noise = sweep(
            trained.model,
            trained.held_out,
            "fusion",
            trained.model.fusion_layout(),
            [0.0, 0.25, 0.5, 0.75, 1.0],
        )
        plot.share_vs_noise(noise, ax=ax)
        score = noise.adaptability().assign(model=name)
        scores.append(score)
        r = ", ".join(
            f"{m} {v:+.2f}" for m, v in zip(score["corrupted"], score["pearson_r"], strict=True)
        )
        ax.set_title(f"{name}\nPearson r (share, 1 − λ): {r}", fontsize=10)
        ax.set_xlabel("noise level λ (0 = clean)")
    axes_[1].sharey(axes_[0])
    return save_figure(fig, "adaptability"), pd.concat(scores, ignore_index=True)


def cls_shares(model: LateFusionTransformer, held_out: Held) -> tuple[dict[str, float], float]:
    """Share of the fusion CLS attention per modality and AIR(audio, video), on held-out data."""
    layout = model.fusion_layout()
    model.eval()
    with torch.no_grad(), ap.probe(model, modalities=layout, layers="fusion") as p:
        model(*held_out[:2])
    result = p.result()
    frame = ap.modality_bias(result, exclude=["cls"]).to_frame("layer")
    frame = frame[(frame["query_modality"] == "cls") & frame["share"].notna()]
    gap = ap.key_gap(result, "audio", "video", query="cls", metrics=["air"]).to_frame()
    return dict(zip(frame["key_modality"], frame["share"], strict=True)), float(gap["air"].iloc[0])


def rollingq_figure(static: Trained) -> tuple[Path, dict[str, float]]:
    """One RollingQ rotation of the clean-trained model's fusion query."""
    model = copy.deepcopy(static.model)
    layout = model.fusion_layout()
    audio, video = static.train_inputs
    batches = [(audio[i : i + 128], video[i : i + 128]) for i in range(0, len(audio), 128)]
    rq = ap.RollingQ(head_dim=C_DIM, modalities=("audio", "video")).attach(model, "fusion")
    before, air_before = cls_shares(model, static.held_out)
    stats = anchor_statistics(model, batches, modalities=layout, layer="fusion")
    plan = rq.plan(stats)
    step = rq.step(stats)
    assert step.rotated
    after_stats = anchor_statistics(model, batches, modalities=layout, layer="fusion")
    after, air_after = cls_shares(model, static.held_out)

    iq = after_stats.query_groups.index("cls")
    q_before = plan.query_mean[0].numpy()  # (D,)
    q_after = after_stats.query_mean[0, iq].double().numpy()  # (D,)
    mu = plan.key_means[0].numpy()  # (M, D)
    unit = mu / np.linalg.norm(mu, axis=1, keepdims=True)  # (M, D)
    e1 = unit.sum(0) / np.linalg.norm(unit.sum(0))  # the bisector: the anchor's direction
    e2 = (unit[0] - unit[1]) / np.linalg.norm(unit[0] - unit[1])

    def degrees(u: np.ndarray, v: np.ndarray) -> float:
        cos = float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))
        return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))

    def plane(v: np.ndarray) -> tuple[float, float]:
        v = v / np.linalg.norm(v)
        return float(v @ e1), float(v @ e2)

    fig, (left, right) = figure(2, 9.5, 4.2)
    circle = np.linspace(0, 2 * np.pi, 200)
    left.plot(np.cos(circle), np.sin(circle), color="0.85", linewidth=0.8)
    # (vector, colour, label, where the label goes along the arrow, text alignment)
    arrows = [
        (unit[0], MODALITY_COLORS["audio"], r"$\hat\mu_{audio}$", 1.08, "left"),
        (unit[1], MODALITY_COLORS["video"], r"$\hat\mu_{video}$", 1.08, "left"),
        (q_before, (0.5, 0.5, 0.5), r"$\bar{q}$ before (projected)", 1.1, "center"),
        (q_after, (0.0, 0.0, 0.0), r"$R\bar{q}$ after = anchor $q_b$", 0.62, "center"),
    ]
    for vector, color, label, where, align in arrows:
        x, y = plane(vector)
        dashed = label.startswith(r"$\bar")
        left.annotate(
            "",
            xy=(x, y),
            xytext=(0, 0),
            arrowprops={
                "arrowstyle": "-|>",
                "color": color,
                "linewidth": 1.8,
                "linestyle": "--" if dashed else "-",
            },
        )
        along = where < 1  # a label along the arrow sits below it
        left.text(
            where * x,
            where * y - (0.08 if along else 0.0),
            label,
            color=color,
            fontsize=9,
            ha=align,
            va="top" if along or y < 0 else "bottom",
        )
    left.set_xlim(-0.45, 1.45)
    left.set_ylim(-1.2, 1.25)
    left.set_aspect("equal")
    left.set_xticks([])
    left.set_yticks([])
    left.set_xlabel(
        f"before: {degrees(q_before, mu[0]):.0f}° to audio, {degrees(q_before, mu[1]):.0f}° "
        f"to video\nafter: {degrees(q_after, mu[0]):.0f}° to audio, "
        f"{degrees(q_after, mu[1]):.0f}° to video",
        fontsize=8.5,
    )
    left.set_title(f"The plane of the two mean keys (rotation {step.angle[0]:.0f}°)", fontsize=10)

    names = list(before)
    x = np.arange(len(names))
    for offset, shares, label, shade in (
        (-0.2, before, f"before (AIR {air_before:+.2f})", 0.55),
        (0.2, after, f"after (AIR {air_after:+.2f})", 1.0),
    ):
        values = [shares[n] for n in names]
        colors = [tuple(shade * c + (1 - shade) for c in MODALITY_COLORS[n]) for n in names]
        bars = right.bar(
            x + offset,
            values,
            width=0.38,
            color=colors,
            edgecolor="black",
            linewidth=0.6,
            label=label,
        )
        right.bar_label(bars, fmt="%.2f", fontsize=8)
    right.axhline(0.5, color="0.5", linestyle="--", linewidth=0.9, label="fair share (7 of 14)")
    right.set_xticks(x, names)
    right.set_ylim(0, 0.85)
    right.set_ylabel("share of the CLS attention (held-out)")
    right.set_title("Before and after the rotation", fontsize=10)
    right.legend(fontsize=8, loc="upper right")
    numbers = {
        "air_before": air_before,
        "air_after": air_after,
        "angle": step.angle[0],
        **{f"share_{n}_before": before[n] for n in names},
        **{f"share_{n}_after": after[n] for n in names},
    }
    return save_figure(fig, "rollingq"), numbers


def concept_figures() -> list[Path]:
    CONCEPTS.mkdir(parents=True, exist_ok=True)
    paths = [layouts_figure(), attention_mass_figure()]
    static, adaptive = train_fusion(0.0), train_fusion(CORRUPTED_FRACTION)
    paths.append(key_gap_figure(static, adaptive))
    path, scores = adaptability_figure(static, adaptive)
    paths.append(path)
    path, numbers = rollingq_figure(static)
    paths.append(path)
    with pd.option_context("display.width", 120, "display.precision", 3):
        print("key gap and AIR per epoch (held-out fusion keys)")
        print(static.gaps.assign(model="clean").to_string(index=False))
        print(adaptive.gaps.assign(model="corrupted").to_string(index=False))
        print(scores.to_string(index=False))
        print({k: round(v, 3) for k, v in numbers.items()})
    return paths


def guide_figures() -> list[Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    history, result, model, held = train()
    bias = ap.modality_bias(result, exclude=["cls"])
    first_layer, last_layer = result.layer_names[0], result.layer_names[-1]
    noise = sweep(model, held, last_layer, LAYOUT, [float(x) for x in np.linspace(0.0, 1.0, 6)])
    return [
        save(plot.attention_share(history, query="cls", ax=axes(3.6)), "attention_share"),
        save(
            plot.bias_heatmap(
                bias, metric="normalised_mass", query="cls", key="audio", ax=axes(3.0)
            ),
            "bias_heatmap",
        ),
        save(plot.block_masses(bias, layer=last_layer, ax=axes(3.0)), "block_masses"),
        save(
            plot.key_distribution(result, layer=first_layer, head=2, query="cls", ax=axes(4.2)),
            "key_distribution",
        ),
        save(plot.share_vs_noise(noise, ax=axes(3.4)), "share_vs_noise"),
        save(plot.accuracy_vs_noise(noise, ax=axes(3.4)), "accuracy_vs_noise"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "which",
        nargs="?",
        choices=("all", "guides", "concepts"),
        default="all",
        help="which set of figures to draw (default: all)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="figure folder (default: docs/figures)"
    )
    args = parser.parse_args()
    which = args.which
    if args.out is not None:  # the test suite draws into a temporary folder
        global OUT, CONCEPTS
        OUT, CONCEPTS = args.out, args.out / "concepts"
    torch.set_num_threads(1)  # the same bits on any machine, and no thread contention
    paths = []
    if which in ("all", "guides"):
        paths += guide_figures()
    if which in ("all", "concepts"):
        paths += concept_figures()
    for path in paths:
        print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


if __name__ == "__main__":
    main()
