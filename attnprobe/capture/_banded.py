"""Capture on Longformer-style sliding-window attention (HuggingFace ``LongformerSelfAttention``
and LED's encoder attention): each query attends to the keys within ``w`` positions of it and
to the sequence's global tokens; global tokens attend to every key, with projections of their
own (``query_global``, ``key_global``).

There is no kernel call to intercept: while a probed module runs, a ``TorchFunctionMode``
watches its two softmaxes — the local one over scores ``[B, L, H, G + 2w + 1]`` (``G`` global
key slots, then the band of ``2w + 1`` keys around each query) and the global one over
``[B·H, G, L]`` — and their outputs, the module's own post-softmax weights, are laid out as the
dense ``[B, H, L, L]`` attention they stand for (Beltagy et al. 2020, "Longformer: The
Long-Document Transformer", arXiv 2004.05150, §3.1; transformers'
``LongformerSelfAttention.forward``):

- band slot ``c`` of query ``i`` is key ``i − w + c`` (slots outside ``[0, L)`` hold zero);
- global slot ``s`` of sample ``b`` is the ``s``-th global position of that sample (slots past
  the sample's count hold zero);
- the row of a global query is its global softmax, which replaces the local one (the module
  overwrites those outputs the same way);
- rows of masked positions are zero, as the module sets them.

The dense weights take ``O(B·H·L²)`` memory: probe long documents a few samples at a time. The
query and key statistics are those of the local projections (``query``, ``key``), recomputed on
the call's input.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from attnprobe.capture._base import Adapter, AttentionInputs, Recorder, Tap, join_tap
from attnprobe.capture._hand import _SOFTMAXES
from attnprobe.capture._sdpa import _install_mode

__all__ = ["BandedAttentionAdapter"]

_PROJECTIONS = ("query", "key", "query_global", "key_global")


class _OnBanded(TorchFunctionMode):
    """Keeps the outputs of the softmaxes of one forward: the first over 4-D scores (local),
    the first over 3-D scores (global)."""

    def __init__(self) -> None:
        super().__init__()
        self.local: Tensor | None = None
        self.global_: Tensor | None = None

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in _SOFTMAXES and isinstance(out, Tensor):
            if out.dim() == 4 and self.local is None:
                self.local = out
            elif out.dim() == 3 and self.global_ is None:
                self.global_ = out
        return out


def dense_weights(
    local: Tensor,
    global_rows: Tensor | None,
    is_global: Tensor,
    is_masked: Tensor,
    window: int,
) -> Tensor:
    """The dense attention a Longformer layer computed, from its own softmax outputs.

    Args:
        local: ``[B, L, H, G + 2w + 1]`` local softmax (global key slots, then the band).
        global_rows: ``[B·H, G, L]`` global softmax, or None without global tokens.
        is_global: ``[B, L]`` global positions.
        is_masked: ``[B, L]`` masked (padding) positions.
        window: ``w``, the one-sided window.

    Returns:
        ``[B, H, L, L]`` post-softmax weights (float32).

    Examples:
        >>> import torch
        >>> local = torch.tensor([[[[0.0, 0.5, 0.5]], [[0.3, 0.7, 0.0]]]])  # (1, 2, 1, 3), w=1
        >>> none = torch.zeros(1, 2, dtype=torch.bool)
        >>> dense_weights(local, None, none, none, 1)[0, 0].tolist()
        [[0.5, 0.5], [0.30000001192092896, 0.699999988079071]]
    """
    batch, length, heads, slots = local.shape
    band = 2 * window + 1
    num_global = slots - band
    probs = local.float().permute(0, 2, 1, 3)  # (B, H, L, G + 2w + 1)
    dense = probs.new_zeros(batch, heads, length, length)  # (B, H, L, L)
    positions = torch.arange(length, device=local.device)  # (L,)
    keys = positions[:, None] - window + torch.arange(band, device=local.device)  # (L, 2w+1)
    inside = (keys >= 0) & (keys < length)  # (L, 2w+1)
    values = probs[..., num_global:].nan_to_num() * inside  # (B, H, L, 2w+1)
    index = keys.clamp(0, length - 1).expand(batch, heads, length, band)  # (B, H, L, 2w+1)
    dense.scatter_add_(-1, index, values)
    if num_global > 0:
        # the s-th global position of each sample (L: no such slot)
        ranked = torch.where(is_global, positions, length).sort(dim=1).values  # (B, L)
        slot = ranked[:, :num_global]  # (B, G)
        real = slot < length  # (B, G)
        weights = probs[..., :num_global].nan_to_num() * real[:, None, None, :]  # (B, H, L, G)
        where = slot.clamp(max=length - 1)[:, None, None, :].expand(batch, heads, length, -1)
        dense.scatter_add_(-1, where, weights)
        if global_rows is not None:
            rows = global_rows.float().view(batch, heads, num_global, length)  # (B, H, G, L)
            samples, slots_ = real.nonzero(as_tuple=True)  # (n,), (n,)
            dense[samples, :, slot[samples, slots_], :] = rows[samples, :, slots_, :]
    return dense.masked_fill(is_masked[:, None, :, None], 0.0)  # (B, H, L, L)


class BandedAttentionAdapter(Adapter):
    """Longformer-style sliding-window attention with global tokens (HuggingFace
    ``LongformerSelfAttention``, LED's ``LEDEncoderSelfAttention``): modules with a
    ``one_sided_attn_window_size`` and ``query``, ``key``, ``query_global`` and ``key_global``
    projections.

    The masses are read from the module's own local and global softmaxes, laid out as dense
    ``[B, H, L, L]`` weights (no second pass over the model's computation; the dense weights
    take ``O(B·H·L²)`` memory). The sequence is the one the module sees: HuggingFace models pad
    it to a multiple of the attention window first, which `attnprobe.auto_layout` follows.
    """

    name = "banded"

    def matches(self, module: nn.Module) -> bool:
        window = getattr(module, "one_sided_attn_window_size", None)
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            return False
        if not all(isinstance(getattr(module, p, None), nn.Linear) for p in _PROJECTIONS):
            return False
        return isinstance(getattr(module, "num_heads", None), int) and isinstance(
            getattr(module, "head_dim", None), int
        )

    def explain_missing_capture(self, module: nn.Module) -> str | None:
        return (
            "attnprobe reads Longformer-style attention from the module's softmax over "
            "[B, L, H, globals + 2w + 1] scores; this module computed none (a changed "
            "implementation?). Register an adapter for it (attnprobe.register_adapter)"
        )

    def attach(self, module: nn.Module, recorder: Recorder, stack: contextlib.ExitStack) -> None:
        heads, size = int(module.num_heads), int(module.head_dim)  # type: ignore[arg-type]
        window = int(module.one_sided_attn_window_size)  # type: ignore[arg-type]

        def install(tap: Tap) -> None:
            call: dict[str, Any] = {}

            def begin(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                tap.begin(cross=False)
                call.clear()
                call["hidden"] = args[0] if args else kwargs.get("hidden_states")
                for position, name in enumerate(("attention_mask", "is_index_masked"), 1):
                    call[name] = kwargs.get(name, args[position] if len(args) > position else None)
                call["is_index_global_attn"] = kwargs.get(
                    "is_index_global_attn", args[3] if len(args) > 3 else None
                )

            def done(mod: nn.Module, mode: _OnBanded) -> None:
                hidden, masked = call.get("hidden"), call.get("is_index_masked")
                if mode.local is None or not isinstance(hidden, Tensor):
                    return
                batch, length = hidden.shape[:2]
                if not isinstance(masked, Tensor):
                    masked = torch.zeros(batch, length, dtype=torch.bool, device=hidden.device)
                is_global = call.get("is_index_global_attn")
                if not isinstance(is_global, Tensor):
                    is_global = torch.zeros_like(masked)
                with torch.no_grad():
                    weights = dense_weights(mode.local, mode.global_, is_global, masked, window)
                    query = mod.query(hidden) / math.sqrt(size)  # type: ignore[operator]
                    key = mod.key(hidden)  # type: ignore[operator]
                query = query.view(batch, length, heads, size).transpose(1, 2)  # (B, H, L, D)
                key = key.view(batch, length, heads, size).transpose(1, 2)  # (B, H, L, D)
                tap.captured = True
                inputs = AttentionInputs(
                    query=query, key=key, weights=weights.to(query.dtype), cross=False
                )
                for each in list(tap.recorders):
                    each.record(inputs, None)

            _install_mode(module, _OnBanded, tap.stack, done=done)
            handle = module.register_forward_pre_hook(begin, prepend=True, with_kwargs=True)
            tap.stack.callback(handle.remove)

        join_tap(module, "capture", recorder, stack, install)
