"""`FusedSums`: the built-in sums of one call site, reduced together in a handful of operations.

Every aten operation a probe dispatches is at least one kernel launch on a GPU, and there a
probe's fixed cost per attention call is what users pay (``docs/benchmarks.md``). The
statistics' own ``update`` methods define the built-in sums one quantity at a time, in float64
(the reference); this module computes the same sums together, per call:

- attention mass summed over each query group: one batched matrix product of the query-group
  indicator with the masses;
- token counts, ``Σ x`` and ``Σ x²`` of the kept queries and of the keys per group: one batched
  matrix product of a block indicator with ``[x, x²]``, the queries and keys stacked along the
  sequence (grouped-query attention: the ``H / Hk`` query heads that share a key head are laid
  side by side along the sequence, so one product per key head serves them all);
- the per-sample mean-key cosines of AIR: one batched Gram matrix of the normalised per-sample
  sums of that product (``cos(q̄, k̄)`` with ``q̄ ∝ Σ q``, RollingQ, Ni et al., ICML 2025,
  arXiv 2506.11465; ``docs/concepts/statistics.md``);
- counts that depend on the labels only, made once per set of labels.

Everything that depends only on the labels and shapes (indicators, counts) is made once and kept
with the call's labels (`attnprobe.labels.CallLabels.get`); nothing reads a value back to the
host. The masses are summed in float64; the moments and cosines in the kernel's dtype, float32
at least, and added to float64 sums: with float32 inputs a sum over ``n`` terms carries a
relative rounding error of about ``n · 2⁻²⁴`` in the worst case
(``docs/concepts/statistics.md``, "Precision").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attnprobe.stats._call import Call
from attnprobe.stats._contract import Dims

__all__ = ["PARTS", "FusedSums", "mass_sums", "moment_sums"]

PARTS = ("mass", "query_moments", "key_moments", "cosines")
"""The parts of the fused reduction a built-in statistic can ask for (`Statistic.fused`)."""

_NORM_FLOOR = 1e-30
"""Norms below this count as zero: a zero per-sample sum gets cosine 0, as in
`attnprobe.functional.mean_cosines`."""


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the sums are reduced in: the kernel's, float32 at least."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


@dataclass(frozen=True)
class FusedSums:
    """The fused reduction of one call site for the parts its statistics ask for.

    Entries (the float64 sums a `SumAccumulator` keeps; ``r = H / Hk``, ``Gm = r·Gq + Gk``
    rows of stacked groups, fewer when only queries or only keys are needed):

    - ``~mass`` ``[H, Gq, Gk]``: Σ over kept query rows of their mass on each key group;
    - ``~sum`` and ``~sum_sq`` ``[Hk, Gm, D]``: per key head and stacked group, ``Σ x`` and
      ``Σ x²``; row ``j·Gq + q`` holds query head ``kv·r + j``'s query group ``q``, rows
      after ``r·Gq`` the key groups;
    - ``~gram`` ``[Hk, Gm, Gm]``: Σ over samples of the cosines between the per-sample sums
      of any two stacked groups;
    - ``~counts``: the counts of every part (see `states`).
    """

    dims: Dims
    parts: frozenset[str]
    compiled: bool = False
    """Run the pure reduction (`mass_sums`, `moment_sums`) through ``torch.compile``."""

    def __post_init__(self) -> None:
        unknown = self.parts - set(PARTS)
        if unknown:
            raise ValueError(f"FusedSums: unknown parts {sorted(unknown)}; known: {PARTS}.")

    # -- layout ----------------------------------------------------------------------------------
    @property
    def _ratio(self) -> int:
        return self.dims.num_heads // self.dims.num_kv_heads

    @property
    def _queries(self) -> bool:
        return bool(self.parts & {"query_moments", "cosines"})

    @property
    def _keys(self) -> bool:
        return bool(self.parts & {"key_moments", "cosines"})

    @property
    def _moments(self) -> bool:
        return self._queries or self._keys

    @property
    def _stacked(self) -> int:
        """``Gm``: stacked group rows of the moments."""
        gq, gk = len(self.dims.query_groups), len(self.dims.key_groups)
        return self._ratio * gq * self._queries + gk * self._keys

    def _count_sizes(self) -> dict[str, int]:
        gq, gk = len(self.dims.query_groups), len(self.dims.key_groups)
        sizes = {}
        if "mass" in self.parts:
            sizes["num_queries"] = gq
        if "query_moments" in self.parts:
            sizes["query_count"] = gq
        if "key_moments" in self.parts:
            sizes["key_count"] = gk
        if "cosines" in self.parts:
            sizes["cosine_count"] = gq * gk
        return sizes

    def entries(self) -> dict[str, tuple[int, ...]]:
        """Name → shape of the accumulated float64 sums."""
        d = self.dims
        heads, kv, gq, gk = d.num_heads, d.num_kv_heads, len(d.query_groups), len(d.key_groups)
        out: dict[str, tuple[int, ...]] = {}
        if "mass" in self.parts:
            out["~mass"] = (heads, gq, gk)
        if self._moments:
            out["~sum"] = out["~sum_sq"] = (kv, self._stacked, d.head_dim)
        if "cosines" in self.parts:
            out["~gram"] = (kv, self._stacked, self._stacked)
        out["~counts"] = (sum(self._count_sizes().values()),)
        return out

    # -- per call --------------------------------------------------------------------------------
    def update(self, call: Call) -> dict[str, Tensor]:
        """This call's addition to every entry (``[B, ...]`` reduced over the batch).

        Gathers the call's tensors and the cached indicators, then reduces them with the pure
        functions `mass_sums` and `moment_sums` (compiled when ``compiled``). Autocast is
        switched off around the reduction: under it the products would run in bfloat16/float16
        and round the sums to 8 or 11 bits.
        """
        device = call.key_labels.device.type
        if _autocast_on(device):
            with torch.autocast(device, enabled=False):
                return self._update(call)
        return self._update(call)

    def _update(self, call: Call) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        batch = call.key_labels.shape[0]
        if "mass" in self.parts:
            mass = call.mass  # (B, H, R, Gk)
            heads = mass.shape[1]
            indicator = call.labels.get(
                ("fused_mass", heads, len(self.dims.query_groups)),
                lambda: _per_head(call.query_onehot.transpose(1, 2).double(), heads),
            )  # (B·H, Gq, R) float64
            ignored = self._ignored_queries(call) if call.labels.queries_ignored else None
            out["~mass"] = self._fn("mass")(indicator, mass, ignored, batch)  # (H, Gq, Gk)
        if self._moments:
            pieces, ignored, indicator = self._moment_inputs(call)
            sums = self._fn("moments")(
                indicator, pieces, ignored, batch, self.dims.num_kv_heads, "cosines" in self.parts
            )
            out.update(zip(("~sum", "~sum_sq", "~gram"), sums, strict=False))
        out["~counts"] = call.labels.get(
            ("fused_counts", self.parts, self.dims), lambda: self._counts(call)
        )  # (N,) float64
        return out

    def _fn(self, name: str) -> Callable[..., Any]:
        if not self.compiled:
            return _PURE[name]
        return _compiled(name)

    def _moment_inputs(self, call: Call) -> tuple[list[Tensor], Tensor | None, Tensor]:
        """The pieces stacked along the sequence (``[B, Hk, ·, D]`` each), the mask of ignored
        positions (``[B, 1, L', 1]`` or None) and the cached block indicator
        (``[B·Hk, Gm, L']``)."""
        kv, dim = self.dims.num_kv_heads, self.dims.head_dim
        pieces = []
        if self._queries:
            query = call.kept_query  # (B, H, R, D)
            batch, rows = query.shape[0], self._ratio * query.shape[2]
            pieces.append(query.reshape(batch, kv, rows, dim))  # (B, Hk, r·R, D)
        if self._keys:
            pieces.append(call.key_input)  # (B, Hk, Lk, D)
        labels = call.labels
        ignored = None
        if (self._queries and labels.queries_ignored) or (self._keys and labels.keys_ignored):
            ignored = labels.get(
                ("fused_ignored", self.parts, self._ratio), lambda: self._ignored(call)
            )  # (B, 1, L', 1)
        dtype = compute_dtype(pieces[0].dtype)
        indicator = labels.get(
            ("fused_moments", self.parts, kv, self._ratio, dtype),
            lambda: _per_head(self._stacked_indicator(call, dtype), kv),
        )  # (B·Hk, Gm, L')
        return pieces, ignored, indicator

    # -- made once per set of labels -------------------------------------------------------------
    def _stacked_indicator(self, call: Call, dtype: torch.dtype) -> Tensor:
        """``[B, Gm, L']`` block indicator: the query groups of each of the ``r`` query heads
        sharing a key head, then the key groups."""
        blocks = []
        if self._queries:
            query = call.query_onehot.transpose(1, 2)  # (B, Gq, R)
            eye = torch.eye(self._ratio, dtype=query.dtype, device=query.device)  # (r, r)
            blocks.append(torch.einsum("jk,bqi->bjqki", eye, query).flatten(3).flatten(1, 2))
        if self._keys:
            blocks.append(call.key_onehot.transpose(1, 2))  # (B, Gk, Lk)
        if len(blocks) == 1:
            return blocks[0].to(dtype)
        top, bottom = blocks  # (B, r·Gq, r·R), (B, Gk, Lk)
        out = top.new_zeros(
            top.shape[0], top.shape[1] + bottom.shape[1], top.shape[2] + bottom.shape[2]
        )
        out[:, : top.shape[1], : top.shape[2]] = top
        out[:, top.shape[1] :, top.shape[2] :] = bottom
        return out.to(dtype)  # (B, Gm, r·R + Lk)

    def _ignored_queries(self, call: Call) -> Tensor:
        return call.labels.get(
            ("fused_ignored_queries",),
            lambda: (call.query_labels < 0).unsqueeze(1).unsqueeze(-1),
        )  # (B, 1, R, 1)

    def _ignored(self, call: Call) -> Tensor:
        pieces = []
        if self._queries:
            pieces.append((call.query_labels < 0).repeat(1, self._ratio))  # (B, r·R)
        if self._keys:
            pieces.append(call.key_labels < 0)  # (B, Lk)
        return torch.cat(pieces, dim=1).unsqueeze(1).unsqueeze(-1)  # (B, 1, L', 1)

    def _counts(self, call: Call) -> Tensor:
        query = call.query_onehot.sum(1)  # (B, Gq) float64
        key = call.key_onehot.sum(1)  # (B, Gk)
        pieces = []
        for name in self._count_sizes():
            if name in ("num_queries", "query_count"):
                pieces.append(query.sum(0))
            elif name == "key_count":
                pieces.append(key.sum(0))
            else:  # samples with tokens in both groups
                both = (query.unsqueeze(-1) > 0) & (key.unsqueeze(-2) > 0)  # (B, Gq, Gk)
                pieces.append(both.sum(0).flatten().double())
        return torch.cat(pieces)  # (N,)

    # -- from the accumulated sums ---------------------------------------------------------------
    def states(self, sums: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The statistics' states (`Mass`, `QueryMoments`, `KeyMoments`, `Cosines`) from the
        accumulated entries."""
        d = self.dims
        heads, dim = d.num_heads, d.head_dim
        gq, gk, r = len(d.query_groups), len(d.key_groups), self._ratio
        out: dict[str, Tensor] = {}
        counts = torch.split(sums["~counts"], list(self._count_sizes().values()))
        for (name, _), count in zip(self._count_sizes().items(), counts, strict=True):
            out[name] = count.view(gq, gk) if name == "cosine_count" else count
        if "mass" in self.parts:
            out["mass_total"] = sums["~mass"]
        split = r * gq * self._queries  # first key row of the stacked groups
        if "query_moments" in self.parts:
            for state, entry in (("query_total", "~sum"), ("query_total_sq", "~sum_sq")):
                query = sums[entry][:, :split]  # (Hk, r·Gq, D), rows (j, q)
                out[state] = query.reshape(heads, gq, dim)  # (H, Gq, D)
        if "key_moments" in self.parts:
            out["key_total"] = sums["~sum"][:, split:]  # (Hk, Gk, D)
            out["key_total_sq"] = sums["~sum_sq"][:, split:]
        if "cosines" in self.parts:
            cross = sums["~gram"][:, :split, split:]  # (Hk, r·Gq, Gk)
            out["cosine_total"] = cross.reshape(heads, gq, gk)  # (H, Gq, Gk)
        return {name: value.contiguous() for name, value in out.items()}


def _per_head(indicator: Tensor, heads: int) -> Tensor:
    """``[B, G, L]`` → ``[B·heads, G, L]``, the same indicator for every head (a view when
    ``B = 1``)."""
    batch, groups, length = indicator.shape
    expanded = indicator.unsqueeze(1).expand(batch, heads, groups, length)  # (B, heads, G, L)
    return expanded.reshape(batch * heads, groups, length)


def _batch_sum(sums: Tensor, batch: int, heads: int) -> Tensor:
    """``[B·H, ...]`` per-sample sums → ``[H, ...]`` summed over the batch."""
    if batch == 1:
        return sums
    return sums.view(batch, heads, *sums.shape[1:]).sum(0)


# -- the pure reduction ---------------------------------------------------------------------------
def mass_sums(indicator: Tensor, mass: Tensor, ignored: Tensor | None, batch: int) -> Tensor:
    """``[H, Gq, Gk]``: Σ over the kept query rows of each query group of their mass on each key
    group, in float64 (the headline numbers, and a small tensor: float32 sums over 2048 rows
    drifted by 1e-6).

    Args:
        indicator: ``[B·H, Gq, R]`` float64 query-group indicator.
        mass: ``[B, H, R, Gk]`` masses of the kept rows.
        ignored: ``[B, 1, R, 1]`` True at rows that belong to no group (their masses may be
            NaN, and NaN · 0 is NaN), or None.
    """
    heads, rows, groups = mass.shape[1], mass.shape[2], mass.shape[3]
    mass = mass.to(torch.float64)
    if ignored is not None:
        mass = mass.masked_fill(ignored, 0.0)  # (B, H, R, Gk)
    sums = torch.bmm(indicator, mass.reshape(batch * heads, rows, groups))  # (B·H, Gq, Gk)
    return _batch_sum(sums, batch, heads)  # (H, Gq, Gk)


def moment_sums(
    indicator: Tensor,
    pieces: list[Tensor],
    ignored: Tensor | None,
    batch: int,
    kv_heads: int,
    cosines: bool,
) -> tuple[Tensor, ...]:
    """``Σ x`` and ``Σ x²`` per key head and stacked group (``[Hk, Gm, D]`` each), and with
    ``cosines`` the summed Gram matrix of the per-sample unit sums (``[Hk, Gm, Gm]``;
    ``cos(q̄, k̄)``, RollingQ, Ni et al., ICML 2025, arXiv 2506.11465).

    Args:
        indicator: ``[B·Hk, Gm, L']`` block indicator in the compute dtype.
        pieces: ``[B, Hk, ·, D]`` tensors stacked along the sequence into ``x`` ``[B, Hk, L', D]``.
        ignored: ``[B, 1, L', 1]`` True where ``x`` must not count (whatever sits there, inf or
            NaN included), or None.
    """
    x = torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0]  # (B, Hk, L', D)
    own = len(pieces) > 1  # x is a new tensor, not the model's
    if x.dtype != indicator.dtype:
        x, own = x.to(indicator.dtype), True
    if ignored is not None:
        x, own = x.masked_fill(ignored, 0.0), True  # (B, Hk, L', D)
    length, dim = x.shape[2], x.shape[3]
    flat = x.reshape(batch * kv_heads, length, dim)  # (B·Hk, L', D), a view unless x is strided
    sums = torch.bmm(indicator, flat)  # (B·Hk, Gm, D)
    # x² in place when x is ours: one tensor of x's size at a time
    square = flat.mul_(flat) if own else flat * flat  # (B·Hk, L', D)
    out = [
        _batch_sum(sums, batch, kv_heads),
        _batch_sum(torch.bmm(indicator, square), batch, kv_heads),
    ]
    if cosines:  # from the per-sample Σ x
        norm = sums.norm(dim=-1, keepdim=True).clamp_min_(_NORM_FLOOR)  # (B·Hk, Gm, 1)
        unit = sums / norm  # (B·Hk, Gm, D)
        gram = torch.bmm(unit, unit.transpose(1, 2))  # (B·Hk, Gm, Gm)
        out.append(_batch_sum(gram, batch, kv_heads))  # (Hk, Gm, Gm)
    return tuple(out)


_PURE: dict[str, Callable[..., Any]] = {"mass": mass_sums, "moments": moment_sums}
_COMPILED: dict[str, Callable[..., Any]] = {}


def _compiled(name: str) -> Callable[..., Any]:
    """``torch.compile`` of a pure reduction (made once per process; shapes that change
    between calls are compiled dynamically after the first recompilation)."""
    fn = _COMPILED.get(name)
    if fn is None:
        fn = _COMPILED[name] = torch.compile(_PURE[name], fullgraph=True)
    return fn


def _autocast_on(device: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device))
    except TypeError:  # torch < 2.4: no device argument
        return bool(torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled())
