"""Batches of map-style datasets as the training wrapper and the evaluation callback draw them:
a seeded order per epoch, collation into ``(inputs, target)``, and each rank's share of every
global batch under ``torch.distributed``; seeds mixed from several integers; model outputs read
as logits (and unimodal logits)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import default_collate

from attnprobe._distributed import rank_and_world
from attnprobe.errors import ProbeConfigError

__all__ = ["Data", "collate", "epoch_order", "mix", "model_outputs", "shard_batches"]


class Data(Protocol):
    """A map-style dataset: ``len(data)`` items, ``data[i] = (inputs, target)``."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


def mix(*values: int) -> int:
    """A 63-bit seed from several integers (stable across runs and platforms)."""
    seed = 0x9E3779B97F4A7C15
    for value in values:
        seed = (seed ^ (value + 0x9E3779B97F4A7C15 + (seed << 6) + (seed >> 2))) & (2**63 - 1)
    return seed


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The epoch's sample order: a permutation seeded by ``(seed, epoch)`` only."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(mix(seed, epoch)))


def collate(items: list[Any]) -> tuple[tuple[Tensor, ...], Tensor]:
    """``(inputs, target)`` of a list of dataset items: ``inputs`` one stacked tensor per
    modality, ``target`` the class indices; anything else is a `ProbeConfigError`."""
    try:
        inputs, target = default_collate(items)
        target = torch.as_tensor(target)
        if target.dim() != 1 or target.is_floating_point():
            raise TypeError(f"targets of shape {tuple(target.shape)} and dtype {target.dtype}")
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ProbeConfigError(
            "expected dataset items (inputs, target) with inputs a tuple of tensors (one per "
            f"modality) and target a class index; collating failed: {exc}"
        ) from None
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    return tuple(inputs), target


def shard_batches(
    data: Data,
    order: Tensor,
    batch_size: int,
    device: torch.device,
    *,
    with_indices: bool = False,
) -> Iterator[Any]:
    """This rank's batches over ``order``: global batch ``k`` is ``order[k·B·W : (k+1)·B·W]``
    and rank ``r`` takes every ``W``-th index of it from ``r`` — so the ranks' batches together
    are exactly one process's batch of ``B·W``. Yields ``(inputs, target)``, or
    ``(indices, (inputs, target))`` with ``with_indices``, on ``device``."""
    rank, world = rank_and_world()
    size = batch_size * world
    for begin in range(0, len(order), size):
        chunk = order[begin : begin + size][rank::world]
        if len(chunk) == 0:
            continue
        inputs, target = collate([data[int(i)] for i in chunk])
        inputs = tuple(x.to(device) for x in inputs)
        target = target.to(device)
        yield (chunk, (inputs, target)) if with_indices else (inputs, target)


def model_outputs(output: Any) -> tuple[Tensor, Mapping[str, Tensor]]:
    """``(logits, unimodal logits by modality)`` of a model's output: the logits themselves,
    or an object with ``.logits`` (and optionally ``.unimodal_logits``)."""
    if isinstance(output, Tensor):
        return output, {}
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits, getattr(output, "unimodal_logits", None) or {}
    raise ProbeConfigError(
        f"expected the model to return logits or an object with .logits, received "
        f"{type(output).__name__}."
    )
