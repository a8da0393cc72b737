"""Modality bias from attention mass: which key group each query group listens to, and where.

Formulas: ``docs/concepts/attention-mass.md`` (the share ``M_m / Σ_n M_n`` is
`attnprobe.metrics.mass_shares`). Everything here is a pure function of a `ProbeResult`'s sums
and counts; nothing touches a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from numpy.typing import NDArray

from attnprobe._text import count
from attnprobe.errors import AttnProbeError
from attnprobe.metrics import mass_shares
from attnprobe.results import LayerResult, ProbeResult

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["BIAS_COLUMNS", "LayerBias", "ModalityBias", "modality_bias"]

Level = Literal["head", "layer", "model"]

BIAS_COLUMNS = (
    "layer",
    "head",
    "query_modality",
    "key_modality",
    "mass",
    "share",
    "token_share",
    "normalised_mass",
    "entropy",
    "num_queries",
)
"""Columns of `ModalityBias.to_frame` at ``level="head"`` (coarser levels drop ``head``, then
``layer``)."""

ALL_QUERIES = "all"
"""The query group of the rows that pool every query token of the layer (token-weighted)."""


@dataclass(frozen=True)
class LayerBias:
    """The bias numbers of one layer, as float64 numpy arrays."""

    name: str
    query_groups: tuple[str, ...]
    """Query groups, then `ALL_QUERIES` (every query token pooled)."""
    key_groups: tuple[str, ...]
    mass: NDArray[np.float64]
    """``[H, Gq + 1, Gk]`` attention mass ``M`` (the last query row pools all query tokens)."""
    num_queries: NDArray[np.float64]
    """``[Gq + 1]`` query tokens averaged over."""
    token_share: NDArray[np.float64]
    """``[Gk]`` ``L_m / Σ_n L_n`` over the included key groups (NaN where unknown)."""
    included: NDArray[np.bool_]
    """``[Gk]`` key groups that take part in shares (not excluded)."""
    entropy: NDArray[np.float64]
    """``[H, Gq + 1, Gk]`` within-group entropy (NaN unless probed with ``entropy=True``)."""

    @property
    def share(self) -> NDArray[np.float64]:
        """``[H, Gq + 1, Gk]`` ``M_m / Σ_n M_n`` over the included key groups (NaN elsewhere;
        `attnprobe.metrics.mass_shares`)."""
        mass = torch.from_numpy(self.mass)  # (H, Gq+1, Gk)
        share: NDArray[np.float64] = mass_shares(mass, torch.from_numpy(self.included)).numpy()
        return share

    @property
    def normalised_mass(self) -> NDArray[np.float64]:
        """``[H, Gq + 1, Gk]`` share over token share: 1 = the fair share by token count."""
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio: NDArray[np.float64] = self.share / self.token_share
        return ratio


def _layer_bias(layer: LayerResult, exclude: tuple[str, ...]) -> LayerBias:
    totals = layer.mass_total.double().numpy()  # (H, Gq, Gk)
    counts = layer.num_queries.double().numpy()  # (Gq,)
    pooled = totals.sum(1, keepdims=True)  # (H, 1, Gk): every query token, token-weighted
    totals = np.concatenate([totals, pooled], axis=1)  # (H, Gq+1, Gk)
    counts = np.concatenate([counts, counts.sum(keepdims=True)])  # (Gq+1,)
    with np.errstate(invalid="ignore", divide="ignore"):
        mass = totals / counts.reshape(1, -1, 1)  # (H, Gq+1, Gk)
    included = np.array([g not in exclude for g in layer.key_groups])
    if layer.key_count is not None:
        tokens = np.where(included, layer.key_count.double().numpy(), 0.0)  # (Gk,)
        with np.errstate(invalid="ignore", divide="ignore"):
            token_share = tokens / tokens.sum()
        token_share[~included] = np.nan
    else:
        token_share = np.full(len(layer.key_groups), np.nan)
    if layer.entropy_total is not None and layer.entropy_count is not None:
        e_total = layer.entropy_total.double().numpy()  # (H, Gq, Gk)
        e_count = layer.entropy_count.double().numpy()
        e_total = np.concatenate([e_total, e_total.sum(1, keepdims=True)], axis=1)
        e_count = np.concatenate([e_count, e_count.sum(1, keepdims=True)], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            entropy = np.where(e_count > 0, e_total / np.where(e_count > 0, e_count, 1), np.nan)
    else:
        entropy = np.full(mass.shape, np.nan)
    return LayerBias(
        name=layer.name,
        query_groups=(*layer.query_groups, ALL_QUERIES),
        key_groups=layer.key_groups,
        mass=mass,
        num_queries=counts,
        token_share=token_share,
        included=included,
        entropy=entropy,
    )


@dataclass(frozen=True)
class ModalityBias:
    """Which modality each query group favours, per layer and head (`modality_bias`).

    Examples:
        >>> import torch, attnprobe as ap
        >>> from attnprobe.models import FusionAttention
        >>> layer = FusionAttention(dim=8).eval()
        >>> with ap.probe(layer, modalities={"cls": 1, "audio": 2, "video": 3}) as p:
        ...     _ = layer(torch.randn(4, 5, 8))
        >>> bias = ap.modality_bias(p.result(), exclude=["cls"])
        >>> frame = bias.to_frame(level="layer")
        >>> sorted(frame["query_modality"].unique())
        ['all', 'audio', 'cls', 'video']
        >>> shares = frame.loc[frame["query_modality"] == "cls", "share"].dropna()
        >>> round(float(shares.sum()), 6)
        1.0
    """

    layers: tuple[LayerBias, ...]
    exclude: tuple[str, ...]
    """Key groups left out of shares (special tokens such as ``cls``)."""

    def _layer(self, name: str | None) -> list[LayerBias]:
        if name is None:
            return list(self.layers)
        for layer in self.layers:
            if layer.name == name:
                return [layer]
        raise AttnProbeError(
            f"modality_bias: no layer {name!r}; layers: {[x.name for x in self.layers]}."
        )

    def to_frame(self, level: Level = "head") -> pd.DataFrame:
        """Tidy bias numbers; columns `BIAS_COLUMNS`.

        Args:
            level: ``"head"`` (one row per layer, head, query group, key group), ``"layer"``
                (mean over heads) or ``"model"`` (mean over layers and heads; layers must
                share their groups).

        ``query_modality == "all"`` rows pool every query token of the layer (token-weighted);
        ``share`` is ``M_m / Σ_n M_n`` over the non-excluded key groups, ``token_share`` is
        ``L_m / Σ_n L_n`` (key tokens, from the probe's key statistics), and
        ``normalised_mass = share / token_share`` (1 = fair share by token count);
        ``entropy`` is the entropy of the attention renormalised inside the key group, in nats
        (0 = one token stared at, ``log L_m`` = spread evenly; probe with ``entropy=True``,
        NaN otherwise).
        """
        import pandas as pd

        if level not in ("head", "layer", "model"):
            raise AttnProbeError(
                f"modality_bias: expected level 'head', 'layer' or 'model', received {level!r}."
            )
        rows = []
        for layer in self.layers:
            mass, share, norm = layer.mass, layer.share, layer.normalised_mass  # (H, Gq+1, Gk)
            entropy = layer.entropy
            if level != "head":
                mass, share, norm, entropy = (
                    x.mean(0, keepdims=True) for x in (mass, share, norm, entropy)
                )
            for h in range(mass.shape[0]):
                for q, query in enumerate(layer.query_groups):
                    for k, key in enumerate(layer.key_groups):
                        rows.append(
                            (
                                layer.name,
                                h,
                                query,
                                key,
                                mass[h, q, k],
                                share[h, q, k],
                                layer.token_share[k],
                                norm[h, q, k],
                                entropy[h, q, k],
                                int(layer.num_queries[q]),
                            )
                        )
        frame = pd.DataFrame(rows, columns=list(BIAS_COLUMNS))
        if level == "head":
            return frame
        frame = frame.drop(columns="head")
        if level == "layer":
            return frame
        groups = {(x.query_groups, x.key_groups) for x in self.layers}
        if len(groups) > 1:
            raise AttnProbeError(
                "modality_bias: level='model' averages over layers, which needs the same query "
                "and key groups in every layer; use level='layer'."
            )
        keys = ["query_modality", "key_modality"]
        values = ["mass", "share", "token_share", "normalised_mass", "entropy"]
        model = frame.groupby(keys, sort=False)[values].mean().reset_index()
        model["num_queries"] = frame.groupby(keys, sort=False)["num_queries"].sum().to_numpy()
        return model

    def log_ratio(self, a: str, b: str, level: Level = "head") -> pd.DataFrame:
        """``log(M_a / M_b)`` per row of `to_frame` (additive over layers): positive when the
        query group attends more to ``a`` than to ``b``.

        Returns:
            columns ``layer`` (unless ``level="model"``), ``head`` (at ``"head"``),
            ``query_modality``, ``log_ratio``.
        """
        frame = self.to_frame(level)
        for name in (a, b):
            if name not in set(frame["key_modality"]):
                raise AttnProbeError(
                    f"modality_bias: unknown key modality {name!r}; expected one of "
                    f"{sorted(set(frame['key_modality']))}."
                )
        index = [c for c in ("layer", "head", "query_modality") if c in frame.columns]
        wide = frame.pivot_table(index=index, columns="key_modality", values="mass", sort=False)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.log(wide[a].to_numpy() / wide[b].to_numpy())
        out = wide.index.to_frame(index=False)
        out["log_ratio"] = ratio
        return out

    def block(self, layer: str | None = None, head: int | None = None) -> pd.DataFrame:
        """The query group × key group matrix of masses (intra- vs cross-modal attention):
        one layer (or the mean over layers), one head (or the mean over heads)."""
        import pandas as pd

        chosen = self._layer(layer)
        mats = []
        for item in chosen:
            mass = item.mass[:, :-1]  # (H, Gq, Gk), without the pooled row
            if head is not None:
                if not 0 <= head < mass.shape[0]:
                    raise AttnProbeError(
                        f"modality_bias: layer {item.name!r} has {mass.shape[0]} heads, "
                        f"received head={head}."
                    )
                mats.append(mass[head])
            else:
                mats.append(mass.mean(0))
        if len({(x.query_groups, x.key_groups) for x in chosen}) > 1:
            raise AttnProbeError(
                "modality_bias: the layers have different groups; pass layer=... to block()."
            )
        matrix = np.mean(mats, axis=0)  # (Gq, Gk)
        return pd.DataFrame(
            matrix,
            index=pd.Index(chosen[0].query_groups[:-1], name="query_modality"),
            columns=pd.Index(chosen[0].key_groups, name="key_modality"),
        )

    def dominant(self, level: Level = "head", query: str = ALL_QUERIES) -> pd.DataFrame:
        """For each layer (and head), the key group with the largest share of ``query``'s
        attention, its share and the ratio to its fair share by token count."""
        frame = self.to_frame(level)
        frame = frame[(frame["query_modality"] == query) & frame["share"].notna()]
        if frame.empty:
            raise AttnProbeError(
                f"modality_bias: no shares for query group {query!r} (unknown group, or every "
                "key group excluded)."
            )
        index = [c for c in ("layer", "head") if c in frame.columns]
        if not index:
            best = frame.loc[[frame["share"].idxmax()]]
        else:
            best = frame.loc[frame.groupby(index, sort=False)["share"].idxmax()]
        columns = [*index, "key_modality", "share", "normalised_mass"]
        return best[columns].rename(columns={"key_modality": "dominant"}).reset_index(drop=True)

    def __repr__(self) -> str:
        return (
            f"ModalityBias({count(len(self.layers), 'layer')}"
            + (f", excluding {list(self.exclude)}" if self.exclude else "")
            + ")"
        )


def modality_bias(result: ProbeResult, *, exclude: Sequence[str] = ()) -> ModalityBias:
    """Attention-based modality bias of every probed layer (``docs/concepts/attention-mass.md``).

    For query group ``q`` and key group ``m`` of a layer and head: the attention mass
    ``M_m = E[Σ_{j∈T_m} a_{q,j}]`` (the probe's mass), the share ``M_m / Σ_n M_n``, the
    token-normalised mass ``share / (L_m / Σ_n L_n)`` (1 = fair share by token count), the log
    ratio ``log(M_a / M_b)`` (`ModalityBias.log_ratio`), the block matrix of masses
    (`ModalityBias.block`) and the dominant key group (`ModalityBias.dominant`). Shares and
    token shares are taken over the key groups not in ``exclude``.

    Args:
        result: a `ProbeResult` (``key_stats=True``, the default, for token shares).
        exclude: key groups to leave out of shares, e.g. ``["cls"]`` or padding-like groups.

    Returns:
        A `ModalityBias`; ``to_frame(level=...)`` gives the tidy table.
    """
    if not isinstance(result, ProbeResult):
        raise AttnProbeError(
            f"modality_bias: expected an attnprobe.ProbeResult (probe.result()), received "
            f"{type(result).__name__}."
        )
    if not result.layers:
        raise AttnProbeError("modality_bias: the result has no layers.")
    exclude_t = tuple(exclude)
    known = {g for layer in result.layers for g in layer.key_groups}
    unknown = [g for g in exclude_t if g not in known]
    if unknown:
        raise AttnProbeError(
            f"modality_bias: exclude names unknown key groups {unknown}; key groups: "
            f"{sorted(known)}."
        )
    for layer in result.layers:
        if all(g in exclude_t for g in layer.key_groups):
            raise AttnProbeError(
                f"modality_bias: exclude={list(exclude_t)} leaves no key group of layer "
                f"{layer.name!r} to share attention among."
            )
    return ModalityBias(tuple(_layer_bias(x, exclude_t) for x in result.layers), exclude_t)
