"""Frozen result objects of a probe, and their tidy DataFrames.

Results hold the float64 *sums and counts* the probe accumulated (CPU tensors), and derive means
on access, so two results over disjoint data merge exactly (`ProbeResult.merge`).
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from attnprobe._errors import AttnProbeError
from attnprobe._io import load_tagged
from attnprobe.stats import merge_samples

__all__ = ["MASS_COLUMNS", "STATS_COLUMNS", "LayerResult", "ProbeResult"]

MASS_COLUMNS = ("layer", "head", "query_modality", "key_modality", "mass", "num_queries")
"""Columns of `ProbeResult.to_frame`, in order."""

_RESULT_FORMAT = "attnprobe.result/1"

STATS_COLUMNS = ("layer", "kind", "head", "modality", "num_tokens", "mean_norm", "rms")
"""Columns of `ProbeResult.stats_frame`, in order."""


def _ratio(total: Tensor, count: Tensor) -> Tensor:
    """``total / count`` with NaN where ``count == 0`` (no data, not zero mass)."""
    return torch.where(count > 0, total / torch.where(count > 0, count, 1.0), torch.nan)


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None or b is None:
        return None
    return a + b


def _cat(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None or b is None:
        return None
    return torch.cat([a, b])


@dataclass(frozen=True, repr=False)
class LayerResult:
    """What a probe captured at one attention layer (one kernel call site).

    Shapes: ``H`` query heads, ``Hk`` key/value heads, ``D`` head size, ``Gq`` query groups,
    ``Gk`` key groups. All sums are float64.
    """

    name: str
    """Module path in ``model.named_modules()`` (the class name when the probed module is the
    model itself; ``path:callN`` for the N-th kernel call of a module that calls attention more
    than once per forward)."""
    num_heads: int
    num_kv_heads: int
    head_dim: int
    query_groups: tuple[str, ...]
    key_groups: tuple[str, ...]
    num_calls: int
    """Kernel calls captured."""
    mass_total: Tensor
    """``[H, Gq, Gk]`` Σ over kept query rows of the mass on each key group."""
    num_queries: Tensor
    """``[Gq]`` kept query rows (the denominator of `mass`)."""
    key_count: Tensor | None = None
    """``[Gk]`` key tokens per group."""
    key_total: Tensor | None = None
    """``[Hk, Gk, D]`` Σ k."""
    key_total_sq: Tensor | None = None
    """``[Hk, Gk, D]`` Σ k² (elementwise)."""
    key_outer: Tensor | None = None
    """``[Hk, Gk, D, D]`` Σ k kᵀ (``second_moment=True``)."""
    query_count: Tensor | None = None
    """``[Gq]`` query tokens per group."""
    query_total: Tensor | None = None
    """``[H, Gq, D]`` Σ q."""
    query_total_sq: Tensor | None = None
    """``[H, Gq, D]`` Σ q²."""
    cosine_total: Tensor | None = None
    """``[H, Gq, Gk]`` Σ over samples of ``cos(q̄_i, k̄_i)`` (per-sample mean query and key)."""
    cosine_count: Tensor | None = None
    """``[Gq, Gk]`` samples with tokens in both groups."""
    entropy_total: Tensor | None = None
    """``[H, Gq, Gk]`` Σ over query rows of the within-group entropy (``entropy=True``)."""
    entropy_count: Tensor | None = None
    """``[H, Gq, Gk]`` query rows with attention on the group (the entropy's denominator)."""
    key_sample: tuple[Tensor, ...] | None = None
    """Per key group, a seeded uniform reservoir sample of key vectors ``[n, Hk, D]``."""
    key_sample_priority: tuple[Tensor, ...] | None = None
    """The reservoir priorities of `key_sample` (what makes merging exact)."""
    reservoir_size: int = 0
    """Capacity of each reservoir."""
    sample_mass: Tensor | None = None
    """``[N, H, Gq, Gk]`` per-sample mass, in the order samples were seen
    (``per_sample=True``); NaN where a sample has no query of that group."""
    sample_key_mean: Tensor | None = None
    """``[N, Hk, Gk, D]`` per-sample mean key of each group (``per_sample=True`` with
    ``key_stats``); NaN where a sample has no token of that group."""
    sample_query_mean: Tensor | None = None
    """``[N, H, Gq, D]`` per-sample mean query of each query group (same conditions)."""
    maps: tuple[Tensor, ...] | None = None
    """Full attention maps ``[B, H, Lq, Lk]`` per call (``store_maps=True``)."""

    @property
    def mass(self) -> Tensor:
        """``[H, Gq, Gk]`` attention mass (``OVERVIEW.md``): mean over kept query rows of the
        post-softmax probability summed over each key group's tokens."""
        return _ratio(self.mass_total, self.num_queries.view(1, -1, 1))

    @property
    def residual(self) -> Tensor:
        """``[H, Gq]`` ``1 − Σ_g mass``: mass on ignored keys or sink logits (never
        renormalised away)."""
        return 1.0 - self.mass.sum(-1)

    def _need(
        self, value: Tensor | None, what: str, fix: str = "probe with key_stats=True (the default)"
    ) -> Tensor:
        if value is None:
            raise AttnProbeError(f"layer {self.name!r}: {what} was not collected; {fix}.")
        return value

    @property
    def key_mean(self) -> Tensor:
        """``[Hk, Gk, D]`` mean key per head and group, pooled over tokens and samples."""
        count = self._need(self.key_count, "key statistics")
        return _ratio(self._need(self.key_total, "key sums"), count.view(1, -1, 1))

    @property
    def key_var(self) -> Tensor:
        """``[Hk, Gk, D]`` per-coordinate population variance of the keys."""
        count = self._need(self.key_count, "key statistics").view(1, -1, 1)
        mean = self.key_mean
        return _ratio(self._need(self.key_total_sq, "key sums of squares"), count) - mean**2

    @property
    def query_mean(self) -> Tensor:
        """``[H, Gq, D]`` mean query per head and query group."""
        count = self._need(self.query_count, "query statistics")
        return _ratio(self._need(self.query_total, "query sums"), count.view(1, -1, 1))

    @property
    def entropy(self) -> Tensor:
        """``[H, Gq, Gk]`` mean over query rows of the entropy of the attention renormalised
        inside each key group (``METRICS.md``; probe with ``entropy=True``)."""
        fix = "probe with entropy=True"
        count = self._need(self.entropy_count, "the within-group entropy", fix)
        return _ratio(self._need(self.entropy_total, "the within-group entropy", fix), count)

    @property
    def mean_cosine(self) -> Tensor:
        """``[H, Gq, Gk]`` ``E_i[cos(q̄_i, k̄_i)]``; AIR(a, b) for query group q is
        ``mean_cosine[:, q, a] − mean_cosine[:, q, b]`` (RollingQ, arXiv 2506.11465)."""
        count = self._need(self.cosine_count, "per-sample cosines")
        return _ratio(self._need(self.cosine_total, "per-sample cosines"), count.unsqueeze(0))

    def merge(self, other: LayerResult) -> LayerResult:
        """The result over the data of both (sums added, samples concatenated)."""
        same = (
            self.name,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.query_groups,
            self.key_groups,
        )
        theirs = (
            other.name,
            other.num_heads,
            other.num_kv_heads,
            other.head_dim,
            other.query_groups,
            other.key_groups,
        )
        if same != theirs:
            raise AttnProbeError(
                f"cannot merge layer results: expected matching (name, heads, kv heads, head "
                f"dim, query groups, key groups), received {same} and {theirs}."
            )
        key_sample = key_priority = None
        if (
            self.key_sample is not None
            and other.key_sample is not None
            and self.key_sample_priority is not None
            and other.key_sample_priority is not None
        ):
            merged = [
                merge_samples((a, b), (pa, pb), self.reservoir_size)
                for a, b, pa, pb in zip(
                    self.key_sample,
                    other.key_sample,
                    self.key_sample_priority,
                    other.key_sample_priority,
                    strict=True,
                )
            ]
            key_sample = tuple(rows for rows, _ in merged)
            key_priority = tuple(prio for _, prio in merged)
        maps = None
        if self.maps is not None and other.maps is not None:
            maps = self.maps + other.maps
        return dataclasses.replace(
            self,
            num_calls=self.num_calls + other.num_calls,
            mass_total=self.mass_total + other.mass_total,
            num_queries=self.num_queries + other.num_queries,
            key_count=_add(self.key_count, other.key_count),
            key_total=_add(self.key_total, other.key_total),
            key_total_sq=_add(self.key_total_sq, other.key_total_sq),
            key_outer=_add(self.key_outer, other.key_outer),
            query_count=_add(self.query_count, other.query_count),
            query_total=_add(self.query_total, other.query_total),
            query_total_sq=_add(self.query_total_sq, other.query_total_sq),
            cosine_total=_add(self.cosine_total, other.cosine_total),
            cosine_count=_add(self.cosine_count, other.cosine_count),
            entropy_total=_add(self.entropy_total, other.entropy_total),
            entropy_count=_add(self.entropy_count, other.entropy_count),
            key_sample=key_sample,
            key_sample_priority=key_priority,
            sample_mass=_cat(self.sample_mass, other.sample_mass),
            sample_key_mean=_cat(self.sample_key_mean, other.sample_key_mean),
            sample_query_mean=_cat(self.sample_query_mean, other.sample_query_mean),
            maps=maps,
        )

    def to_frame(self) -> pd.DataFrame:
        """Tidy masses: one row per (head, query group, key group); columns
        `MASS_COLUMNS`."""
        mass = self.mass  # (H, Gq, Gk)
        heads, gq, gk = mass.shape
        head_idx = torch.arange(heads).view(-1, 1, 1).expand(heads, gq, gk)  # (H, Gq, Gk)
        q_idx = torch.arange(gq).view(1, -1, 1).expand(heads, gq, gk)
        k_idx = torch.arange(gk).view(1, 1, -1).expand(heads, gq, gk)
        counts = self.num_queries.view(1, -1, 1).expand(heads, gq, gk)
        return pd.DataFrame(
            {
                "layer": self.name,
                "head": head_idx.reshape(-1).numpy(),
                "query_modality": [self.query_groups[i] for i in q_idx.reshape(-1).tolist()],
                "key_modality": [self.key_groups[i] for i in k_idx.reshape(-1).tolist()],
                "mass": mass.reshape(-1).numpy(),
                "num_queries": counts.reshape(-1).to(torch.int64).numpy(),
            },
            columns=list(MASS_COLUMNS),
        )

    def stats_frame(self) -> pd.DataFrame:
        """Tidy key and query statistics per head and group; columns `STATS_COLUMNS`.

        ``mean_norm`` is ‖mean vector‖, ``rms`` is ``sqrt(E‖x‖²)``.
        """
        rows = []
        parts = [
            ("key", self.key_count, self.key_total, self.key_total_sq, self.key_groups),
            ("query", self.query_count, self.query_total, self.query_total_sq, self.query_groups),
        ]
        for kind, count, total, total_sq, groups in parts:
            if count is None or total is None or total_sq is None:
                continue
            mean = _ratio(total, count.view(1, -1, 1))  # (H, G, D)
            msq = _ratio(total_sq.sum(-1), count.view(1, -1))  # (H, G)
            for head in range(total.shape[0]):
                for g, group in enumerate(groups):
                    rows.append(
                        (
                            self.name,
                            kind,
                            head,
                            group,
                            int(count[g]),
                            float(mean[head, g].norm()),
                            float(msq[head, g].sqrt()),
                        )
                    )
        return pd.DataFrame(rows, columns=list(STATS_COLUMNS))

    def __repr__(self) -> str:
        return (
            f"LayerResult({self.name!r}, heads={self.num_heads}, "
            f"query_groups={list(self.query_groups)}, key_groups={list(self.key_groups)}, "
            f"queries={int(self.num_queries.sum())}, calls={self.num_calls})"
        )


@dataclass(frozen=True, repr=False)
class ProbeResult:
    """Everything a probe captured, per layer, in model order.

    Example:
        >>> import torch, attnprobe as ap
        >>> from attnprobe.models import FusionAttention
        >>> layer = FusionAttention(dim=16, num_heads=2)
        >>> with ap.probe(layer, modalities={"cls": 1, "audio": 3, "video": 4}) as p:
        ...     _ = layer(torch.randn(5, 7, 16))
        >>> res = p.result()
        >>> res
        ProbeResult(1 layer, groups=['cls', 'audio', 'video'], queries=40)
        >>> list(res.to_frame().columns)
        ['layer', 'head', 'query_modality', 'key_modality', 'mass', 'num_queries']
    """

    layers: tuple[LayerResult, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """Layer names, in model order."""
        return tuple(layer.name for layer in self.layers)

    def __getitem__(self, name: str) -> LayerResult:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r} in this result; layers: {list(self.names)}")

    def __iter__(self) -> Iterator[LayerResult]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def merge(self, other: ProbeResult) -> ProbeResult:
        """The result over the data of both probes (e.g. two shards, two epochs)."""
        if self.names != other.names:
            raise AttnProbeError(
                f"cannot merge probe results over different layers: {list(self.names)} vs "
                f"{list(other.names)}."
            )
        return ProbeResult(
            tuple(a.merge(b) for a, b in zip(self.layers, other.layers, strict=True))
        )

    def save(self, path: str | Path) -> Path:
        """Write the result to ``path`` (a ``torch.save`` file of tensors, strings and numbers
        only, so `load` reads it with ``weights_only=True``); returns the path."""
        layers = [
            {f.name: getattr(layer, f.name) for f in dataclasses.fields(layer)}
            for layer in self.layers
        ]
        path = Path(path)
        torch.save({"format": _RESULT_FORMAT, "layers": layers}, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ProbeResult:
        """Read a result written by `save` (``torch.load(weights_only=True)``: no arbitrary
        unpickling).

        Example:
            >>> import tempfile, torch, attnprobe as ap
            >>> from attnprobe.models import FusionAttention
            >>> layer = FusionAttention(dim=8).eval()
            >>> with ap.probe(layer, modalities={"cls": 1, "a": 2, "b": 3}) as p:
            ...     _ = layer(torch.randn(4, 5, 8))
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     back = ap.ProbeResult.load(p.result().save(f"{tmp}/result.pt"))
            >>> bool(torch.equal(back.layers[0].mass, p.result().layers[0].mass))
            True
        """
        state = load_tagged(
            path, _RESULT_FORMAT, "a probe result", "expected a file written by ProbeResult.save"
        )
        return cls(tuple(LayerResult(**fields) for fields in state["layers"]))

    def to_frame(self) -> pd.DataFrame:
        """Tidy masses of every layer; columns `MASS_COLUMNS`.

        ``mass`` is the mean over query tokens of ``query_modality`` (padding dropped) of the
        attention probability on the tokens of ``key_modality``; ``num_queries`` the number of
        query tokens averaged over.
        """
        frames = [layer.to_frame() for layer in self.layers]
        if not frames:
            return pd.DataFrame(columns=list(MASS_COLUMNS))
        return pd.concat(frames, ignore_index=True)

    def stats_frame(self) -> pd.DataFrame:
        """Tidy key/query statistics of every layer; columns `STATS_COLUMNS`."""
        frames = [layer.stats_frame() for layer in self.layers]
        if not frames:
            return pd.DataFrame(columns=list(STATS_COLUMNS))
        return pd.concat(frames, ignore_index=True)

    def __repr__(self) -> str:
        groups: list[str] = []
        for layer in self.layers:
            groups.extend(g for g in layer.key_groups if g not in groups)
        queries = sum(int(layer.num_queries.sum()) for layer in self.layers)
        n = len(self.layers)
        return f"ProbeResult({n} layer{'s' if n != 1 else ''}, groups={groups}, queries={queries})"

    def _repr_html_(self) -> str:
        frame = self.to_frame()
        if frame.empty:
            return html.escape(repr(self))
        table = frame.groupby(["layer", "query_modality", "key_modality"], sort=False)[
            "mass"
        ].mean()
        pivot = table.unstack("key_modality")
        return f"<p>{html.escape(repr(self))} — mass averaged over heads</p>" + pivot.to_html(
            float_format=lambda v: f"{v:.4f}"
        )
