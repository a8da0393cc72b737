"""Streaming accumulators: float64 sums and counts, merge, DDP sync; a seeded reservoir.

They follow the ``update → compute → reset (→ merge / sync)`` contract of torchmetrics and keep
*sums and counts*, never averages, so k batches give exactly the statistics of their
concatenation (up to float64 rounding), two accumulators merge exactly, and DDP ranks reduce with
one ``all_reduce``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from attnprobe._distributed import is_distributed
from attnprobe.errors import AttnProbeError

__all__ = ["Reservoir", "SumAccumulator", "merge_samples"]

_ADDABLE = (torch.float64, torch.float32)
"""Dtypes added to the float64 sums as they are (float32 widens exactly)."""


class SumAccumulator:
    """Named float64 sums that add up over updates, and over DDP ranks with `sync`.

    The sums are kept in two parts: what this process added since the last `sync` (its local
    part) and what earlier syncs gathered from every rank. `sync` all-reduces only the local
    parts, so syncing twice never double counts, and every rank takes part in every sync —
    also a rank that saw no data (its local part is zeros), which would otherwise leave the
    others waiting in the collective.

    Examples:
        >>> import torch
        >>> acc = SumAccumulator()
        >>> acc.update({"n": torch.tensor([1.0, 2.0])})
        >>> acc.update({"n": torch.tensor([3.0, 4.0])})
        >>> acc.compute()["n"].tolist()
        [4.0, 6.0]
    """

    def __init__(self) -> None:
        self._sums: dict[str, Tensor] = {}  # the local part, since the last sync
        self._synced: dict[str, Tensor] = {}  # every rank's data up to the last sync

    def update(self, values: Mapping[str, Tensor]) -> None:
        """Add ``values`` to the float64 running sums (float32 values widen exactly as they are
        added), which stay on the device of their first update (no host-device copy per
        batch)."""
        currents = [self._sums[name] for name in values if name in self._sums]
        updates = [v.detach() if v.requires_grad else v for v in values.values()]
        if len(currents) == len(updates) and all(
            c.shape == v.shape and c.device == v.device and v.dtype in _ADDABLE
            for c, v in zip(currents, updates, strict=True)
        ):  # the steady state: one operation for all entries (float32 ones widen as added)
            torch._foreach_add_(currents, updates)
            return
        for name, value in values.items():
            current = self._sums.get(name)
            expected = current.shape if current is not None else None
            if expected is None and name in self._synced:
                expected = self._synced[name].shape
            if expected is not None and expected != value.shape:
                raise AttnProbeError(
                    f"accumulator entry {name!r}: expected shape {list(expected)}, received "
                    f"{list(value.shape)}; a layer changed its number of heads, groups or head "
                    "size between batches. Call reset() before probing a different model."
                )
            if current is None:
                self._sums[name] = value.detach().to(torch.float64, copy=True)
            else:
                current.add_(value.detach().to(current.device, torch.float64))

    def compute(self) -> dict[str, Tensor]:
        """A copy of the current sums, on the CPU."""
        out = {name: value.to("cpu", copy=True) for name, value in self._synced.items()}
        for name, value in self._sums.items():
            out[name] = out[name] + value.cpu() if name in out else value.to("cpu", copy=True)
        return out

    def entries(self) -> dict[str, tuple[int, ...]]:
        """Name → shape of every entry (local or synced)."""
        shapes = {name: tuple(value.shape) for name, value in self._synced.items()}
        shapes.update({name: tuple(value.shape) for name, value in self._sums.items()})
        return shapes

    def ensure(self, entries: Mapping[str, Sequence[int]]) -> None:
        """Add zero entries for the names this accumulator lacks (before a `sync`, so that
        every rank reduces the same entries)."""
        known = self.entries()
        for name, shape in entries.items():
            if name not in known:
                self._sums[name] = torch.zeros(tuple(shape), dtype=torch.float64)

    def reset(self) -> None:
        """Forget everything."""
        self._sums.clear()
        self._synced.clear()

    def merge(self, other: SumAccumulator) -> None:
        """Add another accumulator's sums into this one (union of the data both have seen)."""
        self.update({name: value for name, value in other.compute().items()})

    def sync(self, group: object | None = None) -> None:
        """Sum the local parts of all DDP ranks into the synced sums with one ``all_reduce``
        (no-op when ``torch.distributed`` is not initialised). Every rank must call it and hold
        the same entries (`ensure`); `attnprobe.Probe.sync` arranges both."""
        if not is_distributed():
            return
        names = sorted(self.entries())
        if not names:
            return
        gloo = dist.get_backend(group) == "gloo"  # type: ignore[arg-type]
        device = torch.device("cpu") if gloo else torch.device("cuda", torch.cuda.current_device())
        shapes = self.entries()
        local = [
            self._sums.get(n, torch.zeros(shapes[n], dtype=torch.float64)).reshape(-1)
            for n in names
        ]
        flat = torch.cat([t.to(device) for t in local])  # (N,)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)  # type: ignore[arg-type]
        offset = 0
        for name in names:
            size = math.prod(shapes[name])
            part = flat[offset : offset + size].view(shapes[name])
            if name in self._synced:
                self._synced[name] = self._synced[name] + part.to(self._synced[name].device)
            else:  # new since the last sync, so a local entry: keep its device
                self._synced[name] = part.to(self._sums[name].device, copy=True)
            offset += size
        self._sums = {}


class Reservoir:
    """A bounded, seeded, uniform sample of rows from a stream (priority sampling).

    Each arriving row draws a priority ``u ~ U(0, 1)`` from a generator seeded with ``seed``; the
    reservoir keeps the ``capacity`` rows with the smallest priorities, which is a uniform sample
    without replacement of everything seen (Efraimidis & Spirakis 2006, with equal weights).
    Because priorities are drawn in stream order, splitting the same stream into different
    batches gives the same sample, and two reservoirs merge by keeping the smallest priorities.

    Examples:
        >>> import torch
        >>> r = Reservoir(capacity=3, seed=0)
        >>> r.update(torch.arange(10.0).unsqueeze(1))
        >>> r.sample().shape
        torch.Size([3, 1])
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity <= 0:
            raise AttnProbeError(f"Reservoir: expected capacity > 0, received {capacity}.")
        self.capacity = capacity
        self.seed = seed
        self.seen = 0
        self._generator = torch.Generator().manual_seed(seed)
        self._rows: Tensor | None = None  # (n, ...)
        self._priority: Tensor | None = None  # (n,)

    def update(self, rows: Tensor) -> None:
        """Offer ``rows`` (``[N, ...]``, stream order) to the reservoir."""
        rows = rows.detach().to("cpu")
        priority = torch.rand(rows.shape[0], generator=self._generator, dtype=torch.float64)
        self.seen += rows.shape[0]
        self._keep(rows, priority)

    def _keep(self, rows: Tensor, priority: Tensor) -> None:
        if self._rows is None or self._priority is None:
            self._rows, self._priority = rows[:0], priority[:0]
        self._rows, self._priority = merge_samples(
            (self._rows, rows.to(self._rows.dtype)), (self._priority, priority), self.capacity
        )

    def sample(self) -> Tensor:
        """The rows kept so far (at most ``capacity``), in priority order."""
        if self._rows is None:
            raise AttnProbeError("Reservoir.sample(): the reservoir is empty; call update() first.")
        return self._rows.clone()

    def priorities(self) -> Tensor:
        """The priorities of :meth:`sample`'s rows (float64, ascending); with them two samples
        merge into a uniform sample of the union (`merge_samples`)."""
        if self._priority is None:
            return torch.empty(0, dtype=torch.float64)
        return self._priority.clone()

    def merge(self, other: Reservoir) -> None:
        """Keep the smallest priorities of both reservoirs."""
        if other._rows is None or other._priority is None:
            return
        self.seen += other.seen
        self._keep(other._rows, other._priority)

    def reset(self) -> None:
        """Forget everything and restart the generator from the seed."""
        self.seen = 0
        self._generator = torch.Generator().manual_seed(self.seed)
        self._rows = self._priority = None


def merge_samples(
    rows: tuple[Tensor, Tensor], priorities: tuple[Tensor, Tensor], capacity: int
) -> tuple[Tensor, Tensor]:
    """Merge two priority samples into the ``capacity`` rows of smallest priority — a uniform
    sample of the union when the priorities came from independent streams.

    Examples:
        >>> import torch
        >>> rows, prio = merge_samples(
        ...     (torch.tensor([[1.0], [2.0]]), torch.tensor([[3.0]])),
        ...     (torch.tensor([0.5, 0.9]), torch.tensor([0.25])), capacity=2)
        >>> rows.squeeze(1).tolist(), prio.tolist()
        ([3.0, 1.0], [0.25, 0.5])
    """
    all_rows = torch.cat(rows)
    all_priorities = torch.cat(priorities)
    order = torch.argsort(all_priorities, stable=True)[:capacity]
    return all_rows[order], all_priorities[order]
