"""The statistic contract: declared states, an update per attention call, derived values.

Following torchmetrics' ``add_state``, each statistic declares its *states* — name, shape and
how two of them merge (`State`) — and computes one update of every state from one captured
attention call (`attnprobe.stats.Call`). Everything else is a loop over the declared states:
streaming accumulation and DDP sync in the probe, merge, save and load of results. A new
statistic is one class (a frozen dataclass subclassing `Statistic`); it registers itself by
its `Statistic.name`, so saved results that hold it load again.

Merge rules (`State.reduce`):

- ``"sum"``: float64 sums (and counts), added; summed over DDP ranks by `attnprobe.Probe.sync`;
- ``"cat"``: one row per sample, concatenated in the order samples were seen (per rank);
- ``"list"``: one tensor per call (shapes may differ), kept in order (per rank);
- ``"reservoir"``: per key group a seeded uniform sample of rows with their priorities; two
  samples merge by keeping the smallest priorities (`merge_samples`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor

from attnprobe.errors import AttnProbeError
from attnprobe.stats._accumulate import merge_samples

if TYPE_CHECKING:
    from attnprobe.stats._call import Call

__all__ = [
    "Dims",
    "Reduce",
    "State",
    "States",
    "Statistic",
    "merge_states",
    "ratio",
    "statistic_class",
]

Reduce = Literal["sum", "cat", "list", "reservoir"]


@dataclass(frozen=True)
class Dims:
    """The sizes of one attention call site, fixed by its first call."""

    num_heads: int
    """``H`` query heads."""
    num_kv_heads: int
    """``Hk`` key/value heads."""
    head_dim: int
    """``D`` head size."""
    query_groups: tuple[str, ...]
    """The ``Gq`` query groups the probe keeps."""
    key_groups: tuple[str, ...]
    """The ``Gk`` key groups."""


@dataclass(frozen=True)
class State:
    """One accumulated quantity of a statistic.

    Args:
        shape: ``"sum"``: the shape of the sum; ``"cat"``: the shape of one row (after the
            leading sample dimension); ``"reservoir"``: the shape of one sampled row;
            ``"list"``: ``()`` (shapes may differ per call).
        reduce: how updates and results merge (module docstring).
        capacity: ``"reservoir"``: rows kept per group.
        seed: ``"reservoir"``: seed of the priorities (group ``g`` of DDP rank ``r`` draws from
            ``seed + 1009·g + 1000003·r``).
    """

    shape: tuple[int, ...]
    reduce: Reduce = "sum"
    capacity: int = 0
    seed: int = 0


class States(Mapping[str, Any]):
    """A read-only mapping of state name to value, compared by value (``torch.equal``)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return set(self) == set(other) and all(_same(self[k], other[k]) for k in self)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"States({', '.join(self._values)})"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


_REGISTRY: dict[str, type[Statistic]] = {}


class Statistic:
    """Base class of the statistics a probe accumulates at each attention call site.

    Subclass it as a frozen dataclass (its fields are its options, saved with results), give
    it a unique `name`, and implement `states`, `update` and, for values computed from the
    states, `derive`. Pass instances to ``attnprobe.probe(..., statistics=[...])``; read the
    states from ``LayerResult.states`` and the derived values with ``LayerResult.value(name)``.

    Examples:
        The mean key norm per key group, one class:

        >>> from dataclasses import dataclass
        >>> import torch, attnprobe as ap
        >>> from attnprobe.stats import Dims, State, Statistic, ratio
        >>> @dataclass(frozen=True)
        ... class KeyNorm(Statistic):
        ...     name = "doc_key_norm"
        ...     def states(self, dims):
        ...         return {"key_norm_total": State((dims.num_kv_heads, len(dims.key_groups))),
        ...                 "key_norm_count": State((len(dims.key_groups),))}
        ...     def update(self, call):
        ...         onehot = call.key_onehot  # (B, Lk, Gk) float64
        ...         norms = call.key.double().norm(dim=-1)  # (B, Hk, Lk)
        ...         return {"key_norm_total": torch.einsum("bhl,blg->hg", norms, onehot),
        ...                 "key_norm_count": onehot.sum((0, 1))}
        ...     def derive(self, states):
        ...         return {"key_norm": ratio(states["key_norm_total"], states["key_norm_count"])}
        >>> from attnprobe.models import FusionAttention
        >>> layer = FusionAttention(dim=8).eval()
        >>> with ap.probe(layer, modalities={"cls": 1, "a": 2, "b": 3},
        ...               statistics=[KeyNorm()]) as p:
        ...     _ = layer(torch.randn(4, 5, 8))
        >>> p.result().layers[0].value("key_norm").shape
        torch.Size([1, 3])
    """

    name: ClassVar[str] = ""
    """Unique name; results store it to find the class again when loaded."""

    @property
    def needs(self) -> frozenset[str]:
        """What the call must provide: ``"maps"`` (full attention maps, which then also give
        the masses; the adapter must pass a dense mask), ``"key_outer"`` (``Σ k kᵀ`` in
        ``Call.key_moments``). Default: nothing."""
        return frozenset()

    @property
    def fused(self) -> frozenset[str]:
        """The parts of the fused built-in reduction (``attnprobe.stats._fused.PARTS``) that
        compute this statistic's states, together with the other built-ins' and with fewer
        operations than `update`, which then stays their float64 reference and is not called
        by probes. Custom statistics leave it empty (the default) and implement `update`."""
        return frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name", "")
        if name:
            _REGISTRY[name] = cls

    def states(self, dims: Dims) -> dict[str, State]:
        """The states this statistic keeps at a call site of sizes ``dims``."""
        raise NotImplementedError(f"{type(self).__name__}.states(dims) is not implemented.")

    def update(self, call: Call) -> dict[str, Any]:
        """One update of every declared state from one attention call: ``"sum"`` a tensor of
        the state's shape, ``"cat"`` ``[B, *shape]``, ``"list"`` one tensor,
        ``"reservoir"`` a tuple of ``[n_g, *shape]`` rows per key group."""
        raise NotImplementedError(f"{type(self).__name__}.update(call) is not implemented.")

    def derive(self, states: Mapping[str, Any]) -> dict[str, Tensor]:
        """Values computed from the states (means, ratios); default none."""
        return {}

    def frame_rows(
        self, states: Mapping[str, Any], dims: Dims
    ) -> list[tuple[str, int, str, int, float, float]]:
        """Rows ``(kind, head, group, num_tokens, mean_norm, rms)`` for
        ``LayerResult.stats_frame``; default none."""
        return []

    def config(self) -> dict[str, Any]:
        """The options of this statistic (its dataclass fields), as saved with results."""
        if dataclasses.is_dataclass(self):
            return dataclasses.asdict(self)
        return {}


def statistic_class(name: str) -> type[Statistic]:
    """The `Statistic` subclass registered under ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise AttnProbeError(
            f"no statistic named {name!r} is defined in this process (known: "
            f"{sorted(_REGISTRY)}); import the module that defines it before loading a result "
            "that holds it."
        ) from None


def merge_states(
    declared: Mapping[str, State], a: Mapping[str, Any], b: Mapping[str, Any]
) -> dict[str, Any]:
    """The states over the data of both ``a`` and ``b``, by each state's merge rule.

    Examples:
        >>> import torch
        >>> declared = {"n": State((2,)), "rows": State((1,), "cat")}
        >>> merged = merge_states(
        ...     declared,
        ...     {"n": torch.tensor([1.0, 2.0]), "rows": torch.zeros(1, 1)},
        ...     {"n": torch.tensor([3.0, 4.0]), "rows": torch.ones(2, 1)})
        >>> merged["n"].tolist(), merged["rows"].shape
        ([4.0, 6.0], torch.Size([3, 1]))
    """
    out: dict[str, Any] = {}
    for name, state in declared.items():
        x, y = a.get(name), b.get(name)
        if x is None or y is None:  # a part without data of this kind (e.g. no sample kept)
            out[name] = None
        elif state.reduce == "sum":
            out[name] = x + y
        elif state.reduce == "cat":
            out[name] = torch.cat([x, y])
        elif state.reduce == "list":
            out[name] = tuple(x) + tuple(y)
        else:
            out[name] = tuple(
                merge_samples((rx, ry), (px, py), state.capacity)
                for (rx, px), (ry, py) in zip(x, y, strict=True)
            )
    return out


def ratio(total: Tensor, count: Tensor) -> Tensor:
    """``total / count`` with NaN where ``count == 0`` (no data, not a zero mean); ``count``
    broadcasts against ``total``.

    Examples:
        >>> import torch
        >>> ratio(torch.tensor([2.0, 0.0]), torch.tensor([4.0, 0.0])).tolist()
        [0.5, nan]
    """
    return torch.where(count > 0, total / torch.where(count > 0, count, 1.0), math.nan)
