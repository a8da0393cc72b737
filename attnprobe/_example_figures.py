"""Figures of the RollingQ example (`attnprobe.example.report`), drawn from the run files only.

Every figure shows the mean over seeds with a band or bars of ± one standard deviation
(seaborn ``errorbar="sd"``); the methods keep one colour throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from attnprobe import plot
from attnprobe.example import _LABELS
from attnprobe.results import ProbeResult

__all__ = ["FIGURES", "draw"]

FIGURES = (
    "share_over_training.png",
    "air_key_gap.png",
    "accuracy_over_training.png",
    "key_distribution.png",
    "share_vs_noise.png",
    "accuracy_vs_noise.png",
)
_ORDER = ("vanilla", "rollingq", "rollingq_gated", "concat")


def _colors() -> dict[str, tuple[float, float, float]]:
    palette = sns.color_palette("colorblind", len(_ORDER))
    return {_LABELS[m]: palette[i] for i, m in enumerate(_ORDER)}


def _hue(frame: pd.DataFrame) -> list[str]:
    """The methods present, in the fixed order (vanilla, RollingQ, concat)."""
    present = set(frame["method"])
    return [_LABELS[m] for m in _ORDER if _LABELS[m] in present]


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _stack(found: Sequence[tuple[str, int, Path]], name: str) -> pd.DataFrame:
    """One file of every run, with ``method`` (its label) and ``seed`` columns."""
    frames = []
    for method, seed, folder in found:
        if (folder / name).exists():
            frame = pd.read_csv(folder / name)
            labels = pd.DataFrame({"method": _LABELS[method], "seed": seed}, index=frame.index)
            frames.append(pd.concat([frame, labels], axis=1))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _modalities(metrics: pd.DataFrame) -> list[str]:
    return [c[len("share_") :] for c in metrics.columns if c.startswith("share_")]


def _share_over_training(metrics: pd.DataFrame, path: Path) -> None:
    """CLS attention share of each modality per epoch (training statistics)."""
    names = _modalities(metrics)
    long = metrics.melt(
        id_vars=["method", "seed", "epoch"],
        value_vars=[f"share_{m}" for m in names],
        var_name="modality",
        value_name="share",
    )
    long["modality"] = long["modality"].str[len("share_") :]
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    sns.lineplot(
        long,
        x="epoch",
        y="share",
        hue="modality",
        style="method",
        style_order=_hue(long),
        errorbar="sd",
        ax=ax,
        palette=sns.color_palette("colorblind", len(names)),
    )
    ax.set_ylabel("CLS attention share (training epoch)")
    ax.set_title("Which modality the fusion CLS listens to, over training (mean ± sd over seeds)")
    ax.legend(fontsize=8, ncols=2)
    _save(fig, path)


def _air_key_gap(metrics: pd.DataFrame, path: Path) -> None:
    """AIR and key gap per epoch (mean |AIR| and mean gap over pairs for > 2 modalities)."""
    air = [c for c in metrics.columns if c == "air" or c.startswith("air_")]
    gap = [c for c in metrics.columns if c == "key_gap" or c.startswith("key_gap_")]
    frame = metrics[["method", "seed", "epoch"]].copy()
    two = air == ["air"]
    frame["AIR" if two else "mean |AIR| over pairs"] = (
        metrics["air"] if two else metrics[air].abs().mean(axis=1)
    )
    frame["key gap 1 − cos(μ_a, μ_b)"] = metrics[gap].mean(axis=1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for ax, column in zip(axes, frame.columns[3:], strict=True):
        sns.lineplot(
            frame,
            x="epoch",
            y=column,
            hue="method",
            hue_order=_hue(frame),
            errorbar="sd",
            ax=ax,
            palette=_colors(),
        )
        ax.axhline(0.0, color="0.7", linewidth=0.8)
        ax.set_title(column)
    fig.suptitle("Attention imbalance ratio and key-distribution gap (training statistics)")
    _save(fig, path)


def _accuracy_over_training(metrics: pd.DataFrame, path: Path) -> None:
    rows = metrics.dropna(subset=["eval_accuracy"])
    fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    sns.lineplot(
        rows,
        x="epoch",
        y="eval_accuracy",
        hue="method",
        hue_order=_hue(rows),
        errorbar="sd",
        ax=ax,
        palette=_colors(),
    )
    ax.set_ylabel("validation accuracy (clean)")
    ax.set_title("Validation accuracy over training (mean ± sd over seeds)")
    _save(fig, path)


def _key_distribution(found: Sequence[tuple[str, int, Path]], path: Path) -> bool:
    """The first seed's fusion keys and CLS query: each RollingQ run just before and just
    after its first rotation, and every attention model at the end of training."""
    folders = {(m, s): f for m, s, f in found}
    seed = min((s for m, s, _ in found if m != "concat"), default=None)
    if seed is None:
        return False
    panels = [
        ("rollingq", "keys_before.pt", "before its rotation"),
        ("rollingq", "keys_after.pt", "just after it"),
        ("rollingq", "keys_final.pt", "end of training"),
        ("rollingq_gated", "keys_before.pt", "before its first rotation"),
        ("rollingq_gated", "keys_after.pt", "just after it"),
        ("rollingq_gated", "keys_final.pt", "end of training"),
        ("vanilla", "keys_final.pt", "end of training"),
    ]
    present = [
        (folders[(m, seed)] / name, f"{_LABELS[m]}\n{when}")
        for m, name, when in panels
        if (m, seed) in folders and (folders[(m, seed)] / name).exists()
    ]
    if not present:
        return False
    fig, axes = _facets(len(present), size=(5.4, 5.0))
    for ax, (file, title) in zip(axes, present, strict=True):
        plot.key_distribution(ProbeResult.load(file), query="cls", ax=ax, max_points=200)
        ax.set_title(f"{title}, seed {seed}", fontsize=10)
    fig.suptitle("Fusion-layer keys per modality and the CLS query direction")
    _save(fig, path)
    return True


def _facets(n: int, size: tuple[float, float] = (4.6, 3.6)) -> tuple[Figure, list[Axes]]:
    """``n`` axes in rows of at most three (the unused ones hidden)."""
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(size[0] * cols, size[1] * rows), layout="constrained", squeeze=False
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)[:n]


def _by_corrupted(frame: pd.DataFrame, y: str, ylabel: str, title: str, path: Path) -> None:
    """One panel per corrupted modality: ``y`` against the noise level, one line per method
    (``ylabel`` may name the modality as ``{m}``)."""
    names = list(dict.fromkeys(frame["corrupted"]))
    fig, axes = _facets(len(names))
    for ax, m in zip(axes, names, strict=True):
        sns.lineplot(
            frame[frame["corrupted"] == m],
            x="level",
            y=y,
            hue="method",
            hue_order=_hue(frame),
            errorbar="sd",
            marker="o",
            ax=ax,
            palette=_colors(),
        )
        ax.set_title(f"{m} corrupted")
        ax.set_xlabel("noise level λ")
        ax.set_ylabel(ylabel.format(m=m))
    fig.suptitle(title)
    _save(fig, path)


def _share_vs_noise(sweep: pd.DataFrame, path: Path) -> bool:
    if "key_modality" not in sweep:
        return False
    own = sweep[sweep["key_modality"] == sweep["corrupted"]]
    title = "Does attention leave a corrupted modality? (test split, mean ± sd over seeds)"
    _by_corrupted(own, "share", "CLS share of {m}", title, path)
    return True


def _accuracy_vs_noise(sweep: pd.DataFrame, path: Path) -> None:
    rows = sweep.drop_duplicates(["method", "seed", "corrupted", "level"])
    title = "Accuracy with one modality corrupted (test split, mean ± sd over seeds)"
    _by_corrupted(rows, "accuracy", "test accuracy", title, path)


def draw(run_dir: Path, found: Sequence[tuple[str, int, Path]]) -> list[Path]:
    """Draw every figure the run files allow into ``run_dir/figures``; returns their paths."""
    out = run_dir / "figures"
    out.mkdir(exist_ok=True)
    metrics = _stack(found, "metrics.csv")
    sweep = _stack(found, "sweep.csv")
    attention = metrics[metrics["method"] != _LABELS["concat"]]
    written = []
    with sns.axes_style("whitegrid"):
        if not attention.empty and _modalities(attention):
            _share_over_training(attention, out / FIGURES[0])
            _air_key_gap(attention, out / FIGURES[1])
            written += [out / FIGURES[0], out / FIGURES[1]]
        if "eval_accuracy" in metrics:
            _accuracy_over_training(metrics, out / FIGURES[2])
            written.append(out / FIGURES[2])
        if _key_distribution(found, out / FIGURES[3]):
            written.append(out / FIGURES[3])
        if not sweep.empty:
            if _share_vs_noise(
                sweep.dropna(subset=["key_modality"]) if "key_modality" in sweep else sweep,
                out / FIGURES[4],
            ):
                written.append(out / FIGURES[4])
            _accuracy_vs_noise(sweep, out / FIGURES[5])
            written.append(out / FIGURES[5])
    return written
