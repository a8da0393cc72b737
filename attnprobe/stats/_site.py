"""`SiteAccumulator`: everything one attention call site accumulates, by declared state.

A call site is one module's N-th attention call per forward. Its statistics' states are kept by
merge rule: ``"sum"`` states in one `SumAccumulator` (one fused add per call for all of them,
on the device, exact DDP sync), ``"cat"`` and ``"list"`` states as lists of CPU tensors,
``"reservoir"`` states as one seeded `Reservoir` per key group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from attnprobe._distributed import rank_and_world
from attnprobe.stats._accumulate import Reservoir, SumAccumulator
from attnprobe.stats._call import Call
from attnprobe.stats._contract import Dims, State, Statistic
from attnprobe.stats._fused import FusedSums

__all__ = ["SiteAccumulator"]


class SiteAccumulator:
    """The accumulated states of one call site (``name``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dims: Dims | None = None
        """Sizes of the site, fixed by its first call (None before it)."""
        self.statistics: tuple[Statistic, ...] = ()
        self.declared: dict[str, State] = {}
        self.fused: FusedSums | None = None
        """The fused reduction of the built-in statistics' sums (None: none of them)."""
        self._unfused: tuple[Statistic, ...] = ()
        self.calls = 0
        """Kernel calls accumulated (all ranks' after a sync)."""
        self.unsynced_calls = 0
        """Calls since the last sync."""
        self.sums = SumAccumulator()
        self._rows: dict[str, list[Tensor]] = {}
        self._reservoirs: dict[str, list[Reservoir]] = {}

    def start(self, dims: Dims, statistics: Sequence[Statistic], compiled: bool = False) -> None:
        """Fix the sizes and the declared states (first call, or a sync that brings them);
        ``compiled``: run the fused reduction through ``torch.compile``."""
        self.dims = dims
        self.statistics = tuple(statistics)
        self.declared = {}
        parts: frozenset[str] = frozenset()
        for statistic in self.statistics:
            self.declared.update(statistic.states(dims))
            parts |= statistic.fused
        self.fused = FusedSums(dims, parts, compiled) if parts else None
        self._unfused = tuple(s for s in self.statistics if not s.fused)

    def add_call(self, call: Call) -> None:
        """Accumulate one attention call: the fused sums, then every other statistic's
        update."""
        values: dict[str, Any] = {}
        for statistic in self._unfused:
            values.update(statistic.update(call))
        self.add(values, {} if self.fused is None else self.fused.update(call))

    def add(self, values: dict[str, Any], fused: dict[str, Tensor] | None = None) -> None:
        """Accumulate one call's update of the declared states (those the fused reduction
        computes come as its entries, ``fused``)."""
        sums: dict[str, Tensor] = dict(fused or {})
        for name, value in values.items():
            state = self.declared[name]
            if state.reduce == "sum":
                sums[name] = value
            elif state.reduce == "reservoir":
                self._offer(name, state, value)
            else:
                self._rows.setdefault(name, []).append(value)
        if sums:
            self.sums.update(sums)
        self.calls += 1
        self.unsynced_calls += 1

    def _offer(self, name: str, state: State, rows: tuple[Tensor, ...]) -> None:
        reservoirs = self._reservoirs.get(name)
        if reservoirs is None:
            # independent streams per group and per DDP rank, reproducible from the seed
            rank, _ = rank_and_world()
            reservoirs = self._reservoirs[name] = [
                Reservoir(state.capacity, state.seed + 1009 * g + 1_000_003 * rank)
                for g in range(len(rows))
            ]
        for reservoir, group_rows in zip(reservoirs, rows, strict=True):
            reservoir.update(group_rows)

    def compute(self) -> dict[str, Any]:
        """Every declared state's value (CPU tensors); ``"cat"``/``"list"`` states that
        received nothing are None."""
        assert self.dims is not None
        sums = self.sums.compute()
        fused: dict[str, Tensor] = {}
        if self.fused is not None:
            entries = {
                name: sums.get(name, torch.zeros(shape, dtype=torch.float64))
                for name, shape in self.fused.entries().items()
            }
            fused = self.fused.states(entries)
        out: dict[str, Any] = {}
        for name, state in self.declared.items():
            if name in fused:
                out[name] = fused[name]
            elif state.reduce == "sum":
                out[name] = sums.get(name, torch.zeros(state.shape, dtype=torch.float64))
            elif state.reduce == "cat":
                rows = self._rows.get(name)
                out[name] = torch.cat(rows) if rows else None
            elif state.reduce == "list":
                rows = self._rows.get(name)
                out[name] = tuple(rows) if rows else None
            else:
                reservoirs = self._reservoirs.get(name)
                out[name] = (
                    None
                    if reservoirs is None
                    else tuple(
                        (r.sample(), r.priorities())
                        if r.seen
                        else (torch.empty(0, *state.shape), torch.empty(0, dtype=torch.float64))
                        for r in reservoirs
                    )
                )
        return out

    def reset(self) -> None:
        """Forget everything, the sizes included."""
        self.dims = None
        self.statistics = ()
        self.declared = {}
        self.fused = None
        self._unfused = ()
        self.calls = 0
        self.unsynced_calls = 0
        self.sums.reset()
        self._rows = {}
        self._reservoirs = {}
