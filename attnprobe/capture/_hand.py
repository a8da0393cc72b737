"""Capture on modules that compute attention by hand: a product of queries and keys, then a
softmax over the keys (older HuggingFace modules — BLIP, FSMT, MVP, ProphetNet, SpeechT5, LED's
decoder — and custom modules written the same way).

There is no kernel call to intercept, so nothing is recomputed: while a probed module runs, a
``TorchFunctionMode`` (entered by a forward pre-hook, left by an always-called forward hook)
watches its matrix products and softmaxes. A softmax over the last dimension of scores
``S`` whose shape is that of a product ``q @ kᵀ`` made since the previous softmax is the
module's attention: its output is the module's own post-softmax weights (every mask and
position bias the module added already in them), read as they are; ``q`` and ``k`` (the
product's operands) give the query and key statistics. The model's computation is untouched:
the mode only looks at what the module computes.

Scores ``[B, H, Lq, Lk]`` are read as they are; ``[B·H, Lq, Lk]`` (the ``bmm`` layout) are
split with the module's head count. Anything else is not dense attention over one key
sequence and is not read: a module with no other softmax is reported as run without a
capture, with the reason, and one with others (ProphetNet's predict streams) with a warning.
Longformer's banded attention has an adapter of its own (`attnprobe.capture._banded`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from attnprobe.capture._base import Adapter, AttentionInputs, Recorder, Tap, join_tap
from attnprobe.capture._hf import _cross_from_call, _is_hf_attention
from attnprobe.capture._sdpa import _calls_sdpa, _code_names, _install_mode
from attnprobe.errors import AttnProbeWarning

__all__ = ["HandAttentionAdapter"]

_HEAD_ATTRIBUTES = ("num_heads", "num_attention_heads", "num_attn_heads", "n_heads", "n_head")
"""Where modules keep their number of query heads."""

_PRODUCTS = frozenset(
    {torch.bmm, torch.matmul, torch.Tensor.bmm, torch.Tensor.matmul, torch.Tensor.__matmul__}
)
_SOFTMAXES = frozenset({torch.softmax, F.softmax, torch.Tensor.softmax})
_BATCHED_PRODUCT = re.compile(r"^(\w*)(\w)(\w),(\w*)(\w)(\w)->(\w*)(\w)(\w)$")


def _heads(module: nn.Module) -> int | None:
    """The module's number of query heads (the first of `_HEAD_ATTRIBUTES` it has)."""
    for name in _HEAD_ATTRIBUTES:
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


@functools.lru_cache(maxsize=512)
def _computes_by_hand(forward: Callable[..., Any]) -> bool:
    """Whether a ``forward`` refers to a softmax and to a matrix product (``bmm``, ``matmul``,
    ``einsum``, a name containing one of them, or the ``@`` operator) and calls no attention
    kernel."""
    code = getattr(forward, "__code__", None)
    if code is None:
        return False
    names = _code_names(code)
    # a product in a helper's name too (e.g. a `_chunked_query_key_matmul`): such a module is
    # matched and, if it makes no dense scores, reported as not captured rather than missed
    products = any(p in n for n in names for p in ("bmm", "matmul", "einsum"))
    products = products or _uses_matmul_operator(code)
    softmax = any(name.lower() == "softmax" for name in names)  # also nn.Softmax(dim)(x)
    return softmax and bool(products) and not _calls_sdpa(forward)


def _uses_matmul_operator(code: Any) -> bool:
    import dis

    return any(
        instruction.argrepr == "@" or instruction.opname == "BINARY_MATRIX_MULTIPLY"
        for instruction in dis.get_instructions(code)
    )


def _query_key(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``(q [..., Lq, D], k [..., Lk, D])`` of a product of queries and keys, or None when
    the call is not a batched product of two tensors of rank ≥ 3."""
    if func is torch.einsum:
        equation, *operands = args
        if len(operands) == 1 and isinstance(operands[0], (tuple, list)):
            operands = list(operands[0])
        if len(operands) != 2 or not isinstance(equation, str):
            return None
        return _einsum_query_key(equation.replace(" ", ""), operands[0], operands[1])
    if len(args) < 2:
        return None
    a, b = args[0], args[1]
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.dim() < 3 or b.dim() < 3:
        return None
    return a, b.transpose(-1, -2)  # (..., Lq, D), (..., Lk, D)


def _einsum_query_key(equation: str, a: Tensor, b: Tensor) -> Any:
    """q and k of ``einsum("…xd,…dy->…xy", q, kᵀ)`` or ``einsum("…xd,…yd->…xy", q, k)``."""
    match = _BATCHED_PRODUCT.match(equation)
    if match is None or not (isinstance(a, Tensor) and isinstance(b, Tensor)):
        return None
    pa, x, d, pb, b1, b2, po, o1, o2 = match.groups()
    if not pa or pa != pb or pa != po or o1 != x:
        return None
    if b1 == d and o2 == b2:  # b is kᵀ: (..., D, Lk)
        return a, b.transpose(-1, -2)
    if b2 == d and o2 == b1:  # b is k: (..., Lk, D)
        return a, b
    return None


class _OnHandAttention(TorchFunctionMode):
    """Watches one forward of a hand-written attention module: remembers the products since
    the last softmax and hands each softmax that normalises a product's scores to ``found``."""

    def __init__(self, heads: int, found: Callable[[Tensor, Tensor, Tensor], None]) -> None:
        super().__init__()
        self.heads = heads
        self.found = found
        self.products: list[tuple[Tensor, Tensor, torch.Size]] = []
        self.captures = 0
        self.unread: list[tuple[int, ...]] = []
        """Shapes of softmaxed products that are not ``[B, H, Lq, Lk]`` attention."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _PRODUCTS or func is torch.einsum:
            pair = _query_key(func, args, kwargs)
            if pair is not None and isinstance(out, Tensor):
                self.products.append((*pair, out.shape))
        elif func in _SOFTMAXES and isinstance(out, Tensor):
            self._softmax(args, kwargs, out)
        return out

    def _softmax(self, args: tuple[Any, ...], kwargs: dict[str, Any], weights: Tensor) -> None:
        scores = args[0]
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        products, self.products = self.products, []
        if not isinstance(scores, Tensor) or dim not in (-1, scores.dim() - 1):
            return
        pair = next(((q, k) for q, k, shape in products if shape == scores.shape), None)
        if pair is None:
            return
        query, key = pair
        heads = self.heads
        if scores.dim() == 3 and scores.shape[0] % heads == 0:
            batch = scores.shape[0] // heads
            weights = weights.view(batch, heads, *scores.shape[1:])  # (B, H, Lq, Lk)
            query = query.reshape(batch, heads, *query.shape[1:])  # (B, H, Lq, D)
            key = key.reshape(batch, heads, *key.shape[1:])  # (B, H, Lk, D)
        elif scores.dim() != 4 or scores.shape[1] != heads:
            self.unread.append(tuple(scores.shape))
            return
        self.captures += 1
        self.found(query, key, weights)


class HandAttentionAdapter(Adapter):
    """Modules that compute attention by hand — ``softmax(q @ kᵀ …)`` with ``bmm``, ``matmul``,
    ``@`` or ``einsum`` — and keep their head count in an attribute (``num_heads``,
    ``num_attention_heads``, …): older HuggingFace modules (BLIP, FSMT, MVP, ProphetNet,
    SpeechT5, LED's decoder) and custom modules written that way, whose class name says
    ``Attention``.

    The masses are read from the module's own post-softmax weights (no second pass, so no extra
    attention call: the cost is one small product per call); the query and key statistics from
    the operands of the product that made the scores (as the module computed them: some modules
    scale the query before the product). Modules that call a kernel are left to the other
    adapters.
    """

    name = "hand"

    def matches(self, module: nn.Module) -> bool:
        if isinstance(module, nn.MultiheadAttention) or "Attention" not in type(module).__name__:
            return False
        if _heads(module) is None or _is_hf_attention(module):
            return False
        return _computes_by_hand(inspect.unwrap(type(module).forward))

    def is_cross_attention(self, module: nn.Module) -> bool:
        return bool(
            getattr(module, "encoder_decoder_attention", False)
            or getattr(module, "is_cross_attention", False)
        )

    def attention_shape(self, module: nn.Module) -> tuple[int, int] | None:
        heads = _heads(module)
        size = getattr(module, "head_dim", None) or getattr(module, "attention_head_size", None)
        if heads is not None and isinstance(size, int):
            return heads, size
        return None

    def explain_missing_capture(self, module: nn.Module) -> str | None:
        return (
            "attnprobe reads attention computed by hand from a softmax over the last dimension "
            "of scores [B, H, Lq, Lk] or [B*H, Lq, Lk] made by a product of queries and keys "
            "(bmm, matmul, @ or einsum); banded or chunked attention is not of that kind. "
            "Register an adapter for it (attnprobe.register_adapter) that extracts q and k"
        )

    def attach(self, module: nn.Module, recorder: Recorder, stack: contextlib.ExitStack) -> None:
        heads = _heads(module)
        assert heads is not None  # matches() checked it
        static = self.is_cross_attention(module)

        def install(tap: Tap) -> None:
            def found(query: Tensor, key: Tensor, weights: Tensor) -> None:
                tap.captured = True
                inputs = AttentionInputs(query=query, key=key, weights=weights, cross=tap.cross)
                for each in list(tap.recorders):
                    each.record(inputs, None)

            def begin(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                tap.begin(cross=True if static else _cross_from_call(mod, args, kwargs))

            warned: list[bool] = []

            def done(mod: nn.Module, mode: _OnHandAttention) -> None:
                if mode.unread and mode.captures and not warned:
                    warned.append(True)
                    warnings.warn(
                        f"{type(mod).__name__}: {len(mode.unread)} of the "
                        f"{len(mode.unread) + mode.captures} softmaxes over query–key scores "
                        f"in each forward have scores of shape {list(mode.unread[0])}, not "
                        f"[B, H, Lq, Lk] or [B*H, Lq, Lk] (e.g. ProphetNet's predict streams, "
                        "[B, ngram, H, Lq, Lk]); the result holds the others only.",
                        AttnProbeWarning,
                        stacklevel=2,
                    )

            # the cross flag is read first (an outer pre-hook), then the mode is entered
            _install_mode(module, lambda: _OnHandAttention(heads, found), tap.stack, done=done)
            handle = module.register_forward_pre_hook(begin, prepend=True, with_kwargs=True)
            tap.stack.callback(handle.remove)

        join_tap(module, "capture", recorder, stack, install)
