"""Frozen result objects of a probe, and their tidy DataFrames.

Results hold the float64 *sums and counts* the probe accumulated (CPU tensors), and derive means
on access, so two results over disjoint data merge exactly (`ProbeResult.merge`).
"""

from __future__ import annotations

import dataclasses
import html
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

from attnprobe._io import load_tagged
from attnprobe._text import count
from attnprobe.errors import AttnProbeError
from attnprobe.stats import (
    Dims,
    State,
    States,
    Statistic,
    from_options,
    merge_states,
    statistic_class,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["MASS_COLUMNS", "STATS_COLUMNS", "LayerResult", "ProbeResult"]

MASS_COLUMNS = ("layer", "head", "query_modality", "key_modality", "mass", "num_queries")
"""Columns of `ProbeResult.to_frame`, in order."""

_RESULT_FORMAT = "attnprobe.result/2"

STATS_COLUMNS = ("layer", "kind", "head", "modality", "num_tokens", "mean_norm", "rms")
"""Columns of `ProbeResult.stats_frame`, in order."""


_LEGACY_FORMAT = "attnprobe.result/1"


@dataclass(frozen=True, repr=False)
class LayerResult:
    """What a probe captured at one attention call site (a layer's N-th kernel call).

    It holds the declared states of the probe's statistics (`attnprobe.stats`): float64 sums
    and counts, per-sample rows, samples, maps — and derives means on access, so two results
    over disjoint data merge exactly (`merge`). The states of the built-in statistics are also
    attributes (``mass_total``, ``key_total``, …; None when that statistic was not kept);
    `value` reads any statistic's derived values, `states` any state.

    Shapes: ``H`` query heads, ``Hk`` key/value heads, ``D`` head size, ``Gq`` query groups,
    ``Gk`` key groups, ``N`` samples.
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
    statistics: tuple[Statistic, ...]
    """The statistics kept (`attnprobe.stats`); `Mass` always."""
    states: States
    """Every declared state of `statistics`, by name."""

    @property
    def dims(self) -> Dims:
        """The call site's sizes."""
        return Dims(
            self.num_heads, self.num_kv_heads, self.head_dim, self.query_groups, self.key_groups
        )

    def _state(self, name: str) -> Any:
        return self.states.get(name)

    def _find(self, name: str) -> Tensor | None:
        for statistic in self.statistics:
            derived = statistic.derive(self.states)
            if name in derived:
                return derived[name]
        return None

    def value(self, name: str) -> Tensor:
        """A value derived by one of the `statistics` (``"mass"``, ``"key_mean"``, ``"entropy"``,
        or that of a statistic of your own).

        Raises:
            AttnProbeError: no kept statistic derives ``name``.
        """
        found = self._find(name)
        if found is None:
            known = [k for statistic in self.statistics for k in statistic.derive(self.states)]
            raise AttnProbeError(
                f"layer {self.name!r}: no statistic kept by the probe derives {name!r}; derived "
                f"values: {known}. Probe with the statistic that computes it (statistics=[...])."
            )
        return found

    # -- the states of the built-in statistics -------------------------------------------------
    @property
    def mass_total(self) -> Tensor:
        """``[H, Gq, Gk]`` Σ over kept query rows of the mass on each key group."""
        return cast(Tensor, self.states["mass_total"])

    @property
    def num_queries(self) -> Tensor:
        """``[Gq]`` kept query rows (the denominator of `mass`)."""
        return cast(Tensor, self.states["num_queries"])

    @property
    def key_count(self) -> Tensor | None:
        """``[Gk]`` key tokens per group (`KeyMoments`)."""
        return cast("Tensor | None", self._state("key_count"))

    @property
    def key_total(self) -> Tensor | None:
        """``[Hk, Gk, D]`` Σ k (`KeyMoments`)."""
        return cast("Tensor | None", self._state("key_total"))

    @property
    def key_total_sq(self) -> Tensor | None:
        """``[Hk, Gk, D]`` Σ k² (elementwise; `KeyMoments`)."""
        return cast("Tensor | None", self._state("key_total_sq"))

    @property
    def key_outer(self) -> Tensor | None:
        """``[Hk, Gk, D, D]`` Σ k kᵀ (`KeyMoments` with ``outer``; ``second_moment=True``)."""
        return cast("Tensor | None", self._state("key_outer"))

    @property
    def query_count(self) -> Tensor | None:
        """``[Gq]`` query tokens per group (`QueryMoments`)."""
        return cast("Tensor | None", self._state("query_count"))

    @property
    def query_total(self) -> Tensor | None:
        """``[H, Gq, D]`` Σ q (`QueryMoments`)."""
        return cast("Tensor | None", self._state("query_total"))

    @property
    def query_total_sq(self) -> Tensor | None:
        """``[H, Gq, D]`` Σ q² (`QueryMoments`)."""
        return cast("Tensor | None", self._state("query_total_sq"))

    @property
    def cosine_total(self) -> Tensor | None:
        """``[H, Gq, Gk]`` Σ over samples of ``cos(q̄_i, k̄_i)`` (`Cosines`)."""
        return cast("Tensor | None", self._state("cosine_total"))

    @property
    def cosine_count(self) -> Tensor | None:
        """``[Gq, Gk]`` samples with tokens in both groups (`Cosines`)."""
        return cast("Tensor | None", self._state("cosine_count"))

    @property
    def entropy_total(self) -> Tensor | None:
        """``[H, Gq, Gk]`` Σ over query rows of the within-group entropy (`Entropy`)."""
        return cast("Tensor | None", self._state("entropy_total"))

    @property
    def entropy_count(self) -> Tensor | None:
        """``[H, Gq, Gk]`` query rows with attention on the group (`Entropy`)."""
        return cast("Tensor | None", self._state("entropy_count"))

    @property
    def key_sample(self) -> tuple[Tensor, ...] | None:
        """Per key group, a seeded uniform reservoir sample of key vectors ``[n, Hk, D]``
        (`KeySample`)."""
        sample = self._state("key_sample")
        return None if sample is None else tuple(rows for rows, _ in sample)

    @property
    def key_sample_priority(self) -> tuple[Tensor, ...] | None:
        """The reservoir priorities of `key_sample` (what makes merging exact)."""
        sample = self._state("key_sample")
        return None if sample is None else tuple(priority for _, priority in sample)

    @property
    def reservoir_size(self) -> int:
        """Capacity of each reservoir of `key_sample` (0 without one)."""
        for statistic in self.statistics:
            declared = statistic.states(self.dims).get("key_sample")
            if declared is not None:
                return declared.capacity
        return 0

    @property
    def sample_mass(self) -> Tensor | None:
        """``[N, H, Gq, Gk]`` per-sample mass, in the order samples were seen (`SampleMass`;
        ``per_sample=True``); NaN where a sample has no query of that group."""
        return cast("Tensor | None", self._state("sample_mass"))

    @property
    def sample_key_mean(self) -> Tensor | None:
        """``[N, Hk, Gk, D]`` per-sample mean key of each group (`SampleMeans`); NaN where a
        sample has no token of that group."""
        return cast("Tensor | None", self._state("sample_key_mean"))

    @property
    def sample_query_mean(self) -> Tensor | None:
        """``[N, H, Gq, D]`` per-sample mean query of each query group (`SampleMeans`)."""
        return cast("Tensor | None", self._state("sample_query_mean"))

    @property
    def maps(self) -> tuple[Tensor, ...] | None:
        """Full attention maps ``[B, H, R, Lk]`` per call (`Maps`; ``store_maps=True``)."""
        return cast("tuple[Tensor, ...] | None", self._state("maps"))

    # -- derived values (each formula is its statistic's `derive`) -----------------------------
    def _derived(
        self, name: str, what: str, fix: str = "probe with key_stats=True (the default)"
    ) -> Tensor:
        found = self._find(name)
        if found is None:
            raise AttnProbeError(f"layer {self.name!r}: {what} was not collected; {fix}.")
        return found

    @property
    def mass(self) -> Tensor:
        """``[H, Gq, Gk]`` attention mass (``docs/concepts/attention-mass.md``): mean over kept
        query rows of the post-softmax probability summed over each key group's tokens
        (`attnprobe.stats.Mass`)."""
        return self._derived("mass", "the attention mass")

    @property
    def residual(self) -> Tensor:
        """``[H, Gq]`` ``1 − Σ_g mass``: mass on ignored keys or sink logits (never
        renormalised away)."""
        return 1.0 - self.mass.sum(-1)

    @property
    def key_mean(self) -> Tensor:
        """``[Hk, Gk, D]`` mean key per head and group, pooled over tokens and samples."""
        return self._derived("key_mean", "key statistics")

    @property
    def key_var(self) -> Tensor:
        """``[Hk, Gk, D]`` per-coordinate population variance of the keys."""
        return self._derived("key_var", "key statistics")

    @property
    def query_mean(self) -> Tensor:
        """``[H, Gq, D]`` mean query per head and query group."""
        return self._derived("query_mean", "query statistics")

    @property
    def entropy(self) -> Tensor:
        """``[H, Gq, Gk]`` mean over query rows of the entropy of the attention renormalised
        inside each key group (``docs/concepts/attention-mass.md``; probe with
        ``entropy=True``)."""
        return self._derived("entropy", "the within-group entropy", "probe with entropy=True")

    @property
    def mean_cosine(self) -> Tensor:
        """``[H, Gq, Gk]`` ``E_i[cos(q̄_i, k̄_i)]``; AIR(a, b) for query group q is
        ``mean_cosine[:, q, a] − mean_cosine[:, q, b]`` (RollingQ, arXiv 2506.11465)."""
        return self._derived("mean_cosine", "per-sample cosines")

    # -- merging, frames -------------------------------------------------------------------------
    def merge(self, other: LayerResult) -> LayerResult:
        """The result over the data of both (each state merged by its rule: sums added, samples
        concatenated, reservoirs merged)."""
        same = (self.name, self.dims, self.statistics)
        theirs = (other.name, other.dims, other.statistics)
        if same != theirs:
            raise AttnProbeError(
                f"cannot merge layer results: expected matching (name, heads, kv heads, head "
                f"dim, query groups, key groups, statistics), received {same} and {theirs}."
            )
        declared: dict[str, State] = {}
        for statistic in self.statistics:
            declared.update(statistic.states(self.dims))
        return dataclasses.replace(
            self,
            num_calls=self.num_calls + other.num_calls,
            states=States(merge_states(declared, self.states, other.states)),
        )

    @property
    def empty_groups(self) -> tuple[str, ...]:
        """Query groups that had no token in the data (their masses are undefined, NaN; they
        have no rows in `to_frame`)."""
        counts = self.num_queries.tolist()
        return tuple(g for g, n in zip(self.query_groups, counts, strict=True) if n == 0)

    def to_frame(self) -> pd.DataFrame:
        """Tidy masses: one row per (head, query group, key group); columns
        `MASS_COLUMNS`. A query group with no token in the data has no rows (it is empty, not
        a number; see `empty_groups`)."""
        import pandas as pd

        mass = self.mass  # (H, Gq, Gk)
        heads, gq, gk = mass.shape
        head_idx = torch.arange(heads).view(-1, 1, 1).expand(heads, gq, gk)  # (H, Gq, Gk)
        q_idx = torch.arange(gq).view(1, -1, 1).expand(heads, gq, gk)
        k_idx = torch.arange(gk).view(1, 1, -1).expand(heads, gq, gk)
        counts = self.num_queries.view(1, -1, 1).expand(heads, gq, gk)
        frame = pd.DataFrame(
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
        if not self.empty_groups:
            return frame
        return frame[frame["num_queries"] > 0].reset_index(drop=True)

    def stats_frame(self) -> pd.DataFrame:
        """Tidy key and query statistics per head and group; columns `STATS_COLUMNS`.

        ``mean_norm`` is ‖mean vector‖, ``rms`` is ``sqrt(E‖x‖²)``.
        """
        import pandas as pd

        rows = [
            (self.name, *row)
            for statistic in self.statistics
            for row in statistic.frame_rows(self.states, self.dims)
        ]
        return pd.DataFrame(rows, columns=list(STATS_COLUMNS))

    # -- saving ----------------------------------------------------------------------------------
    def _to_saved(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "query_groups": self.query_groups,
            "key_groups": self.key_groups,
            "num_calls": self.num_calls,
            "statistics": [(s.name, s.config()) for s in self.statistics],
            "states": dict(self.states),
        }

    @classmethod
    def _from_saved(cls, saved: dict[str, Any]) -> LayerResult:
        statistics = tuple(statistic_class(name)(**config) for name, config in saved["statistics"])
        return cls(
            name=saved["name"],
            num_heads=saved["num_heads"],
            num_kv_heads=saved["num_kv_heads"],
            head_dim=saved["head_dim"],
            query_groups=tuple(saved["query_groups"]),
            key_groups=tuple(saved["key_groups"]),
            num_calls=saved["num_calls"],
            statistics=statistics,
            states=States(saved["states"]),
        )

    @classmethod
    def _from_legacy(cls, fields: dict[str, Any]) -> LayerResult:
        """A result saved by attnprobe 0.1 (one field per state)."""
        sample = fields.get("key_sample")
        statistics = from_options(
            key_stats=fields.get("key_total") is not None,
            second_moment=fields.get("key_outer") is not None,
            reservoir_size=int(fields.get("reservoir_size", 0)) if sample is not None else 0,
            per_sample=fields.get("sample_mass") is not None,
            store_maps=fields.get("maps") is not None,
            entropy=fields.get("entropy_total") is not None,
        )
        states = {
            k: v
            for k, v in fields.items()
            if k not in _LEGACY_META and v is not None and k not in ("key_sample_priority",)
        }
        if fields.get("key_sample") is not None:
            states["key_sample"] = tuple(
                zip(fields["key_sample"], fields["key_sample_priority"], strict=True)
            )
        return cls(
            **{k: fields[k] for k in _LEGACY_META if k != "reservoir_size"},
            statistics=statistics,
            states=States(states),
        )

    def __repr__(self) -> str:
        return (
            f"LayerResult({self.name!r}, heads={self.num_heads}, "
            f"query_groups={list(self.query_groups)}, key_groups={list(self.key_groups)}, "
            f"queries={int(self.num_queries.sum())}, calls={self.num_calls}"
            + (f", empty={list(self.empty_groups)}" if self.empty_groups else "")
            + ")"
        )


_LEGACY_META = (
    "name",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "query_groups",
    "key_groups",
    "num_calls",
    "reservoir_size",
)


@dataclass(frozen=True, repr=False)
class ProbeResult:
    """Everything a probe captured, per layer, in model order.

    Examples:
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
    skipped: Mapping[str, str] = field(default_factory=dict)
    """Attention layers the probe selected itself (``layers=None``) but left out, with why: no
    layout covers them, they are cross-attention without a key layout, their calls did not fit
    their layout, or they never ran."""

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The names of the layers (call sites), in model order."""
        return tuple(layer.name for layer in self.layers)

    @property
    def names(self) -> tuple[str, ...]:
        """Deprecated: `layer_names` (``names`` are group names elsewhere)."""
        warnings.warn(
            "ProbeResult.names is deprecated; use ProbeResult.layer_names (the names of "
            "groups are ModalityLayout.names).",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.layer_names

    def __getitem__(self, name: str) -> LayerResult:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r} in this result; layers: {list(self.layer_names)}")

    def __iter__(self) -> Iterator[LayerResult]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def merge(self, other: ProbeResult) -> ProbeResult:
        """The result over the data of both probes (e.g. two shards, two epochs)."""
        if self.layer_names != other.layer_names:
            raise AttnProbeError(
                f"cannot merge probe results over different layers: {list(self.layer_names)} vs "
                f"{list(other.layer_names)}."
            )
        return ProbeResult(
            tuple(a.merge(b) for a, b in zip(self.layers, other.layers, strict=True)),
            skipped={**self.skipped, **other.skipped},
        )

    def state_dict(self) -> dict[str, Any]:
        """The result as tensors, strings and numbers only (what `save` writes; a training
        checkpoint can hold it and ``torch.load(weights_only=True)`` read it back);
        `from_state_dict` rebuilds it."""
        layers = [layer._to_saved() for layer in self.layers]
        return {"format": _RESULT_FORMAT, "layers": layers, "skipped": dict(self.skipped)}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> ProbeResult:
        """The result `state_dict` returned.

        Examples:
            >>> import torch, attnprobe as ap
            >>> from attnprobe.models import FusionAttention
            >>> layer = FusionAttention(dim=8).eval()
            >>> with ap.probe(layer, modalities={"cls": 1, "a": 2, "b": 3}) as p:
            ...     _ = layer(torch.randn(4, 5, 8))
            >>> before = p.result().layers[0]
            >>> back = ap.ProbeResult.from_state_dict(p.result().state_dict()).layers[0]
            >>> back.key_groups, bool(torch.equal(back.mass, before.mass))
            (('cls', 'a', 'b'), True)
        """
        if state.get("format") != _RESULT_FORMAT:
            raise AttnProbeError(
                f"not a probe result's state (format {state.get('format')!r}, expected "
                f"{_RESULT_FORMAT!r}); pass what ProbeResult.state_dict() returned."
            )
        return cls(
            tuple(LayerResult._from_saved(saved) for saved in state["layers"]),
            skipped=dict(state.get("skipped", {})),
        )

    def save(self, path: str | Path) -> Path:
        """Write the result to ``path`` (a ``torch.save`` file of tensors, strings and numbers
        only, so `load` reads it with ``weights_only=True``); returns the path."""
        path = Path(path)
        torch.save(self.state_dict(), path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ProbeResult:
        """Read a result written by `save` (``torch.load(weights_only=True)``: no arbitrary
        unpickling); results saved by attnprobe 0.1 load too.

        Examples:
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
            path,
            (_RESULT_FORMAT, _LEGACY_FORMAT),
            "a probe result",
            "expected a file written by ProbeResult.save",
        )
        if state["format"] == _LEGACY_FORMAT:
            return cls(tuple(LayerResult._from_legacy(fields) for fields in state["layers"]))
        return cls.from_state_dict(state)

    def to_frame(self) -> pd.DataFrame:
        """Tidy masses of every layer; columns `MASS_COLUMNS`.

        ``mass`` is the mean over query tokens of ``query_modality`` (padding dropped) of the
        attention probability on the tokens of ``key_modality``; ``num_queries`` the number of
        query tokens averaged over.
        """
        import pandas as pd

        frames = [layer.to_frame() for layer in self.layers]
        if not frames:
            return pd.DataFrame(columns=list(MASS_COLUMNS))
        return pd.concat(frames, ignore_index=True)

    def stats_frame(self) -> pd.DataFrame:
        """Tidy key/query statistics of every layer; columns `STATS_COLUMNS`."""
        import pandas as pd

        frames = [layer.stats_frame() for layer in self.layers]
        if not frames:
            return pd.DataFrame(columns=list(STATS_COLUMNS))
        return pd.concat(frames, ignore_index=True)

    def __repr__(self) -> str:
        keys: list[str] = []
        asked: list[str] = []
        for layer in self.layers:
            keys.extend(g for g in layer.key_groups if g not in keys)
            asked.extend(g for g in layer.query_groups if g not in asked)
        groups = f"{keys}" if asked == keys else f"{asked}, key groups={keys}"
        queries = sum(int(layer.num_queries.sum()) for layer in self.layers)
        n = len(self.layers)
        left = f", {len(self.skipped)} left out (.skipped)" if self.skipped else ""
        return (
            f"ProbeResult({count(n, 'layer')}, "
            f"{'groups' if asked == keys else 'query groups'}={groups}, "
            f"queries={queries}{left})"
        )

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
