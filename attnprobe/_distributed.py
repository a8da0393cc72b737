"""``torch.distributed`` in one place: whether it runs, this process's rank, sums over ranks.

Collectives on the gloo backend take CPU tensors; on NCCL they take CUDA tensors. `all_reduce_sum`
and `broadcast` stage a tensor on the device the backend needs and copy it back, so callers
hold their tensors wherever they like.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_reduce_sum", "broadcast", "is_distributed", "rank_and_world"]


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is available and initialised in this process."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without ``torch.distributed``."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _staging_device() -> torch.device:
    if dist.get_backend() == "gloo":
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def all_reduce_sum(tensor: Tensor) -> None:
    """Sum ``tensor`` over ranks, in place (no-op in a single process)."""
    if not is_distributed() or dist.get_world_size() == 1:
        return
    device = _staging_device()
    staged = tensor if tensor.device == device else tensor.to(device)
    dist.all_reduce(staged, op=dist.ReduceOp.SUM)
    if staged is not tensor:
        tensor.copy_(staged)


def broadcast(tensor: Tensor, src: int = 0) -> None:
    """Give every rank the value ``tensor`` has on rank ``src``, in place (no-op in a single
    process)."""
    if not is_distributed():
        return
    device = _staging_device()
    staged = tensor if tensor.device == device else tensor.to(device)
    dist.broadcast(staged, src=src)
    if staged is not tensor:
        tensor.copy_(staged)
