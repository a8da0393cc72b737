"""Capture on modules whose forward calls ``F.scaled_dot_product_attention``.

While a probed module runs, a ``TorchFunctionMode`` (entered by a forward pre-hook, left by an
always-called forward hook) intercepts its SDPA calls. Unlike patching
``torch.nn.functional.scaled_dot_product_attention``, a mode also sees calls through a name
bound at import time (``from torch.nn.functional import scaled_dot_product_attention``). The
handler calls the kernel with the module's own arguments, so the output is bit-for-bit the
model's, then hands the same ``q``, ``k``, mask and scale to every recorder attached to the
module (one interception per module, shared by all probes on it).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable
from types import CodeType
from typing import Any, TypeVar

import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from attnprobe.capture._base import (
    Adapter,
    AttentionInputs,
    QueryEdit,
    Recorder,
    Tap,
    dispatch,
    edit_missed,
    install_hooks,
    join_tap,
    with_query,
)

__all__ = ["SdpaAdapter", "handle_sdpa_call", "sdpa_inputs"]

SDPA: Callable[..., Tensor] = F.scaled_dot_product_attention
_SDPA_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")


def sdpa_inputs(
    args: tuple[Any, ...], kwargs: dict[str, Any], appended_keys: int = 0
) -> tuple[AttentionInputs, float]:
    """Normalise the arguments of one SDPA call into ``(AttentionInputs, dropout_p)``."""
    bound: dict[str, Any] = dict(zip(_SDPA_PARAMS, args, strict=False))
    bound.update(kwargs)
    inputs = AttentionInputs(
        query=bound["query"],
        key=bound["key"],
        value=bound["value"],
        attn_mask=bound.get("attn_mask"),
        is_causal=bool(bound.get("is_causal", False)),
        scale=bound.get("scale"),
        enable_gqa=bool(bound.get("enable_gqa", False)),
        appended_keys=appended_keys,
    )
    return inputs, float(bound.get("dropout_p", 0.0))


def handle_sdpa_call(
    tap: Tap,
    kernel: Callable[..., Tensor],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    appended_keys: int = 0,
) -> Tensor:
    """Run one intercepted SDPA call for the model and capture it for the tap's recorders."""
    inputs, dropout_p = sdpa_inputs(args, kwargs, appended_keys)
    inputs.cross = tap.cross
    tap.captured = True
    out: Tensor = dispatch(
        list(tap.recorders), inputs, kernel, dropout_p, lambda: kernel(*args, **kwargs)
    )
    return out


_Mode = TypeVar("_Mode", bound=TorchFunctionMode)


class _OnSdpa(TorchFunctionMode):
    """Hands the SDPA calls made while it is entered to ``handle(kernel, args, kwargs)``; every
    other function runs as it is. Counts the SDPA calls it saw."""

    def __init__(
        self, handle: Callable[[Callable[..., Tensor], tuple[Any, ...], dict[str, Any]], Any]
    ) -> None:
        super().__init__()
        self.handle = handle
        self.calls = 0

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is SDPA:
            self.calls += 1
            return self.handle(func, args, kwargs)
        return func(*args, **kwargs)


def _install_mode(
    module: nn.Module,
    make: Callable[[], _Mode],
    stack: contextlib.ExitStack,
    *,
    inner: bool = False,
    begin: Callable[[], None] | None = None,
    done: Callable[[nn.Module, _Mode], None] | None = None,
) -> None:
    """Enter a fresh ``make()`` mode for each forward of ``module`` (pre-hook) and leave it when
    the forward ends, normally or not (``done(module, mode)`` then runs after a normal one).
    Modes of forwards interrupted before their hook ran are left when ``stack`` unwinds."""
    active: list[_Mode] = []

    def pre_hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if begin is not None:
            begin()
        mode = make()
        mode.__enter__()  # type: ignore[no-untyped-call]
        active.append(mode)

    def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        if not active:
            return
        mode = active.pop()
        mode.__exit__(None, None, None)  # type: ignore[no-untyped-call]
        if out is not None and done is not None:
            done(mod, mode)

    def leave_all() -> None:
        while active:
            active.pop().__exit__(None, None, None)  # type: ignore[no-untyped-call]

    stack.callback(leave_all)
    install_hooks(module, pre_hook, hook, stack, inner=inner)


def _code_names(code: CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _code_names(const)
    return names


@functools.lru_cache(maxsize=512)
def _calls_sdpa(forward: Callable[..., Any]) -> bool:
    """Whether a ``forward`` function refers to SDPA: as an attribute
    (``F.scaled_dot_product_attention``) or through any global bound to it (an alias imported
    with ``from torch.nn.functional import scaled_dot_product_attention as sdpa``)."""
    code = getattr(forward, "__code__", None)
    if not isinstance(code, CodeType):
        return False
    names = _code_names(code)
    if "scaled_dot_product_attention" in names:
        return True
    namespace = getattr(forward, "__globals__", {})
    return any(namespace.get(name) is SDPA for name in names)


class SdpaAdapter(Adapter):
    """Any module whose ``forward`` calls ``F.scaled_dot_product_attention`` (timm ``Attention``
    with ``fused_attn``, custom blocks, attnprobe's fusion layer).

    Automatic discovery reads the names ``type(module).forward`` refers to; a module selected by
    name that reaches SDPA through a helper function works too (the interception is dynamic).
    """

    name = "sdpa"

    def matches(self, module: nn.Module) -> bool:
        if isinstance(module, nn.MultiheadAttention):
            return False
        return _calls_sdpa(inspect.unwrap(type(module).forward))

    def attach(self, module: nn.Module, recorder: Recorder, stack: contextlib.ExitStack) -> None:
        def install(tap: Tap) -> None:
            def capture(
                kernel: Callable[..., Tensor], args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> Any:
                return handle_sdpa_call(tap, kernel, args, kwargs)

            _install_mode(module, lambda: _OnSdpa(capture), tap.stack, begin=tap.begin)

        join_tap(module, "capture", recorder, stack, install)

    def edit_query(
        self, module: nn.Module, edit: QueryEdit, stack: contextlib.ExitStack, *, name: str
    ) -> None:
        def edited(
            kernel: Callable[..., Tensor], args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            args, kwargs = with_query(args, kwargs, edit)
            return kernel(*args, **kwargs)

        def check(mod: nn.Module, mode: _OnSdpa) -> None:
            if mode.calls == 0:
                raise edit_missed(
                    name,
                    mod,
                    "its forward did not call F.scaled_dot_product_attention (a timm block "
                    "needs fused_attn=True).",
                )

        _install_mode(module, lambda: _OnSdpa(edited), stack, inner=True, done=check)
