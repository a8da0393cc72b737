"""Draw the figures of the documentation: one PNG per function of `attnprobe.plot`.

Run from the repository root: ``python docs/scripts/make_figures.py`` (CPU, about ten seconds).
It trains a tiny two-layer fusion Transformer on seeded synthetic data in which audio is the
informative modality and video a noisy one, records its attention with a probe every epoch,
runs ``attnprobe.noise_sweep`` on held-out data, and writes ``docs/figures/<function>.png``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a script that only writes files

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from torch import Tensor, nn

import attnprobe as ap
from attnprobe import plot

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


def sweep(model: nn.Module, layer: str, held: Held) -> ap.NoiseSweep:
    """The noise sweep of the trained model on its held-out data (the samples `train` never
    trained on): one modality corrupted at a time."""
    audio, video, labels = held
    batches = [
        (audio[i : i + 64], video[i : i + 64], labels[i : i + 64]) for i in range(0, 256, 64)
    ]

    def prepare(
        batch: tuple[Tensor, Tensor, Tensor], modality: str | None, level: float, g: torch.Generator
    ) -> tuple[tuple[Tensor, Tensor], Tensor]:
        a, v, y = batch
        if modality == "audio":
            a = ap.corrupt(a, level, g)
        elif modality == "video":
            v = ap.corrupt(v, level, g)
        return (a, v), y

    return ap.noise_sweep(
        model,
        batches,
        prepare,
        modalities=LAYOUT,
        layer=layer,
        corrupted=["audio", "video"],
        query="cls",
        levels=[float(x) for x in np.linspace(0.0, 1.0, 6)],
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


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    history, result, model, held = train()
    bias = ap.modality_bias(result, exclude=["cls"])
    first_layer, last_layer = result.names[0], result.names[-1]
    noise = sweep(model, last_layer, held)
    paths = [
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
    for path in paths:
        print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


if __name__ == "__main__":
    main()
