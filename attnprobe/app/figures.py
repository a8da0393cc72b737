"""Figures of a run folder (`attnprobe.app.report`), drawn from the run files only.

`draw` draws the training figures from the training wrapper's ``metrics.csv`` files
(`TRAINING_FIGURES`: attention share, AIR and key gap, validation accuracy over training), then
any figures a caller adds (the RollingQ example adds its noise sweep and key distributions,
`attnprobe.app.example`); `Style`, `facets` and `save` are the pieces such figures share.

A run is ``(method, seed, folder)``; ``method`` is the label shown. Every figure shows the mean
over seeds with a band or bars of ± one standard deviation (seaborn ``errorbar="sd"``); the
methods keep one colour throughout, in the order given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from attnprobe.app.runs import METRICS, Run, air_columns, key_gap_columns, stack

__all__ = ["TRAINING_FIGURES", "Extra", "Job", "Style", "draw", "facets", "one_legend", "save"]

TRAINING_FIGURES = (
    "share_over_training.png",
    "air_key_gap.png",
    "accuracy_over_training.png",
)
"""The figures `draw` makes from ``metrics.csv`` files, in this order (each where the runs
record what it shows)."""

Job = tuple[str, Callable[[Path], object]]
"""A figure: its file name, and a function that draws it into a path (returning ``False``
when the run files do not allow it: nothing is written)."""


class Style:
    """The methods in their order, and one colour each.

    Args:
        order: the method labels in the order of legends and colours.
    """

    def __init__(self, order: Sequence[str]) -> None:
        self.order = list(order)
        palette = sns.color_palette("colorblind", max(len(self.order), 1))
        self.colors = {m: palette[i % len(palette)] for i, m in enumerate(self.order)}

    def hue(self, frame: pd.DataFrame) -> list[str]:
        """The methods present in ``frame``, in the given order."""
        present = set(frame["method"])
        return [m for m in self.order if m in present]

    def lines(self, frame: pd.DataFrame, x: str, y: str, ax: Axes, **options: Any) -> None:
        """``y`` against ``x``: one line per method in its colour, mean ± sd over seeds
        (``options`` go to `seaborn.lineplot`)."""
        sns.lineplot(
            frame,
            x=x,
            y=y,
            hue="method",
            hue_order=self.hue(frame),
            errorbar="sd",
            ax=ax,
            palette=self.colors,
            **options,
        )


Extra = Callable[[Sequence[Run], Style], list[Job]]
"""Figures a caller adds to `draw`: from the runs and the style, the jobs that draw them."""


def save(fig: Figure, path: Path) -> None:
    """Write ``fig`` to ``path`` (integer ticks on ``epoch`` axes) and close it."""
    for ax in fig.axes:
        if ax.get_xlabel() == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def one_legend(
    fig: Figure,
    axes: Sequence[Axes],
    extra: Sequence[tuple[Any, str]] = (),
    *,
    right: bool = False,
) -> None:
    """The first panel's legend entries (and ``extra`` ``(handle, label)`` pairs) as one legend
    below the panels (``right``: to their right, one column), off the data; the panels' own
    legends removed."""
    handles, labels = axes[0].get_legend_handles_labels()
    for handle, label in extra:
        handles.append(handle)
        labels.append(label)
    for ax in axes:
        legend = ax.get_legend()
        if legend is not None:
            legend.remove()
    if handles and right:
        fig.legend(handles, labels, loc="outside right upper", frameon=False, fontsize=9)
    elif handles:
        ncols = min(len(handles), 4)
        fig.legend(handles, labels, loc="outside lower center", ncols=ncols, frameon=False)


def facets(n: int, size: tuple[float, float] = (4.6, 3.6)) -> tuple[Figure, list[Axes]]:
    """``n`` axes of ``size`` inches each, in rows of at most three (the unused ones hidden)."""
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(size[0] * cols, size[1] * rows), layout="constrained", squeeze=False
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)[:n]


def _modalities(metrics: pd.DataFrame) -> list[str]:
    return [c[len("share_") :] for c in metrics.columns if c.startswith("share_")]


def _share_over_training(
    metrics: pd.DataFrame, path: Path, style: Style, fair: Mapping[str, float]
) -> None:
    """CLS attention share of each modality per epoch (training statistics), with each
    modality's fair share by token count (``fair``, where known) as a dashed line."""
    names = _modalities(metrics)
    long = metrics.melt(
        id_vars=["method", "seed", "epoch"],
        value_vars=[f"share_{m}" for m in names],
        var_name="modality",
        value_name="share",
    )
    long["modality"] = long["modality"].str[len("share_") :]
    fig, ax = plt.subplots(figsize=(8.5, 4.2), layout="constrained")
    palette = sns.color_palette("colorblind", len(names))
    sns.lineplot(
        long,
        x="epoch",
        y="share",
        hue="modality",
        style="method",
        style_order=style.hue(long),
        errorbar="sd",
        ax=ax,
        palette=palette,
    )
    fair_line = (0, (2, 3))
    for m, color in zip(names, palette, strict=True):
        if m in fair:
            ax.axhline(fair[m], color=color, linestyle=fair_line, linewidth=1.0, alpha=0.8)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("CLS attention share (training epoch)")
    ax.set_title("Fusion CLS attention share over training (mean ± sd over seeds)")
    extra = []
    if fair:
        line = Line2D([], [], color="0.4", linestyle=fair_line, linewidth=1.0)
        extra.append((line, "fair share by token\ncount (modality colour)"))
    one_legend(fig, [ax], extra, right=True)
    save(fig, path)


def _air_key_gap(metrics: pd.DataFrame, path: Path, style: Style) -> None:
    """AIR and key gap per epoch (mean |AIR| and mean gap over pairs for > 2 modalities)."""
    air = air_columns(metrics)
    frame = metrics[["method", "seed", "epoch"]].copy()
    two = air == ["air"]
    first = next(iter(_modalities(metrics)), "a")
    label = f"AIR (> 0: {first} favoured)" if two else "mean |AIR| over modality pairs"
    frame[label] = metrics["air"] if two else metrics[air].abs().mean(axis=1)
    frame["key gap 1 − cos(μ_a, μ_b)"] = metrics[key_gap_columns(metrics)].mean(axis=1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for ax, column in zip(axes, frame.columns[3:], strict=True):
        style.lines(frame, "epoch", column, ax)
        ax.axhline(0.0, color="0.7", linewidth=0.8)
        _mark_rotations(metrics, ax, style)
        ax.set_title(column)
    fig.suptitle("Attention imbalance rate and key-distribution gap (training statistics)")
    one_legend(fig, list(axes))
    save(fig, path)


def _mark_rotations(metrics: pd.DataFrame, ax: Axes, style: Style) -> None:
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


def _accuracy_over_training(metrics: pd.DataFrame, path: Path, style: Style) -> None:
    rows = metrics.dropna(subset=["eval_accuracy"])
    fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
    style.lines(rows, "epoch", "eval_accuracy", ax)
    ax.set_ylabel("validation accuracy (clean)")
    ax.set_title("Validation accuracy over training (mean ± sd over seeds)")
    one_legend(fig, [ax])
    save(fig, path)


def _fair_shares(found: Sequence[Run]) -> dict[str, float]:
    """Each key modality's share of the keys by token count (``token_share`` in the first
    rows of the first ``attention.csv`` among the runs; empty where none wrote one)."""
    for _, _, folder in found:
        if (folder / "attention.csv").exists():
            head = pd.read_csv(folder / "attention.csv", nrows=256)
            if "token_share" not in head:
                return {}
            known = head.dropna(subset=["token_share"])
            shares = known.groupby("key_modality", sort=False)["token_share"].first()
            return {str(m): float(v) for m, v in shares.items()}
    return {}


def _training_jobs(found: Sequence[Run], style: Style) -> list[Job]:
    """The `TRAINING_FIGURES` that the runs' ``metrics.csv`` files allow."""
    metrics = stack(found, METRICS)
    shares = [c for c in metrics.columns if c.startswith("share_")]
    attention = metrics.dropna(subset=shares, how="all") if shares else metrics.iloc[:0]
    jobs: list[Job] = []
    if not attention.empty:
        fair = _fair_shares(found)
        jobs.append(
            (TRAINING_FIGURES[0], lambda p: _share_over_training(attention, p, style, fair))
        )
        if air_columns(attention):
            jobs.append((TRAINING_FIGURES[1], lambda p: _air_key_gap(attention, p, style)))
    if "eval_accuracy" in metrics and metrics["eval_accuracy"].notna().any():
        jobs.append((TRAINING_FIGURES[2], lambda p: _accuracy_over_training(metrics, p, style)))
    return jobs


def draw(
    out: Path,
    found: Sequence[Run],
    order: Sequence[str],
    *,
    extra: Extra | None = None,
    progress: bool = False,
) -> list[Path]:
    """Draw every figure the run files allow into ``out`` (created); returns their paths.

    Args:
        out: the figure folder.
        found: the runs, ``(method label, seed, folder)``.
        order: the method labels in the order of legends and colours.
        extra: figures drawn after the `TRAINING_FIGURES` (`Extra`).
        progress: a progress bar over the figures (on a terminal).
    """
    style = Style(order)
    jobs = _training_jobs(found, style)
    if extra is not None:
        jobs += extra(found, style)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    steps: Iterable[Job] = jobs
    if progress:
        from tqdm.auto import tqdm  # only when asked: in Jupyter it may warn about ipywidgets

        steps = tqdm(jobs, desc="figures", unit="fig", disable=None)
    with sns.axes_style("whitegrid"):
        for name, job in steps:
            if job(out / name) is not False:
                written.append(out / name)
    return written
