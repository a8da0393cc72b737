"""Figures of attention bias, key distributions and noise sweeps (matplotlib + seaborn).

Every function takes a result object or its tidy DataFrame, draws on ``ax`` (a new figure with
constrained layout when ``ax`` is None) and returns the `matplotlib.axes.Axes`. Nothing here
calls ``plt.show()``, changes matplotlib's global style or picks a backend: in a notebook the
figure shows itself, in a script call ``ax.figure.savefig(...)``. Colours come from seaborn's
colour-blind-safe ``"colorblind"`` palette; heatmaps use ``viridis`` (sequential) or ``vlag``
(diverging around the fair value).

``import attnprobe`` does not import this module (nor matplotlib): use ``attnprobe.plot`` or
``from attnprobe import plot``.

The key-distribution view follows RollingQ (Ni et al., ICML 2025, arXiv 2506.11465): the query
direction and the keys of each modality, in a plane where the angle to the query is visible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from numpy.typing import NDArray

from attnprobe.analysis.bias import ModalityBias
from attnprobe.analysis.history import History
from attnprobe.errors import AttnProbeError
from attnprobe.results import LayerResult, ProbeResult

__all__ = [
    "accuracy_vs_noise",
    "attention_share",
    "bias_heatmap",
    "block_masses",
    "key_distribution",
    "key_distribution_legend",
    "share_vs_noise",
]

Metric = Literal["mass", "share", "normalised_mass"]
Color = tuple[float, float, float]

_METRIC_LABELS: dict[str, str] = {
    "mass": "attention mass",
    "share": "attention share",
    "normalised_mass": "normalised mass (1 = fair share by token count)",
}
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "*")
_LEGEND_INSIDE_MAX = 4
"""Legends with more entries than this go outside the axes, to the right."""
_QBAR = r"$\bar{q}$"
"""The mean query, in mathtext (the default font lacks some Unicode symbols)."""
_ANNOTATE_MAX = 12
"""Heatmaps with at most this many rows and columns get their values written in the cells."""


# --------------------------------------------------------------------------- helpers


def _fail(fn: str, message: str) -> AttnProbeError:
    return AttnProbeError(f"plot.{fn}: {message}")


def _axes(ax: Axes | None, fn: str, figsize: tuple[float, float]) -> Axes:
    """``ax``, or the axes of a new constrained-layout figure."""
    if ax is None:
        _, new = plt.subplots(figsize=figsize, layout="constrained")
        created: Axes = new
        return created
    if not isinstance(ax, Axes):
        raise _fail(
            fn,
            f"expected ax to be a matplotlib Axes or None, received {type(ax).__name__}; "
            "pass e.g. ax=plt.subplots()[1], or leave ax out for a new figure.",
        )
    return ax


def _frame_of(obj: object, fn: str, expected: str) -> pd.DataFrame:
    """A DataFrame, or what ``obj.to_frame()`` returns."""
    if isinstance(obj, pd.DataFrame):
        return obj
    method = getattr(obj, "to_frame", None)
    frame = method() if callable(method) else None
    if not isinstance(frame, pd.DataFrame):
        raise _fail(fn, f"expected {expected}, received {type(obj).__name__}.")
    return frame


def _require(frame: pd.DataFrame, columns: Sequence[str], fn: str, hint: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise _fail(
            fn,
            f"the frame lacks column(s) {missing}; expected columns {list(columns)}, received "
            f"{[str(c) for c in frame.columns]}. {hint}",
        )


def _numeric(frame: pd.DataFrame, column: str, fn: str) -> NDArray[np.float64]:
    """A column as float64 (NaN for missing values), or a clear error."""
    try:
        values = pd.to_numeric(frame[column], errors="raise")
    except (TypeError, ValueError):
        raise _fail(
            fn,
            f"expected numbers in column {column!r}, received dtype {frame[column].dtype} "
            f"(e.g. {frame[column].iloc[0]!r}); convert the column to numbers first.",
        ) from None
    return np.asarray(values.astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan))


def _labels_as_str(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``frame`` with the label ``columns`` as strings (lookups and legends use strings)."""
    return frame.assign(**{c: frame[c].astype(str) for c in columns})


def _palette(n: int) -> list[Color]:
    """``n`` colours of seaborn's colour-blind-safe palette (cycled past 10)."""
    colors = sns.color_palette("colorblind", max(n, 1))
    return [(float(r), float(g), float(b)) for r, g, b in colors]


def _ordered(values: pd.Series) -> list[str]:
    """Distinct values in order of first appearance (model order for layers)."""
    return [str(v) for v in dict.fromkeys(values.tolist())]


def _legend(
    ax: Axes, handles: Sequence[Line2D], labels: Sequence[str], title: str | None = None
) -> None:
    """A legend inside the axes when short, outside to the right when long."""
    if len(handles) > _LEGEND_INSIDE_MAX:
        ax.legend(
            handles,
            labels,
            title=title,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0.0,
            frameon=False,
        )
    else:
        ax.legend(handles, labels, title=title, loc="best")


def _heatmap(
    ax: Axes,
    grid: pd.DataFrame,
    *,
    cmap: str,
    norm: Normalize,
    label: str,
    ticks: Sequence[float] | None = None,
) -> None:
    """A seaborn heatmap of ``grid``, annotated when small, with readable tick labels."""
    small = grid.shape[0] <= _ANNOTATE_MAX and grid.shape[1] <= _ANNOTATE_MAX
    sns.heatmap(
        grid,
        ax=ax,
        cmap=cmap,
        norm=norm,
        annot=small,
        fmt=".2f",
        annot_kws={"fontsize": 9 if max(grid.shape) <= 6 else 7},
        linewidths=0.5,
        linecolor="white",
        cbar_kws={"label": label},
    )
    colorbar = ax.collections[-1].colorbar if ax.collections else None
    if colorbar is not None and ticks is not None:
        colorbar.minorticks_off()
        colorbar.set_ticks(list(ticks), labels=[f"{t:.2g}" for t in ticks])
    long_names = max((len(str(c)) for c in grid.columns), default=0) > 6
    for tick in ax.get_xticklabels():
        tick.set_rotation(30 if long_names else 0)
        tick.set_horizontalalignment("right" if long_names else "center")
    for tick in ax.get_yticklabels():
        tick.set_rotation(0)


def _ratio_scale(values: NDArray[np.float64]) -> tuple[LogNorm, list[float]]:
    """A log colour scale symmetric about 1 (``r`` and ``1/r`` equally strong) and its ticks."""
    positive = values[np.isfinite(values) & (values > 0)]
    reach = float(max(positive.max(), 1.0 / positive.min())) if positive.size else 1.0
    reach = max(reach, 1.25)
    steps = [t for t in (1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0) if t <= reach]
    ticks = sorted({1.0, *steps[-2:], *(1.0 / t for t in steps[-2:])})
    return LogNorm(vmin=1.0 / reach, vmax=reach), ticks


# --------------------------------------------------------------------------- training


def attention_share(
    history: History | pd.DataFrame,
    *,
    query: str = "cls",
    key: str | None = None,
    x: Literal["epoch", "step"] = "epoch",
    ax: Axes | None = None,
) -> Axes:
    """Attention share over training, per layer (averaged over heads).

    One line per (layer, key modality): colour = key modality and marker = layer; with ``key``
    one line per layer (colour and marker = layer). A dashed horizontal line marks the fair
    share by token count (``token_share``) of a key modality when it is the same at every
    point plotted. Key modalities left out of shares (``History(exclude=...)``) are skipped.

    Args:
        history: an `attnprobe.History` of `ProbeResult` / `ModalityBias` records, or its
            ``to_frame()``: columns ``layer``, ``query_modality``, ``key_modality``, ``share``,
            the ``x`` column, and optionally ``head`` and ``token_share``.
        query: the query group whose attention is split (``"cls"``, or ``"all"`` for every
            query token).
        key: plot only this key modality (one line per layer).
        x: ``"epoch"`` or ``"step"``, the column on the x axis.
        ax: the axes to draw on (default: a new figure).

    Returns:
        The axes.

    Examples:
        >>> import matplotlib.pyplot as plt, torch, attnprobe as ap
        >>> from attnprobe import plot
        >>> from attnprobe.models import FusionAttention
        >>> layer = FusionAttention(dim=8).eval()
        >>> history = ap.History(exclude=["cls"])
        >>> for epoch in range(3):
        ...     with ap.probe(layer, modalities={"cls": 1, "audio": 2, "video": 3}) as p:
        ...         _ = layer(torch.randn(4, 5, 8))
        ...     history.add(p.result(), epoch=epoch)
        >>> ax = plot.attention_share(history, query="cls")
        >>> len(ax.get_lines())  # audio, video, and the two fair-share lines
        4
        >>> plt.close(ax.figure)
    """
    fn = "attention_share"
    frame = _frame_of(history, fn, "an attnprobe.History or its to_frame() DataFrame")
    if frame.empty:
        raise _fail(fn, "the history has no rows; record results with History.add(...) first.")
    if x not in ("epoch", "step"):
        raise _fail(fn, f"expected x='epoch' or x='step', received x={x!r}.")
    _require(
        frame,
        (x, "layer", "query_modality", "key_modality", "share"),
        fn,
        "Pass an attnprobe.History (or History.to_frame()) filled with ProbeResult or "
        "ModalityBias records.",
    )
    frame = _labels_as_str(frame, ("layer", "query_modality", "key_modality"))
    rows = frame[frame["query_modality"] == query]
    if rows.empty:
        raise _fail(
            fn,
            f"no rows for query group {query!r}; query groups in the history: "
            f"{_ordered(frame['query_modality'])}. Pass query=... (e.g. 'all').",
        )
    if key is not None and key not in set(rows["key_modality"]):
        raise _fail(
            fn,
            f"unknown key modality {key!r}; key modalities: {_ordered(rows['key_modality'])}.",
        )
    shares = _numeric(rows, "share", fn)
    rows = rows.assign(_share=shares)[np.isfinite(shares)]
    if key is not None:
        rows = rows[rows["key_modality"] == key]
    if rows.empty:
        which = f"key modality {key!r}" if key is not None else "every key modality"
        raise _fail(
            fn,
            f"{which} has no share for query {query!r}: it is excluded from shares "
            "(History(exclude=...)); pick another key, or record the history without excluding "
            "it.",
        )
    xs = _numeric(rows, x, fn)
    rows = rows.assign(_x=xs)[np.isfinite(xs)]
    if rows.empty:
        other = "step" if x == "epoch" else "epoch"
        raise _fail(
            fn,
            f"the history has no {x!r} values; record them with History.add(..., {x}=...) or "
            f"pass x={other!r}.",
        )

    layers = _ordered(rows["layer"])
    keys = _ordered(rows["key_modality"])
    ax = _axes(ax, fn, (6.5, 4.0))
    # mean over heads (and over records at the same x)
    means = rows.groupby(["layer", "key_modality", "_x"], sort=True)["_share"].mean()
    key_colors = dict(zip(keys, _palette(len(keys)), strict=True))
    layer_colors = dict(zip(layers, _palette(len(layers)), strict=True))
    by_layer = key is not None  # colour encodes the layer, not the key modality
    handles: list[Line2D] = []
    labels: list[str] = []
    for i, name in enumerate(layers):
        marker = _MARKERS[i % len(_MARKERS)]
        for modality in keys:
            try:
                line = means.loc[(name, modality)]
            except KeyError:
                continue
            points = line.index.to_numpy(dtype=np.float64)
            color = layer_colors[name] if by_layer else key_colors[modality]
            (drawn,) = ax.plot(
                points,
                line.to_numpy(dtype=np.float64),
                color=color,
                marker=marker,
                markersize=5,
                markevery=max(1, len(points) // 12),
                linewidth=1.8,
            )
            if by_layer:
                handles.append(drawn)
                labels.append(name)
    if not by_layer:
        for modality in keys:
            handles.append(Line2D([], [], color=key_colors[modality], linewidth=1.8))
            labels.append(modality if len(layers) == 1 else f"key: {modality}")
        if len(layers) > 1:
            for i, name in enumerate(layers):
                marker = _MARKERS[i % len(_MARKERS)]
                handles.append(Line2D([], [], color="0.35", marker=marker, linestyle="none"))
                labels.append(f"layer: {name}")

    # fair share by token count, when constant over everything plotted
    if "token_share" in rows.columns:
        fair: dict[float, list[str]] = {}
        for modality in keys:
            values = _numeric(rows[rows["key_modality"] == modality], "token_share", fn)
            values = values[np.isfinite(values)]
            if values.size and np.allclose(values, values[0], rtol=1e-9, atol=1e-12):
                fair.setdefault(round(float(values[0]), 12), []).append(modality)
        for value, names in fair.items():
            color = key_colors[names[0]] if len(names) == 1 and not by_layer else (0.4, 0.4, 0.4)
            handles.append(ax.axhline(value, color=color, linestyle="--", linewidth=1.1))
            labels.append(f"fair share ({', '.join(names)})")

    ax.set_xlabel("epoch" if x == "epoch" else "training step")
    ax.set_ylabel(f"share of {query} attention")
    if by_layer:
        ax.set_title(f"Share of {query} attention on {key} over training")
    else:
        where = f"\n{layers[0]}" if len(layers) == 1 else ""
        ax.set_title(f"Where {query} queries attend over training{where}")
    ax.grid(True, alpha=0.3)
    _legend(ax, handles, labels)
    return ax


# --------------------------------------------------------------------------- bias


def bias_heatmap(
    bias: ModalityBias | pd.DataFrame,
    *,
    metric: Metric = "share",
    query: str = "cls",
    key: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Head × layer heatmap of one bias metric for one (query group, key group).

    ``share`` and ``mass`` use a sequential colour map on [0, 1]; ``normalised_mass`` a
    diverging one centred at the fair value 1.0 (blue: less than the fair share by token count,
    red: more) on a log scale symmetric about 1, so that ``r`` times and ``1/r`` times the fair
    share are equally strong. Cells carry their values when the grid is at most 12 × 12; empty
    cells are NaN.

    Args:
        bias: an `attnprobe.analysis.ModalityBias` or its ``to_frame("head")``.
        metric: ``"share"``, ``"mass"`` or ``"normalised_mass"``.
        query: the query group (``"cls"``, a modality, or ``"all"``).
        key: the key group; default: the first with a finite ``metric`` (in layout order).
        ax: the axes to draw on (default: a new figure sized to the grid).

    Returns:
        The axes.

    Examples:
        >>> import matplotlib.pyplot as plt, torch, attnprobe as ap
        >>> from attnprobe import plot
        >>> from attnprobe.models import FusionAttention
        >>> layer = FusionAttention(dim=8, num_heads=2).eval()
        >>> with ap.probe(layer, modalities={"cls": 1, "audio": 2, "video": 3}) as p:
        ...     _ = layer(torch.randn(4, 5, 8))
        >>> bias = ap.modality_bias(p.result(), exclude=["cls"])
        >>> ax = plot.bias_heatmap(bias, metric="normalised_mass", key="video")
        >>> ax.get_ylabel(), len(ax.texts)  # two heads × one layer, annotated
        ('head', 2)
        >>> plt.close(ax.figure)
    """
    fn = "bias_heatmap"
    if isinstance(bias, ModalityBias):
        frame = bias.to_frame("head")
    elif isinstance(bias, pd.DataFrame):
        frame = bias
    else:
        raise _fail(
            fn,
            "expected an attnprobe.analysis.ModalityBias (attnprobe.modality_bias(result)) or its "
            f"to_frame('head'), received {type(bias).__name__}.",
        )
    if metric not in _METRIC_LABELS:
        raise _fail(
            fn, f"expected metric 'mass', 'share' or 'normalised_mass', received {metric!r}."
        )
    _require(
        frame,
        ("layer", "head", "query_modality", "key_modality", metric),
        fn,
        "Pass the ModalityBias itself or bias.to_frame('head') (level='head' keeps the heads).",
    )
    frame = _labels_as_str(frame, ("layer", "query_modality", "key_modality"))
    rows = frame[frame["query_modality"] == query]
    if rows.empty:
        raise _fail(
            fn,
            f"no rows for query group {query!r}; query groups: "
            f"{_ordered(frame['query_modality'])}.",
        )
    values = _numeric(rows, metric, fn)
    rows = rows.assign(_v=values)
    keys = _ordered(rows["key_modality"])
    if key is None:
        finite = rows[np.isfinite(values)]
        if finite.empty:
            raise _fail(fn, f"{metric} is NaN for every key group of query {query!r}.")
        key = str(finite["key_modality"].iloc[0])
    elif key not in keys:
        raise _fail(fn, f"unknown key group {key!r}; key groups: {keys}.")
    rows = rows[rows["key_modality"] == key]
    if not np.isfinite(rows["_v"].to_numpy(dtype=np.float64)).any():
        raise _fail(
            fn,
            f"{metric} of {query!r} on {key!r} is NaN everywhere: {key!r} is excluded from "
            "shares (modality_bias(..., exclude=...)); use metric='mass' or another key.",
        )
    layers = _ordered(rows["layer"])
    grid = rows.groupby(["head", "layer"], sort=True)["_v"].mean().unstack("layer")
    grid = grid.reindex(columns=layers)
    grid.index.name, grid.columns.name = "head", "layer"

    ax = _axes(
        ax, fn, (min(12.0, 3.2 + 0.8 * grid.shape[1]), min(10.0, 2.4 + 0.45 * grid.shape[0]))
    )
    if metric == "normalised_mass":
        norm, ticks = _ratio_scale(grid.to_numpy(dtype=np.float64))
        _heatmap(ax, grid, cmap="vlag", norm=norm, label="normalised mass (log)", ticks=ticks)
    else:
        _heatmap(ax, grid, cmap="viridis", norm=Normalize(0.0, 1.0), label=metric)
    ax.set_xlabel("layer")
    ax.set_ylabel("head")
    ax.set_title(f"{_METRIC_LABELS[metric].capitalize()}\n{query} queries → {key} keys")
    return ax


def block_masses(
    bias: ModalityBias | pd.DataFrame,
    *,
    layer: str | None = None,
    head: int | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Query group × key group attention masses (intra- vs cross-modal attention), annotated.

    Row ``q``, column ``m`` is the mass ``M_m`` of query group ``q`` on key group ``m``; a row
    sums to 1 (less any residual on ignored keys). Values are drawn on a fixed [0, 1] scale.

    Args:
        bias: an `attnprobe.analysis.ModalityBias` (its `ModalityBias.block` is drawn), or a
            frame that ``bias.block(...)`` returned (then ``layer`` and ``head`` must be None).
        layer: the layer name (default: the mean over layers).
        head: the head (default: the mean over heads).
        ax: the axes to draw on (default: a new figure).

    Returns:
        The axes.

    Examples:
        >>> import matplotlib.pyplot as plt, torch, attnprobe as ap
        >>> from attnprobe import plot
        >>> from attnprobe.models import FusionAttention
        >>> layer = FusionAttention(dim=8).eval()
        >>> with ap.probe(layer, modalities={"cls": 1, "audio": 2, "video": 3}) as p:
        ...     _ = layer(torch.randn(4, 5, 8))
        >>> ax = plot.block_masses(ap.modality_bias(p.result()))
        >>> len(ax.texts)  # 3 query groups × 3 key groups
        9
        >>> plt.close(ax.figure)
    """
    fn = "block_masses"
    if isinstance(bias, ModalityBias):
        try:
            matrix = bias.block(layer=layer, head=head)
        except AttnProbeError as err:
            raise _fail(fn, str(err)) from None
    elif isinstance(bias, pd.DataFrame):
        if layer is not None or head is not None:
            raise _fail(
                fn,
                "layer= and head= select from a ModalityBias; received a DataFrame (already a "
                "block). Pass the ModalityBias, or leave layer and head out.",
            )
        matrix = bias
    else:
        raise _fail(
            fn,
            "expected an attnprobe.analysis.ModalityBias (attnprobe.modality_bias(result)) or "
            f"the frame of bias.block(), received {type(bias).__name__}.",
        )
    try:
        grid = matrix.astype(np.float64)
    except (TypeError, ValueError):
        raise _fail(
            fn,
            "expected a numeric query group × key group frame (ModalityBias.block()), "
            f"received dtypes {[str(d) for d in matrix.dtypes]}.",
        ) from None
    if grid.empty:
        raise _fail(fn, "the block of masses is empty (no query or key groups).")
    ax = _axes(ax, fn, (min(12.0, 3.0 + 0.9 * grid.shape[1]), min(10.0, 2.0 + 0.6 * grid.shape[0])))
    _heatmap(ax, grid, cmap="viridis", norm=Normalize(0.0, 1.0), label="attention mass")
    ax.set_xlabel("key group")
    ax.set_ylabel("query group")
    title = "Attention mass, query group → key group"
    if isinstance(bias, ModalityBias):  # a DataFrame does not say where it comes from
        where = f"layer {layer}" if layer is not None else "mean over layers"
        which = f"head {head}" if head is not None else "mean over heads"
        title += f"\n{where}, {which}"
    ax.set_title(title)
    return ax


# --------------------------------------------------------------------------- keys


def _layer_of(result: ProbeResult | LayerResult, layer: str | None, fn: str) -> LayerResult:
    if isinstance(result, LayerResult):
        if layer is not None and layer != result.name:
            raise _fail(
                fn,
                f"received a LayerResult of layer {result.name!r} and layer={layer!r}; leave "
                "layer out, or pass the whole ProbeResult.",
            )
        return result
    if not isinstance(result, ProbeResult):
        raise _fail(
            fn,
            "expected an attnprobe.ProbeResult (probe.result()) or one of its LayerResults, "
            f"received {type(result).__name__}.",
        )
    if not result.layers:
        raise _fail(fn, "the result has no layers.")
    if layer is None:
        return result.layers[0]
    for item in result.layers:
        if item.name == layer:
            return item
    raise _fail(fn, f"no layer {layer!r}; layers: {list(result.layer_names)}.")


def _projection_basis(
    direction: NDArray[np.float64], keys: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Unit ``q̄`` and the main direction of ``keys`` orthogonal to it (PCA of the residual).

    ``keys`` ``[N, D]``. The second axis is zero when ``D == 1``; its sign makes its largest
    coordinate positive (deterministic)."""
    u1 = direction / np.linalg.norm(direction)  # (D,)
    dim = u1.shape[0]
    if dim == 1:
        return u1, np.zeros(1)
    residual = keys - np.outer(keys @ u1, u1)  # (N, D), q̄ component removed
    residual = residual - residual.mean(0)
    u2 = np.zeros(dim)
    if residual.shape[0] >= 2:
        _, singular, vt = np.linalg.svd(residual, full_matrices=False)
        if singular[0] > 1e-12 * max(1.0, float(np.abs(keys).max())):
            u2 = vt[0]
    if not np.any(u2):  # no spread orthogonal to q̄: any orthonormal direction
        u2 = np.eye(dim)[int(np.argmin(np.abs(u1)))]
    u2 = u2 - (u2 @ u1) * u1
    u2 = u2 / np.linalg.norm(u2)
    if u2[int(np.argmax(np.abs(u2)))] < 0:
        u2 = -u2
    return u1, u2


def key_distribution(
    result: ProbeResult | LayerResult,
    *,
    layer: str | None = None,
    head: int = 0,
    query: str = "cls",
    ax: Axes | None = None,
    max_points: int = 500,
    seed: int = 0,
    legend: bool = True,
) -> Axes:
    """The keys of every key group and the query direction, in a plane through ``q̄``.

    The RollingQ picture (arXiv 2506.11465): the x axis is the mean query ``q̄`` of group
    ``query`` at query head ``head`` (unit length), the y axis the principal direction of the
    pooled sampled keys orthogonal to ``q̄``, so a key's angle to the x axis shows how well it
    aligns with the query (keys along the arrow get the attention). Points are the probe's
    reservoir samples of each key group (seeded subsample of at most ``max_points`` per group);
    stars are the mean keys (over every key the probe saw); the arrow shows the direction of
    ``q̄`` (its length is scaled to the data, not ``‖q̄‖``). The legend gives each group's angle
    between its mean key and ``q̄`` in the full head space. Aspect ratio is equal so angles are
    true. A group whose sampled keys are all the same vector (a learned token that sees no
    input, such as a fusion CLS key) is drawn as one diamond, not as a pile of points.

    Args:
        result: a `ProbeResult` or `LayerResult` probed with ``reservoir_size > 0`` and
            ``key_stats=True``.
        layer: the layer name (default: the first layer).
        head: the query head; keys are read from its key/value head ``head // (H / Hk)``
            (grouped-query attention).
        query: the query group whose mean query gives the direction.
        ax: the axes to draw on (default: a new figure).
        max_points: most points drawn per key group.
        seed: seed of the subsample.
        legend: draw the legend; without it the angles to ``q̄`` go into the x label (for
            panels that share one legend, see `key_distribution_legend`).

    Returns:
        The axes.

    Examples:
        >>> import matplotlib.pyplot as plt, torch, attnprobe as ap
        >>> from attnprobe import plot
        >>> from attnprobe.models import FusionAttention
        >>> layer = FusionAttention(dim=8).eval()
        >>> layout = {"cls": 1, "audio": 2, "video": 3}
        >>> with ap.probe(layer, modalities=layout, reservoir_size=32) as p:
        ...     _ = layer(torch.randn(8, 5, 8))
        >>> ax = plot.key_distribution(p.result(), query="cls")
        >>> len(ax.collections)  # points and a mean star per key group; the CLS key: a diamond
        5
        >>> plt.close(ax.figure)
    """
    fn = "key_distribution"
    item = _layer_of(result, layer, fn)
    if item.key_sample is None or item.reservoir_size <= 0:
        raise _fail(
            fn,
            f"layer {item.name!r} has no key samples; expected a result probed with "
            "reservoir_size > 0, e.g. attnprobe.probe(model, ..., reservoir_size=512).",
        )
    if isinstance(head, bool) or not isinstance(head, int | np.integer):
        raise _fail(fn, f"expected head to be an int, received {type(head).__name__}.")
    if not 0 <= head < item.num_heads:
        raise _fail(
            fn,
            f"expected 0 <= head < {item.num_heads} (query heads of layer {item.name!r}), "
            f"received head={head}.",
        )
    if query not in item.query_groups:
        raise _fail(fn, f"unknown query group {query!r}; query groups: {list(item.query_groups)}.")
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 1:
        raise _fail(fn, f"expected max_points to be a positive int, received {max_points!r}.")
    try:
        query_mean = item.query_mean
        key_mean = item.key_mean
    except AttnProbeError as err:
        raise _fail(fn, str(err)) from None
    kv = head // max(1, item.num_heads // item.num_kv_heads)
    q_bar = query_mean[head, item.query_groups.index(query)].double().numpy()  # (D,)
    if not np.all(np.isfinite(q_bar)) or float(np.linalg.norm(q_bar)) == 0.0:
        raise _fail(
            fn,
            f"the mean query of group {query!r} at head {head} is undefined or zero (no "
            f"{query!r} queries captured?); pick another query group.",
        )
    samples = [s[:, kv].double().numpy() for s in item.key_sample]  # per group (n, D)
    pooled = np.concatenate(samples, axis=0)  # (N, D)
    if pooled.shape[0] == 0:
        raise _fail(fn, f"the key reservoir of layer {item.name!r} is empty (no keys seen).")
    u1, u2 = _projection_basis(q_bar, pooled)
    basis = np.stack([u1, u2], axis=1)  # (D, 2)

    ax = _axes(ax, fn, (6.5, 4.8))
    rng = np.random.default_rng(seed)
    colors = _palette(len(item.key_groups))
    handles: list[Line2D] = []
    labels: list[str] = []
    angles: list[str] = []
    radius = 0.0
    for g, group in enumerate(item.key_groups):
        keys = samples[g]  # (n, D)
        mean = key_mean[kv, g].double().numpy()  # (D,)
        if keys.shape[0] == 0 and not np.all(np.isfinite(mean)):
            continue
        if keys.shape[0] > max_points:
            keys = keys[np.sort(rng.choice(keys.shape[0], max_points, replace=False))]
        constant = keys.shape[0] > 1 and _constant(keys)
        label = f"{group} (constant" if constant else f"{group} (n={keys.shape[0]}"
        marker = "D" if constant else "o"
        if constant:  # one vector sampled n times: one marker
            xy = keys[:1] @ basis  # (1, 2)
            radius = max(radius, float(np.hypot(*xy[0])))
            ax.scatter(
                xy[:, 0], xy[:, 1], s=70, marker="D", color=colors[g], edgecolors="black",
                linewidths=0.6, zorder=3,
            )  # fmt: skip
        elif keys.shape[0]:
            xy = keys @ basis  # (n, 2)
            radius = max(radius, float(np.hypot(xy[:, 0], xy[:, 1]).max()))
            ax.scatter(
                xy[:, 0], xy[:, 1], s=12, color=colors[g], alpha=0.45, linewidths=0, zorder=2
            )
        if np.all(np.isfinite(mean)):
            if not constant:  # a constant key is its own mean: the diamond
                centre = mean @ basis  # (2,)
                radius = max(radius, float(np.hypot(*centre)))
                ax.scatter(
                    [centre[0]],
                    [centre[1]],
                    marker="*",
                    s=260,
                    color=colors[g],
                    edgecolors="black",
                    linewidths=0.9,
                    zorder=4,
                )
            norm = float(np.linalg.norm(mean))
            if norm > 0:
                cosine = float(np.clip(mean @ u1 / norm, -1.0, 1.0))
                label += f", {np.degrees(np.arccos(cosine)):.0f}° to {_QBAR}"
                angles.append(f"{group} {np.degrees(np.arccos(cosine)):.0f}°")
        handles.append(Line2D([], [], color=colors[g], marker=marker, linestyle="none"))
        labels.append(label + ")")
    length = radius if radius > 0 else 1.0
    ax.axhline(0.0, color="0.8", linewidth=0.8, zorder=1)
    ax.axvline(0.0, color="0.8", linewidth=0.8, zorder=1)
    ax.annotate(
        "",
        xy=(length, 0.0),
        xytext=(0.0, 0.0),
        arrowprops={"arrowstyle": "-|>", "color": "black", "linewidth": 1.6, "mutation_scale": 16},
        zorder=5,
    )
    ax.update_datalim([(0.0, 0.0), (length, 0.0)])
    ax.autoscale_view()
    ax.set_aspect("equal", adjustable="datalim")
    star, arrow = _mean_key_and_arrow_handles()
    handles += [star, arrow]
    labels += ["mean key", f"{_QBAR} direction ({query}, head {head})"]
    ax.set_xlabel(f"along {_QBAR} (mean {query} query)")
    ax.set_ylabel(rf"main key direction $\perp$ {_QBAR}")
    kv_note = f", kv head {kv}" if item.num_kv_heads != item.num_heads else ""
    ax.set_title(f"Keys and the {query} query direction\n{item.name}, head {head}{kv_note}")
    if legend:
        _legend(ax, handles, labels, title="key group")
    else:
        lines = [", ".join(angles[i : i + 4]) for i in range(0, len(angles), 4)]  # 4 a line
        ax.set_xlabel(f"along {_QBAR}; mean key to {_QBAR}:\n" + "\n".join(lines))
    return ax


def key_distribution_legend(
    fig: Figure,
    result: ProbeResult | LayerResult,
    *,
    layer: str | None = None,
    query: str = "cls",
) -> None:
    """One legend below the panels of a figure drawn with ``key_distribution(..., legend=False)``
    (the panels' results having the same key groups as ``result``): the key groups in their
    colours (those with one constant key as diamonds), the mean-key star and the ``q̄`` arrow.

    Args:
        fig: the figure.
        result: one of the panels' results.
        layer: the layer name (default: the first layer).
        query: the query group of the arrow.
    """
    item = _layer_of(result, layer, "key_distribution_legend")
    samples = item.key_sample or ()
    constant = {
        g
        for g, sample in zip(item.key_groups, samples, strict=False)
        if sample.shape[0] > 1 and _constant(sample.double().flatten(1).numpy())
    }
    colors = _palette(len(item.key_groups))
    handles = [
        Line2D([], [], color=c, marker="D" if g in constant else "o", linestyle="none")
        for g, c in zip(item.key_groups, colors, strict=True)
    ]
    labels = [f"{g} (one constant key)" if g in constant else f"{g} keys" for g in item.key_groups]
    handles += _mean_key_and_arrow_handles()
    labels += ["mean key", f"{_QBAR} direction (mean {query} query)"]
    fig.legend(handles, labels, loc="outside lower center", ncols=len(handles), frameon=False)


def _mean_key_and_arrow_handles() -> tuple[Line2D, Line2D]:
    """Legend handles of `key_distribution`'s mean-key star and ``q̄`` arrow."""
    star = Line2D(
        [], [], color="white", marker="*", markersize=13, markeredgecolor="black", linestyle="none"
    )
    arrow = Line2D([], [], color="black", linewidth=1.6, marker=">", markersize=6)
    return star, arrow


def _constant(keys: np.ndarray) -> bool:
    """Whether every row of ``keys`` ``(n, D)`` is the same vector (up to float32 rounding)."""
    spread = float(np.abs(keys - keys[0]).max())
    return spread <= 1e-6 * max(float(np.abs(keys[0]).max()), 1e-30)


# --------------------------------------------------------------------------- noise sweeps


def _sweep_frame(sweep: object, fn: str, columns: Sequence[str]) -> pd.DataFrame:
    frame = _frame_of(
        sweep, fn, "a noise-sweep result (an object with to_frame()) or its DataFrame"
    )
    _require(
        frame,
        columns,
        fn,
        "Pass the result of attnprobe.noise_sweep (or its to_frame()), one row per "
        "(corrupted, level, key_modality).",
    )
    if frame.empty:
        raise _fail(fn, "the sweep frame has no rows.")
    return frame


def share_vs_noise(sweep: object, *, ax: Axes | None = None) -> Axes:
    """The attention share a corrupted modality keeps as its noise level λ grows.

    One line per corrupted modality: the share of the query group's attention on that same
    modality (rows with ``key_modality == corrupted``), with a ±1 standard-error band where
    ``share_sem`` is finite. A model whose attention adapts gives a noisier modality less
    share (RollingQ's "cooperation dynamics").

    Args:
        sweep: a noise-sweep result (anything with ``to_frame()``) or a DataFrame with columns
            ``corrupted``, ``level``, ``key_modality``, ``share`` and optionally ``share_sem``
            (and ``query_modality``, used in the label when it has one value).
        ax: the axes to draw on (default: a new figure).

    Returns:
        The axes.

    Examples:
        >>> import matplotlib.pyplot as plt, pandas as pd
        >>> from attnprobe import plot
        >>> sweep = pd.DataFrame({
        ...     "corrupted": ["audio"] * 4 + ["video"] * 4,
        ...     "level": [0.0, 0.0, 1.0, 1.0] * 2,
        ...     "key_modality": ["audio", "video"] * 4,
        ...     "share": [0.6, 0.4, 0.3, 0.7, 0.6, 0.4, 0.8, 0.2],
        ...     "share_sem": [0.02] * 8,
        ...     "accuracy": [0.9, 0.9, 0.5, 0.5, 0.9, 0.9, 0.8, 0.8],
        ... })
        >>> ax = plot.share_vs_noise(sweep)
        >>> print(*[line.get_label() for line in ax.get_lines()])
        audio video
        >>> plt.close(ax.figure)
    """
    fn = "share_vs_noise"
    frame = _sweep_frame(sweep, fn, ("corrupted", "level", "key_modality", "share"))
    rows = frame[frame["key_modality"].astype(str) == frame["corrupted"].astype(str)]
    if rows.empty:
        raise _fail(
            fn,
            "no row has key_modality equal to corrupted; expected, for each corrupted modality, "
            f"rows of its own share. Corrupted: {_ordered(frame['corrupted'])}, key modalities: "
            f"{_ordered(frame['key_modality'])}.",
        )
    rows = rows.assign(
        _level=_numeric(rows, "level", fn),
        _share=_numeric(rows, "share", fn),
        _sem=_numeric(rows, "share_sem", fn) if "share_sem" in rows.columns else np.nan,
    )
    _one_per_level(
        rows,
        fn,
        "one row per (corrupted, level, key_modality)",
        "several",
        "e.g. by query_modality or layer",
    )
    ax = _axes(ax, fn, (6.5, 4.0))
    names, handles = _lines_by_corrupted(ax, rows, "_share", band="_sem")
    who = "Attention"
    if "query_modality" in frame.columns and frame["query_modality"].nunique() == 1:
        who = f"{frame['query_modality'].iloc[0]} attention"
    ax.set_ylabel("share on the corrupted modality")
    ax.set_title(f"{who} on a modality as it is corrupted")
    _legend(ax, handles, names, title="corrupted")
    return ax


def _one_per_level(rows: pd.DataFrame, fn: str, expected: str, received: str, fix: str) -> None:
    """Refuse a frame with several rows for one (corrupted, level) after filtering."""
    dup = rows.duplicated(["corrupted", "_level"])
    if dup.any():
        first = rows[dup].iloc[0]
        raise _fail(
            fn,
            f"expected {expected}, received {received} for corrupted={first['corrupted']!r}, "
            f"level={first['level']!r}; filter the frame first ({fix}).",
        )


def _lines_by_corrupted(
    ax: Axes, rows: pd.DataFrame, column: str, band: str | None = None
) -> tuple[list[str], list[Line2D]]:
    """One line of ``column`` against ``_level`` per corrupted modality, with a ±``band``
    area where it is finite; returns the names and the line handles."""
    names = _ordered(rows["corrupted"])
    handles: list[Line2D] = []
    for name, color in zip(names, _palette(len(names)), strict=True):
        part = rows[rows["corrupted"].astype(str) == name].sort_values("_level")
        level = part["_level"].to_numpy(dtype=np.float64)
        value = part[column].to_numpy(dtype=np.float64)
        (line,) = ax.plot(level, value, color=color, marker="o", markersize=5, label=name)
        handles.append(line)
        if band is not None:
            half = part[band].to_numpy(dtype=np.float64)
            finite = np.isfinite(half)
            if finite.any():
                half = np.where(finite, half, 0.0)
                ax.fill_between(
                    level, value - half, value + half, where=finite, color=color, alpha=0.2, lw=0
                )
    ax.set_xlabel("noise level λ on the corrupted modality (0 = clean)")
    ax.grid(True, alpha=0.3)
    return names, handles


def accuracy_vs_noise(sweep: object, *, ax: Axes | None = None) -> Axes:
    """Accuracy as one modality at a time is corrupted with noise level λ.

    One line per corrupted modality. The sweep frame repeats each (corrupted, level) accuracy
    on every ``key_modality`` row; those repeats are collapsed (they must agree).

    Args:
        sweep: a noise-sweep result (anything with ``to_frame()``) or a DataFrame with columns
            ``corrupted``, ``level`` and ``accuracy``.
        ax: the axes to draw on (default: a new figure).

    Returns:
        The axes.

    Examples:
        >>> import matplotlib.pyplot as plt, pandas as pd
        >>> from attnprobe import plot
        >>> sweep = pd.DataFrame({
        ...     "corrupted": ["audio"] * 4 + ["video"] * 4,
        ...     "level": [0.0, 0.0, 1.0, 1.0] * 2,
        ...     "key_modality": ["audio", "video"] * 4,
        ...     "accuracy": [0.9, 0.9, 0.5, 0.5, 0.9, 0.9, 0.8, 0.8],
        ... })
        >>> ax = plot.accuracy_vs_noise(sweep)
        >>> for line in ax.get_lines():
        ...     print(line.get_label(), *line.get_ydata())
        audio 0.9 0.5
        video 0.9 0.8
        >>> plt.close(ax.figure)
    """
    fn = "accuracy_vs_noise"
    frame = _sweep_frame(sweep, fn, ("corrupted", "level", "accuracy"))
    rows = frame.assign(
        _level=_numeric(frame, "level", fn), _accuracy=_numeric(frame, "accuracy", fn)
    )
    rows = rows.drop_duplicates(["corrupted", "_level", "_accuracy"])
    _one_per_level(
        rows,
        fn,
        "one accuracy per (corrupted, level)",
        "different accuracies",
        "one sweep at a time",
    )
    ax = _axes(ax, fn, (6.5, 4.0))
    names, handles = _lines_by_corrupted(ax, rows, "_accuracy")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy as one modality is corrupted")
    _legend(ax, handles, names, title="corrupted")
    return ax
