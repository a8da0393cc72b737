"""The statistics a probe can accumulate (definitions in ``docs/concepts/statistics.md``).

Shapes: ``H`` query heads, ``Hk`` key/value heads, ``D`` head size, ``Gq`` query groups,
``Gk`` key groups, ``N`` samples. Every sum is float64.

`attnprobe.probe`'s options are shortcuts for these: every probe keeps `Mass`;
``key_stats=True`` adds `KeyMoments` (``second_moment`` → ``outer=True``), `QueryMoments` and
`Cosines`; ``entropy=True`` adds `Entropy`; ``reservoir_size=n`` adds ``KeySample(n, seed)``;
``per_sample=True`` adds `SampleMass` (and `SampleMeans` with key statistics);
``store_maps=True`` adds `Maps`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attnprobe import functional
from attnprobe.stats._call import Call
from attnprobe.stats._contract import Dims, State, Statistic, ratio

__all__ = [
    "ENTROPY_CHUNK_ELEMENTS",
    "Cosines",
    "Entropy",
    "KeyMoments",
    "KeyNorm",
    "KeySample",
    "Maps",
    "Mass",
    "QueryMoments",
    "SampleMass",
    "SampleMeans",
    "from_options",
]

ENTROPY_CHUNK_ELEMENTS = 1 << 22
"""Attention weights held at once while computing within-group entropies (`Entropy`)."""


def _per_sample_mean(total: Tensor, count: Tensor) -> Tensor:
    """``[B, H, G, X]`` sums over ``[B, G]`` counts, as float32 on the CPU (NaN where a sample
    has no token of a group)."""
    return (total / count.unsqueeze(1).unsqueeze(-1)).float().cpu()


@dataclass(frozen=True)
class Mass(Statistic):
    """Attention mass of each query group on each key group (``docs/concepts/attention-mass.md``):
    the mean over kept query rows of the post-softmax probability summed over a key group's
    tokens. Every probe keeps it.

    States: ``mass_total`` ``[H, Gq, Gk]`` (Σ over rows), ``num_queries`` ``[Gq]``. Derived:
    ``mass`` ``[H, Gq, Gk]``.
    """

    name = "mass"

    @property
    def fused(self) -> frozenset[str]:
        return frozenset({"mass"})

    def states(self, dims: Dims) -> dict[str, State]:
        heads, gq, gk = dims.num_heads, len(dims.query_groups), len(dims.key_groups)
        return {"mass_total": State((heads, gq, gk)), "num_queries": State((gq,))}

    def update(self, call: Call) -> dict[str, Any]:
        sums = call.mass_sums
        return {"mass_total": sums.total, "num_queries": sums.count}

    def derive(self, states: Mapping[str, Any]) -> dict[str, Tensor]:
        return {"mass": ratio(states["mass_total"], states["num_queries"].view(1, -1, 1))}


def _moment_rows(
    kind: str, count: Tensor, total: Tensor, total_sq: Tensor, groups: tuple[str, ...]
) -> list[tuple[str, int, str, int, float, float]]:
    mean = ratio(total, count.view(1, -1, 1))  # (H, G, D)
    msq = ratio(total_sq.sum(-1), count.view(1, -1))  # (H, G)
    return [
        (kind, head, group, int(count[g]), float(mean[head, g].norm()), float(msq[head, g].sqrt()))
        for head in range(total.shape[0])
        for g, group in enumerate(groups)
    ]


@dataclass(frozen=True)
class KeyMoments(Statistic):
    """Per key head and key group: token count, ``Σ k``, ``Σ k²`` (elementwise) and, with
    ``outer``, ``Σ k kᵀ`` (for Fréchet distances; ``D × D`` each).

    States: ``key_count`` ``[Gk]``, ``key_total`` and ``key_total_sq`` ``[Hk, Gk, D]``,
    ``key_outer`` ``[Hk, Gk, D, D]``. Derived: ``key_mean``, ``key_var`` ``[Hk, Gk, D]``.
    """

    outer: bool = False
    name = "key_moments"

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"key_outer"}) if self.outer else frozenset()

    @property
    def fused(self) -> frozenset[str]:
        return frozenset() if self.outer else frozenset({"key_moments"})

    def states(self, dims: Dims) -> dict[str, State]:
        kv, gk, dim = dims.num_kv_heads, len(dims.key_groups), dims.head_dim
        out = {
            "key_count": State((gk,)),
            "key_total": State((kv, gk, dim)),
            "key_total_sq": State((kv, gk, dim)),
        }
        if self.outer:
            out["key_outer"] = State((kv, gk, dim, dim))
        return out

    def update(self, call: Call) -> dict[str, Any]:
        km = call.key_moments
        out = {"key_count": km.count, "key_total": km.total, "key_total_sq": km.total_sq}
        if self.outer:
            assert km.outer is not None
            out["key_outer"] = km.outer
        return out

    def derive(self, states: Mapping[str, Any]) -> dict[str, Tensor]:
        count = states["key_count"].view(1, -1, 1)
        mean = ratio(states["key_total"], count)
        return {"key_mean": mean, "key_var": ratio(states["key_total_sq"], count) - mean**2}

    def frame_rows(
        self, states: Mapping[str, Any], dims: Dims
    ) -> list[tuple[str, int, str, int, float, float]]:
        return _moment_rows(
            "key",
            states["key_count"],
            states["key_total"],
            states["key_total_sq"],
            dims.key_groups,
        )


@dataclass(frozen=True)
class QueryMoments(Statistic):
    """Per query head and query group: count, ``Σ q`` and ``Σ q²`` of the kept query rows.

    States: ``query_count`` ``[Gq]``, ``query_total`` and ``query_total_sq`` ``[H, Gq, D]``.
    Derived: ``query_mean`` ``[H, Gq, D]``.
    """

    name = "query_moments"

    @property
    def fused(self) -> frozenset[str]:
        return frozenset({"query_moments"})

    def states(self, dims: Dims) -> dict[str, State]:
        heads, gq, dim = dims.num_heads, len(dims.query_groups), dims.head_dim
        return {
            "query_count": State((gq,)),
            "query_total": State((heads, gq, dim)),
            "query_total_sq": State((heads, gq, dim)),
        }

    def update(self, call: Call) -> dict[str, Any]:
        qm = call.query_moments
        return {"query_count": qm.count, "query_total": qm.total, "query_total_sq": qm.total_sq}

    def derive(self, states: Mapping[str, Any]) -> dict[str, Tensor]:
        count = states["query_count"].view(1, -1, 1)
        return {"query_mean": ratio(states["query_total"], count)}

    def frame_rows(
        self, states: Mapping[str, Any], dims: Dims
    ) -> list[tuple[str, int, str, int, float, float]]:
        return _moment_rows(
            "query",
            states["query_count"],
            states["query_total"],
            states["query_total_sq"],
            dims.query_groups,
        )


@dataclass(frozen=True)
class Cosines(Statistic):
    """Σ over samples of ``cos(q̄_i, k̄_i)`` between each sample's mean query of a query group
    and its mean key of a key group (``functional.mean_cosines``): AIR(a, b) of query group q
    is ``mean_cosine[:, q, a] − mean_cosine[:, q, b]`` (RollingQ, Ni et al., ICML 2025,
    arXiv 2506.11465; ``docs/concepts/key-gap.md``).

    States: ``cosine_total`` ``[H, Gq, Gk]``, ``cosine_count`` ``[Gq, Gk]`` (samples with tokens
    in both groups). Derived: ``mean_cosine`` ``[H, Gq, Gk]``.
    """

    name = "cosines"

    @property
    def fused(self) -> frozenset[str]:
        return frozenset({"cosines"})

    def states(self, dims: Dims) -> dict[str, State]:
        heads, gq, gk = dims.num_heads, len(dims.query_groups), len(dims.key_groups)
        return {"cosine_total": State((heads, gq, gk)), "cosine_count": State((gq, gk))}

    def update(self, call: Call) -> dict[str, Any]:
        qm, km = call.query_moments, call.key_moments
        total, count = functional.mean_cosines(
            qm.sample_total, qm.sample_count, km.sample_total, km.sample_count
        )
        return {"cosine_total": total, "cosine_count": count}

    def derive(self, states: Mapping[str, Any]) -> dict[str, Tensor]:
        return {"mean_cosine": ratio(states["cosine_total"], states["cosine_count"].unsqueeze(0))}


@dataclass(frozen=True)
class Entropy(Statistic):
    """Σ over query rows of the entropy of the attention renormalised inside each key group
    (``functional.group_entropy``; ``docs/concepts/attention-mass.md``).

    It needs the attention weights themselves, so it runs the kernel with ``V = I`` over chunks
    of kept query rows (`ENTROPY_CHUNK_ELEMENTS` weights at a time): memory stays bounded, the
    cost is that of a full attention with ``Lk`` value columns.

    States: ``entropy_total`` and ``entropy_count`` ``[H, Gq, Gk]`` (rows with mass on the
    group). Derived: ``entropy`` ``[H, Gq, Gk]``.
    """

    name = "entropy"

    def states(self, dims: Dims) -> dict[str, State]:
        shape = (dims.num_heads, len(dims.query_groups), len(dims.key_groups))
        return {"entropy_total": State(shape), "entropy_count": State(shape)}

    def update(self, call: Call) -> dict[str, Any]:
        query = call.query  # (B, H, R, D)
        batch, heads, rows, _ = query.shape
        key_len = call.key.shape[2]
        groups = len(call.dims.key_groups)
        query_onehot = call.query_onehot  # (B, R, Gq)
        chunk = max(1, ENTROPY_CHUNK_ELEMENTS // max(1, batch * heads * key_len))
        total = torch.zeros(heads, query_onehot.shape[-1], groups, dtype=torch.float64)
        count = torch.zeros_like(total)
        total, count = total.to(query.device), count.to(query.device)
        for start in range(0, rows, chunk):
            index = torch.arange(start, min(start + chunk, rows), device=query.device)  # (C,)
            weights = call.attention(query, index)  # (B, H, C, Lk)
            entropy, defined = functional.group_entropy(weights, call.key_labels, groups)
            rows_onehot = query_onehot.index_select(1, index)  # (B, C, Gq)
            total += torch.einsum("bhcg,bcq->hqg", entropy, rows_onehot)
            count += torch.einsum("bhcg,bcq->hqg", defined.double(), rows_onehot)
        return {"entropy_total": total, "entropy_count": count}

    def derive(self, states: Mapping[str, Any]) -> dict[str, Tensor]:
        return {"entropy": ratio(states["entropy_total"], states["entropy_count"])}


@dataclass(frozen=True)
class KeySample(Statistic):
    """A seeded uniform sample of at most ``size`` key vectors per key group (priority
    sampling, `attnprobe.stats.Reservoir`), for distribution distances.

    State: ``key_sample``, per key group ``([n, Hk, D] rows, [n] priorities)``.
    """

    size: int
    seed: int = 0
    name = "key_sample"

    def __post_init__(self) -> None:
        from attnprobe.errors import ProbeConfigError

        if self.size <= 0:
            raise ProbeConfigError(
                f"KeySample: expected size > 0, received {self.size}; leave the statistic out "
                "for no sample."
            )

    def states(self, dims: Dims) -> dict[str, State]:
        shape = (dims.num_kv_heads, dims.head_dim)
        return {"key_sample": State(shape, "reservoir", capacity=self.size, seed=self.seed)}

    def update(self, call: Call) -> dict[str, Any]:
        tokens = call.key.transpose(1, 2)  # (B, Lk, Hk, D)
        labels = call.key_labels  # (B, Lk)
        groups = len(call.dims.key_groups)
        return {"key_sample": tuple(tokens[labels == g] for g in range(groups))}  # (n, Hk, D)


@dataclass(frozen=True)
class SampleMass(Statistic):
    """Each sample's mass ``[H, Gq, Gk]`` (mean over its own query rows of each group), in the
    order samples were seen; NaN where a sample has no query of a group. Memory grows with the
    number of samples.

    State: ``sample_mass`` ``[N, H, Gq, Gk]`` (float32).
    """

    name = "sample_mass"

    def states(self, dims: Dims) -> dict[str, State]:
        shape = (dims.num_heads, len(dims.query_groups), len(dims.key_groups))
        return {"sample_mass": State(shape, "cat")}

    def update(self, call: Call) -> dict[str, Any]:
        sums = call.mass_sums
        return {"sample_mass": _per_sample_mean(sums.sample_total, sums.sample_count)}


@dataclass(frozen=True)
class SampleMeans(Statistic):
    """Each sample's mean key of every key group and mean query of every query group (for
    per-sample AIR); NaN where a sample has no token of a group.

    States: ``sample_key_mean`` ``[N, Hk, Gk, D]``, ``sample_query_mean`` ``[N, H, Gq, D]``
    (float32).
    """

    name = "sample_means"

    def states(self, dims: Dims) -> dict[str, State]:
        kv, heads, dim = dims.num_kv_heads, dims.num_heads, dims.head_dim
        return {
            "sample_key_mean": State((kv, len(dims.key_groups), dim), "cat"),
            "sample_query_mean": State((heads, len(dims.query_groups), dim), "cat"),
        }

    def update(self, call: Call) -> dict[str, Any]:
        km, qm = call.key_moments, call.query_moments
        return {
            "sample_key_mean": _per_sample_mean(km.sample_total, km.sample_count),
            "sample_query_mean": _per_sample_mean(qm.sample_total, qm.sample_count),
        }


@dataclass(frozen=True)
class Maps(Statistic):
    """Full attention maps of the kept query rows, one ``[B, H, R, Lk]`` tensor per call
    (float32, on the CPU): small inputs only, ``O(R·Lk)`` memory per call. The masses are then
    read from the maps.

    State: ``maps``, a tuple of tensors.
    """

    name = "maps"

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"maps"})

    def states(self, dims: Dims) -> dict[str, State]:
        return {"maps": State((), "list")}

    def update(self, call: Call) -> dict[str, Any]:
        return {"maps": call.maps.float().cpu()}


@dataclass(frozen=True)
class KeyNorm(Statistic):
    """Mean key norm per key head and key group: ``E_{j∈T_m} ‖k_j‖`` over key tokens and
    samples. Unlike ``‖key_mean‖`` (`KeyMoments`), it does not shrink when keys spread out.

    States: ``key_norm_total`` ``[Hk, Gk]`` (Σ ‖k‖), ``key_norm_count`` ``[Gk]``. Derived:
    ``key_norm`` ``[Hk, Gk]``.

    Examples:
        >>> import torch, attnprobe as ap
        >>> from attnprobe.models import FusionAttention
        >>> layer = FusionAttention(dim=8, num_heads=2).eval()
        >>> with ap.probe(layer, modalities={"cls": 1, "a": 2, "b": 3},
        ...               statistics=[KeyNorm()]) as p:
        ...     _ = layer(torch.randn(4, 5, 8))
        >>> p.result().layers[0].value("key_norm").shape
        torch.Size([2, 3])
    """

    name = "key_norm"

    def states(self, dims: Dims) -> dict[str, State]:
        kv, gk = dims.num_kv_heads, len(dims.key_groups)
        return {"key_norm_total": State((kv, gk)), "key_norm_count": State((gk,))}

    def update(self, call: Call) -> dict[str, Any]:
        norms = call.key.double().norm(dim=-1)  # (B, Hk, Lk)
        onehot = call.key_onehot  # (B, Lk, Gk), zero rows at ignored keys
        norms = norms.masked_fill(call.key_labels.unsqueeze(1) < 0, 0.0)  # NaN-safe padding
        return {
            "key_norm_total": torch.einsum("bhl,blg->hg", norms, onehot),  # (Hk, Gk)
            "key_norm_count": onehot.sum((0, 1)),  # (Gk,)
        }

    def derive(self, states: Mapping[str, Any]) -> dict[str, Tensor]:
        return {"key_norm": ratio(states["key_norm_total"], states["key_norm_count"])}


def from_options(
    *,
    key_stats: bool = True,
    second_moment: bool = False,
    reservoir_size: int = 0,
    seed: int = 0,
    per_sample: bool = False,
    store_maps: bool = False,
    entropy: bool = False,
) -> tuple[Statistic, ...]:
    """The statistics that options of `attnprobe.Probe` select (see `Mass` and the others).

    Examples:
        >>> " ".join(s.name for s in from_options(per_sample=True))
        'mass key_moments query_moments cosines sample_mass sample_means'
    """
    chosen: list[Statistic] = [Mass()]
    if key_stats:
        chosen += [KeyMoments(outer=second_moment), QueryMoments(), Cosines()]
    if entropy:
        chosen.append(Entropy())
    if reservoir_size:
        chosen.append(KeySample(reservoir_size, seed))
    if per_sample:
        chosen.append(SampleMass())
        if key_stats:
            chosen.append(SampleMeans())
    if store_maps:
        chosen.append(Maps())
    return tuple(chosen)
