"""Capture on ``torch.nn.MultiheadAttention`` (and so ``nn.TransformerEncoderLayer`` /
``DecoderLayer``, which call it).

``MultiheadAttention.forward`` reaches SDPA through ``F.multi_head_attention_forward`` when it
takes the slow path with ``need_weights=False`` (always the case inside
``TransformerEncoderLayer``). While a probed instance runs, the name
``torch.nn.functional.scaled_dot_product_attention`` (looked up by
``multi_head_attention_forward`` at call time) is patched, for the calling thread only, so the
real call is captured with no extra work. When the module did not reach SDPA — the native fast
path (eval, no grad) or ``need_weights=True`` — the forward hook runs ``forward`` once more
with ``need_weights=False`` and the fast path disabled, captures the ``q``, ``k`` and mask
torch itself computed, and stops right after the kernel call; the module's output is never
touched. A ``TransformerEncoder`` that would pack inputs into nested tensors (eval, padding
mask) has ``use_nested_tensor`` switched off while probed and restored afterwards.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnprobe.capture._base import (
    Adapter,
    QueryEdit,
    Recorder,
    Tap,
    edit_missed,
    install_hooks,
    join_tap,
    with_query,
)
from attnprobe.capture._sdpa import handle_sdpa_call, sdpa_inputs

__all__ = ["MultiheadAttentionAdapter"]


class _Captured(Exception):
    """Raised by the capture-only kernel to stop a re-run right after the attention call."""


@contextlib.contextmanager
def _patched_sdpa(replacement: Callable[..., Tensor]) -> Iterator[Callable[..., Tensor]]:
    """Replace ``F.scaled_dot_product_attention`` for the current thread; always restored."""
    original = F.scaled_dot_product_attention
    owner = threading.get_ident()

    def patched(*args: Any, **kwargs: Any) -> Tensor:
        if threading.get_ident() != owner:
            return original(*args, **kwargs)
        return replacement(original, *args, **kwargs)

    F.scaled_dot_product_attention = patched  # type: ignore[assignment]
    try:
        yield original
    finally:
        F.scaled_dot_product_attention = original


@contextlib.contextmanager
def _fastpath_disabled() -> Iterator[None]:
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def _is_cross(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a ``MultiheadAttention`` call attends across sequences: its query is not its
    key (``TransformerDecoderLayer``'s memory attention, a pooling head's learned query)."""
    query = args[0] if args else kwargs.get("query")
    key = args[1] if len(args) > 1 else kwargs.get("key")
    return query is not key


class MultiheadAttentionAdapter(Adapter):
    """``torch.nn.MultiheadAttention``, batch-first or not, with ``key_padding_mask`` and
    ``attn_mask``, ``bias_k``/``add_zero_attn`` (their extra key is reported as residual)."""

    name = "torch.nn.MultiheadAttention"

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.MultiheadAttention)

    def attach(self, module: nn.Module, recorder: Recorder, stack: contextlib.ExitStack) -> None:
        assert isinstance(module, nn.MultiheadAttention)
        appended = int(module.bias_k is not None) + int(module.add_zero_attn)
        signature = inspect.signature(module.forward)

        def install(tap: Tap) -> None:
            patches: list[contextlib.ExitStack] = []

            def live(kernel: Callable[..., Tensor], *args: Any, **kwargs: Any) -> Tensor:
                return handle_sdpa_call(tap, kernel, args, kwargs, appended)

            def capture_only(kernel: Callable[..., Tensor], *args: Any, **kwargs: Any) -> Tensor:
                inputs, _ = sdpa_inputs(args, kwargs, appended)
                inputs.cross = tap.cross
                for each in list(tap.recorders):
                    each.record(inputs, kernel)
                raise _Captured

            def pre_hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                tap.begin(cross=_is_cross(args, kwargs))
                scope = contextlib.ExitStack()
                scope.enter_context(_patched_sdpa(live))
                patches.append(scope)

            def hook(
                mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
            ) -> None:
                if patches:
                    patches.pop().close()
                if out is not None and not tap.captured:
                    tap.cross = _is_cross(args, kwargs)
                    # the fast path or need_weights=True never reached SDPA: capture by a re-run
                    bound = signature.bind(*args, **kwargs)
                    bound.arguments["need_weights"] = False
                    with (
                        torch.no_grad(),
                        _fastpath_disabled(),
                        _patched_sdpa(capture_only),
                        contextlib.suppress(_Captured),
                    ):
                        mod.forward(*bound.args, **bound.kwargs)

            def unpatch_all() -> None:
                while patches:
                    patches.pop().close()

            tap.stack.callback(unpatch_all)
            install_hooks(module, pre_hook, hook, tap.stack)

        join_tap(module, "capture", recorder, stack, install)

    def attention_shape(self, module: nn.Module) -> tuple[int, int] | None:
        assert isinstance(module, nn.MultiheadAttention)
        return module.num_heads, module.head_dim

    def prepare_model(
        self, model: nn.Module, probed: list[nn.Module], stack: contextlib.ExitStack
    ) -> None:
        probed_ids = {id(m) for m in probed}
        for module in model.modules():
            if not isinstance(module, nn.TransformerEncoder):
                continue
            if not getattr(module, "use_nested_tensor", False):
                continue
            if any(id(m) in probed_ids for m in module.modules()):
                module.use_nested_tensor = False
                stack.callback(setattr, module, "use_nested_tensor", True)

    def edit_query(
        self, module: nn.Module, edit: QueryEdit, stack: contextlib.ExitStack, *, name: str
    ) -> None:
        scopes: list[contextlib.ExitStack] = []
        calls = [0]

        def edited(kernel: Callable[..., Tensor], *args: Any, **kwargs: Any) -> Tensor:
            calls[0] += 1
            args, kwargs = with_query(args, kwargs, edit)
            return kernel(*args, **kwargs)

        def pre_hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            calls[0] = 0
            scope = contextlib.ExitStack()
            scope.enter_context(_fastpath_disabled())  # the native fast path has no SDPA call
            scope.enter_context(_patched_sdpa(edited))
            scopes.append(scope)

        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            if not scopes:
                return
            scopes.pop().close()
            if out is not None and calls[0] == 0:
                raise edit_missed(
                    name, mod, "call it with need_weights=False (as TransformerEncoderLayer does)."
                )

        def unpatch_all() -> None:
            while scopes:
                scopes.pop().close()

        stack.callback(unpatch_all)
        install_hooks(module, pre_hook, hook, stack, inner=True)
