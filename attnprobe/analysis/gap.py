"""Key-distribution gap between two modalities, per layer and head
(``docs/concepts/key-gap.md``).

Streaming metrics come from the probe's float64 sums (exact over everything the probe saw):
the centroid cosine gap (`attnprobe.metrics.centroid_gap`) and population AIR from ``Σ k`` and
``Σ q``, the per-sample AIR (`attnprobe.metrics.air`) from the per-sample cosines, the Fréchet
distance from ``Σ k kᵀ`` (``second_moment=True``). The others — MMD², sliced Wasserstein-2,
two-sample AUC — need samples and read the probe's seeded reservoir of keys
(``reservoir_size > 0``); they are reproducible for a given seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from attnprobe._text import count
from attnprobe.analysis import _distances as D
from attnprobe.errors import AnalysisError, AttnProbeError
from attnprobe.metrics import air, centroid_gap, key_indices, query_index
from attnprobe.results import LayerResult, ProbeResult

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["GAP_METRICS", "KeyGap", "key_gap"]

GAP_METRICS = (
    "centroid_gap",
    "air",
    "air_population",
    "frechet",
    "mmd2",
    "mmd_p_value",
    "sliced_w2",
    "auc",
)
"""The metric columns of `KeyGap.to_frame`, in order."""


@dataclass(frozen=True)
class KeyGap:
    """Key-distribution gap between modalities ``a`` and ``b`` (`key_gap`)."""

    a: str
    b: str
    query: str | None
    """The query group AIR reads (None: AIR not computed)."""
    rows: tuple[tuple[str, int, int, tuple[float, ...]], ...]
    """``(layer, head, kv_head, values in GAP_METRICS order)`` per layer and query head."""

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, head): ``layer``, ``head``, ``kv_head`` (the key/value head the
        key metrics read), then `GAP_METRICS` (NaN where a metric was not computed)."""
        import pandas as pd

        return pd.DataFrame(
            [(layer, head, kv, *values) for layer, head, kv, values in self.rows],
            columns=["layer", "head", "kv_head", *GAP_METRICS],
        )

    def __repr__(self) -> str:
        layers = len({r[0] for r in self.rows})
        return f"KeyGap({self.a!r} vs {self.b!r}, query={self.query!r}, {count(layers, 'layer')})"


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    nu, nv = float(np.linalg.norm(u)), float(np.linalg.norm(v))
    return float(u @ v) / (nu * nv) if nu > 0 and nv > 0 else math.nan


def _layer_rows(
    layer: LayerResult,
    a: str,
    b: str,
    query: str | None,
    metrics: set[str],
    *,
    max_points: int,
    permutations: int,
    projections: int,
    shrinkage: float,
    seed: int,
) -> list[tuple[str, int, int, tuple[float, ...]]]:
    ia, ib = key_indices(layer, [a, b], caller="key_gap")
    need_sums = metrics & {"centroid_gap", "air_population", "frechet"}
    if need_sums and layer.key_total is None:
        raise AttnProbeError(
            f"key_gap: layer {layer.name!r} has no key statistics; probe with key_stats=True "
            f"(the default) for {sorted(need_sums)}."
        )
    iq = None if query is None else query_index(layer, query, caller="key_gap")
    sampled = metrics & {"mmd2", "mmd_p_value", "sliced_w2", "auc"}
    if sampled and layer.key_sample is None:
        raise AttnProbeError(
            f"key_gap: {sorted(sampled)} need sampled keys; probe with reservoir_size=... "
            f"(e.g. 2000) or leave these metrics out (layer {layer.name!r})."
        )
    heads, kv_heads = layer.num_heads, layer.num_kv_heads
    group = heads // kv_heads
    key_mean = layer.key_mean.double().numpy() if layer.key_total is not None else None
    gaps = None
    if key_mean is not None and "centroid_gap" in metrics:
        if not np.isfinite(key_mean[:, [ia, ib]]).all():
            raise AnalysisError(
                f"key_gap: layer {layer.name!r} has no finite mean key of {a!r} and {b!r} (a "
                "group without keys, or NaN/Inf in the keys); run data with tokens of both "
                "groups through the layer, or leave 'centroid_gap' out of metrics."
            )
        gaps = centroid_gap(layer, a, b)  # (Hk,)
    per_kv: dict[int, dict[str, float]] = {}
    for kv in range(kv_heads):
        values: dict[str, float] = {}
        if gaps is not None:
            values["centroid_gap"] = float(gaps[kv])
        if "frechet" in metrics:
            if layer.key_outer is None or layer.key_count is None or layer.key_total is None:
                values["frechet"] = math.nan
            else:
                stats = []
                for g in (ia, ib):
                    stats.append(
                        D.covariance_from_sums(
                            float(layer.key_count[g]),
                            layer.key_total[kv, g].double().numpy(),
                            layer.key_outer[kv, g].double().numpy(),
                            shrinkage=shrinkage,
                        )
                    )
                (mu_a, cov_a), (mu_b, cov_b) = stats
                values["frechet"] = D.frechet_distance(mu_a, cov_a, mu_b, cov_b)
        if sampled:
            assert layer.key_sample is not None
            xa = layer.key_sample[ia][:, kv].double().numpy()  # (n_a, D)
            xb = layer.key_sample[ib][:, kv].double().numpy()  # (n_b, D)
            enough = len(xa) >= 2 and len(xb) >= 2
            if metrics & {"mmd2", "mmd_p_value"} and enough:
                mmd = D.mmd2_unbiased(
                    xa, xb, max_points=max_points, permutations=permutations, seed=seed
                )
                values["mmd2"] = mmd.mmd2
                values["mmd_p_value"] = math.nan if mmd.p_value is None else mmd.p_value
            if "sliced_w2" in metrics and len(xa) and len(xb):
                values["sliced_w2"] = D.sliced_wasserstein2(
                    xa, xb, projections=projections, seed=seed
                )
            if "auc" in metrics and min(len(xa), len(xb)) >= 5:
                values["auc"] = D.two_sample_auc(xa, xb, seed=seed)
        per_kv[kv] = values
    rows = []
    query_mean = (
        layer.query_mean.double().numpy()
        if iq is not None and "air_population" in metrics and layer.query_total is not None
        else None
    )
    per_head_air = (
        air(layer, query, a, b)  # (H,)
        if query is not None and "air" in metrics and layer.cosine_total is not None
        else None
    )
    for head in range(heads):
        kv = head // group
        values = dict(per_kv[kv])
        if per_head_air is not None:
            values["air"] = float(per_head_air[head])
        if query_mean is not None and key_mean is not None and iq is not None:
            q = query_mean[head, iq]
            values["air_population"] = _cos(q, key_mean[kv, ia]) - _cos(q, key_mean[kv, ib])
        rows.append((layer.name, head, kv, tuple(values.get(m, math.nan) for m in GAP_METRICS)))
    return rows


def key_gap(
    result: ProbeResult,
    a: str,
    b: str,
    *,
    query: str | None = None,
    metrics: Sequence[str] | None = None,
    max_points: int = 2000,
    permutations: int = 0,
    projections: int = 128,
    shrinkage: float = 0.0,
    seed: int = 0,
) -> KeyGap:
    """How far apart the key distributions of modalities ``a`` and ``b`` are, per layer and
    head (``docs/concepts/key-gap.md``).

    - ``centroid_gap``: ``1 − cos(μ_a, μ_b)`` of the mean keys (streaming, exact);
    - ``air``: ``E_i[cos(q_i, k̄ᵃ_i) − cos(q_i, k̄ᵇ_i)]`` with per-sample mean keys and the
      per-sample mean query of ``query`` (RollingQ, Ni et al. 2025, arXiv 2506.11465);
      positive = ``a`` favoured (streaming, exact);
    - ``air_population``: ``cos(q̄, μ_a) − cos(q̄, μ_b)`` with pooled means (streaming, exact);
    - ``frechet``: ``‖μ_a−μ_b‖² + Tr(Σ_a + Σ_b − 2(Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2})`` from the
      streaming ``Σ k kᵀ`` (probe with ``second_moment=True``; NaN otherwise);
    - ``mmd2`` (unbiased, RBF kernel, median-heuristic bandwidth) and, with ``permutations``,
      ``mmd_p_value``; ``sliced_w2``; ``auc`` (cross-validated linear two-sample AUC,
      0.5 = indistinguishable): from the probe's reservoir samples (``reservoir_size > 0``).

    Args:
        result: the probe's result.
        a: the first key modality (AIR is positive when it is favoured).
        b: the second key modality.
        query: the query group AIR is measured for (e.g. ``"cls"``); None skips AIR.
        metrics: the metrics to compute (default: those the result has data for).
        max_points: subsample size per modality for MMD.
        permutations: permutations for the MMD p-value (0 = none).
        projections: random directions for sliced Wasserstein.
        shrinkage: covariance shrinkage for the Fréchet distance (few keys per dimension).
        seed: seed of every random choice (subsampling, projections, folds, permutations).

    Examples:
        >>> import torch, attnprobe as ap
        >>> from attnprobe.models import FusionAttention
        >>> layer = FusionAttention(dim=8).eval()
        >>> with ap.probe(layer, modalities={"cls": 1, "audio": 6, "video": 6},
        ...               reservoir_size=64, second_moment=True) as p:
        ...     _ = layer(torch.randn(8, 12, 8))
        >>> gap = ap.key_gap(p.result(), "audio", "video", query="cls")
        >>> gap.to_frame().columns[:5].tolist()
        ['layer', 'head', 'kv_head', 'centroid_gap', 'air']
    """
    if not isinstance(result, ProbeResult):
        raise AttnProbeError(
            f"key_gap: expected an attnprobe.ProbeResult, received {type(result).__name__}."
        )
    if a == b:
        raise AttnProbeError(f"key_gap: expected two different modalities, received {a!r} twice.")
    if metrics is None:
        chosen = {"centroid_gap", "frechet"}
        if query is not None:
            chosen |= {"air", "air_population"}
        if all(layer.key_sample is not None for layer in result.layers):
            chosen |= {"mmd2", "sliced_w2", "auc"}
            if permutations:
                chosen.add("mmd_p_value")
    else:
        chosen = set(metrics)
        unknown = sorted(chosen - set(GAP_METRICS))
        if unknown:
            raise AttnProbeError(
                f"key_gap: unknown metrics {unknown}; expected some of {list(GAP_METRICS)}."
            )
        if chosen & {"air", "air_population"} and query is None:
            raise AttnProbeError(
                "key_gap: AIR needs the query group it is measured for; pass query=... "
                "(e.g. 'cls')."
            )
    rows: list[tuple[str, int, int, tuple[float, ...]]] = []
    for layer in result.layers:
        rows.extend(
            _layer_rows(
                layer,
                a,
                b,
                query,
                chosen,
                max_points=max_points,
                permutations=permutations,
                projections=projections,
                shrinkage=shrinkage,
                seed=seed,
            )
        )
    return KeyGap(a, b, query, tuple(rows))
