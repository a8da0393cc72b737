"""Figures of a run folder (`attnprobe.report`, `attnprobe.example.report`), drawn from the
run files only: the training wrapper's ``metrics.csv`` and, where an example run wrote them,
``sweep.csv`` and ``keys_*.pt``.

A run is ``(method, seed, folder)``; ``method`` is the label shown. Every figure shows the mean
over seeds with a band or bars of ± one standard deviation (seaborn ``errorbar="sd"``); the
methods keep one colour throughout, in the order given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from attnprobe import plot
from attnprobe._runs import read_csv, read_metrics
from attnprobe.results import ProbeResult

__all__ = ["FIGURES", "Run", "draw"]

Run = tuple[str, int, Path]
"""``(method label, seed, run folder)``."""

FIGURES = (
    "share_over_training.png",
    "air_key_gap.png",
    "accuracy_over_training.png",
    "key_distribution.png",
    "share_vs_noise.png",
    "accuracy_vs_noise.png",
)
_KEY_FILES = (
    ("keys_before.pt", "before its first rotation"),
    ("keys_after.pt", "just after it"),
    ("keys_final.pt", "end of training"),
)


class _Style:
    """The methods in their order, and one colour each."""

    def __init__(self, order: Sequence[str]) -> None:
        self.order = list(order)
        palette = sns.color_palette("colorblind", max(len(self.order), 1))
        self.colors = {m: palette[i % len(palette)] for i, m in enumerate(self.order)}

    def hue(self, frame: pd.DataFrame) -> list[str]:
        """The methods present in ``frame``, in the given order."""
        present = set(frame["method"])
        return [m for m in self.order if m in present]


def _save(fig: Figure, path: Path) -> None:
    for ax in fig.axes:
        if ax.get_xlabel() == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _stack(found: Sequence[Run], name: str) -> pd.DataFrame:
    """One file of every run, with ``method`` (its label) and ``seed`` columns."""
    frames = []
    for method, seed, folder in found:
        if (folder / name).exists():
            read = read_metrics if name == "metrics.csv" else read_csv
            frame = read(folder / name)
            labels = pd.DataFrame({"method": method, "seed": seed}, index=frame.index)
            frames.append(pd.concat([frame, labels], axis=1))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _modalities(metrics: pd.DataFrame) -> list[str]:
    return [c[len("share_") :] for c in metrics.columns if c.startswith("share_")]


def _share_over_training(metrics: pd.DataFrame, path: Path, style: _Style) -> None:
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
        style_order=style.hue(long),
        errorbar="sd",
        ax=ax,
        palette=sns.color_palette("colorblind", len(names)),
    )
    ax.set_ylabel("CLS attention share (training epoch)")
    ax.set_title("Fusion CLS attention share over training (mean ± sd over seeds)")
    ax.legend(fontsize=8, ncols=2)
    _save(fig, path)


def _air_key_gap(metrics: pd.DataFrame, path: Path, style: _Style) -> None:
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
            hue_order=style.hue(frame),
            errorbar="sd",
            ax=ax,
            palette=style.colors,
        )
        ax.axhline(0.0, color="0.7", linewidth=0.8)
        _mark_rotations(metrics, ax, style)
        ax.set_title(column)
    fig.suptitle("Attention imbalance ratio and key-distribution gap (training statistics)")
    _save(fig, path)


def _mark_rotations(metrics: pd.DataFrame, ax: Axes, style: _Style) -> None:
    """A dotted line in the method's colour half-way after each epoch that ended with a
    RollingQ rotation (the next epoch trains with the rotated query)."""
    if "rollingq_rotated" not in metrics:
        return
    rotated = metrics[metrics["rollingq_rotated"].astype(str) == "True"]
    for method, epoch in rotated[["method", "epoch"]].drop_duplicates().itertuples(index=False):
        color = style.colors.get(str(method), "0.5")
        ax.axvline(float(epoch) + 0.5, color=color, linestyle=":", linewidth=1.2, alpha=0.8)
    if not rotated.empty:
        ax.text(
            0.99,
            0.02,
            "dotted: RollingQ rotation",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=8,
            color="0.4",
        )


def _accuracy_over_training(metrics: pd.DataFrame, path: Path, style: _Style) -> None:
    rows = metrics.dropna(subset=["eval_accuracy"])
    fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    sns.lineplot(
        rows,
        x="epoch",
        y="eval_accuracy",
        hue="method",
        hue_order=style.hue(rows),
        errorbar="sd",
        ax=ax,
        palette=style.colors,
    )
    ax.set_ylabel("validation accuracy (clean)")
    ax.set_title("Validation accuracy over training (mean ± sd over seeds)")
    _save(fig, path)


def _key_distribution(found: Sequence[Run], path: Path, style: _Style) -> bool:
    """The first seed's fusion keys and CLS query from the ``keys_*.pt`` probe results: each
    RollingQ run just before and just after its first rotation, then every run at the end of
    training (runs that rotated first)."""
    seeds = [s for _, s, f in found if any((f / name).exists() for name, _ in _KEY_FILES)]
    if not seeds:
        return False
    seed = min(seeds)
    runs = sorted(
        ((m, f) for m, s, f in found if s == seed),
        key=lambda run: (not (run[1] / _KEY_FILES[0][0]).exists(), style.order.index(run[0])),
    )
    present = [
        (folder / name, f"{method}\n{when}")
        for method, folder in runs
        for name, when in _KEY_FILES
        if (folder / name).exists()
    ]
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


def _by_corrupted(
    frame: pd.DataFrame, y: str, ylabel: str, title: str, path: Path, style: _Style
) -> None:
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
            hue_order=style.hue(frame),
            errorbar="sd",
            marker="o",
            ax=ax,
            palette=style.colors,
        )
        ax.set_title(f"{m} corrupted")
        ax.set_xlabel("noise level λ")
        ax.set_ylabel(ylabel.format(m=m))
    fig.suptitle(title)
    _save(fig, path)


def _share_vs_noise(sweep: pd.DataFrame, path: Path, style: _Style) -> bool:
    if "key_modality" not in sweep:
        return False
    own = sweep[sweep["key_modality"] == sweep["corrupted"]]
    title = "Does attention leave a corrupted modality? (test split, mean ± sd over seeds)"
    _by_corrupted(own, "share", "CLS share of {m}", title, path, style)
    return True


def _accuracy_vs_noise(sweep: pd.DataFrame, path: Path, style: _Style) -> None:
    rows = sweep.drop_duplicates(["method", "seed", "corrupted", "level"])
    title = "Accuracy with one modality corrupted (test split, mean ± sd over seeds)"
    _by_corrupted(rows, "accuracy", "test accuracy", title, path, style)


def draw(
    out: Path, found: Sequence[Run], order: Sequence[str], *, progress: bool = False
) -> list[Path]:
    """Draw every figure the run files allow into ``out`` (created); returns their paths.

    Args:
        out: the figure folder.
        found: the runs, ``(method label, seed, folder)``.
        order: the method labels in the order of legends and colours.
        progress: a progress bar over the figures (on a terminal).
    """
    style = _Style(order)
    metrics = _stack(found, "metrics.csv")
    sweep = _stack(found, "sweep.csv")
    shares = [c for c in metrics.columns if c.startswith("share_")]
    attention = metrics.dropna(subset=shares, how="all") if shares else metrics.iloc[:0]
    jobs: list[tuple[str, Callable[[Path], object]]] = []
    if not attention.empty:
        jobs.append((FIGURES[0], lambda p: _share_over_training(attention, p, style)))
        if "air" in attention or any(c.startswith("air_") for c in attention.columns):
            jobs.append((FIGURES[1], lambda p: _air_key_gap(attention, p, style)))
    if "eval_accuracy" in metrics and metrics["eval_accuracy"].notna().any():
        jobs.append((FIGURES[2], lambda p: _accuracy_over_training(metrics, p, style)))
    jobs.append((FIGURES[3], lambda p: _key_distribution(found, p, style)))
    if not sweep.empty:
        jobs.append((FIGURES[4], lambda p: _share_vs_noise(sweep, p, style)))
        jobs.append((FIGURES[5], lambda p: _accuracy_vs_noise(sweep, p, style)))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    steps: Iterable[tuple[str, Callable[[Path], object]]] = jobs
    if progress:
        from tqdm.auto import tqdm  # only when asked: in Jupyter it may warn about ipywidgets

        steps = tqdm(jobs, desc="figures", unit="fig", disable=None)
    with sns.axes_style("whitegrid"):
        for name, job in steps:
            if job(out / name) is not False:
                written.append(out / name)
    return written
