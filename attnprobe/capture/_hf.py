"""Capture on HuggingFace ``transformers`` attention modules, on the model's own backend.

HF attention modules look their attention function up at call time:
``ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)``
(transformers ≥ 5.1). While a module is probed, its config's implementation name ``X`` is
switched to ``"attnprobe:X"``, registered in ``AttentionInterface`` as a wrapper that calls the
original function ``X`` unchanged (the model's output is bit-for-bit the same) and then runs the
indicator pass through that same function, with ``V = E``, on the exact post-RoPE ``q``, the
key/value-head ``k`` (grouped-query attention is left to the backend, as for the model), the
mask and the scale it received. The same name is registered in ``AttentionMaskInterface`` with
the original's mask function: without it HF builds no mask at all for an unknown name.
Both registrations and every config change are reference-counted across
probes and undone when the last probe using them closes.

Backends: ``eager`` (the modeling file's own ``eager_attention_forward``, so soft-capping and
sinks are the model's) and ``sdpa`` are fully supported; other registered backends (flash,
flex, custom) get the full-sequence indicator pass through their own function, while query
restriction and stored maps, which need a dense mask, are refused with an explanation.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import weakref
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from attnprobe.capture._base import (
    Adapter,
    AttentionInputs,
    QueryEdit,
    Recorder,
    Tap,
    dispatch,
    join_tap,
    tap_of,
)
from attnprobe.capture._hf_layouts import hf_layout
from attnprobe.capture._sdpa import _code_names
from attnprobe.errors import CaptureError
from attnprobe.labels import InputLayout, LayerLayouts

__all__ = ["PREFIX", "HuggingFaceAdapter"]

PREFIX = "attnprobe:"
"""Prefix of the attention implementation names attnprobe registers while probing."""

_DENSE_MASK_BACKENDS = ("eager", "sdpa")
_LOCK = threading.RLock()
# module -> query edits (RollingQ) applied before the backend and any probe see the query
_EDITS: weakref.WeakKeyDictionary[nn.Module, list[QueryEdit]] = weakref.WeakKeyDictionary()
_NAME_USERS: dict[str, int] = {}  # registered wrapper name -> number of configs using it
_CONFIG_USERS: dict[int, tuple[Any, str, int]] = {}  # id(config) -> (config, original, users)


_FORWARDS: dict[type, Callable[..., Any]] = {}


def _forward(module: nn.Module) -> Callable[..., Any]:
    """The module's ``forward`` function under any decorators (HF wraps some in
    ``deprecate_kwarg``), whose code and globals are the modeling file's; looked up once per
    class, since the wrapper calls this on every attention call."""
    cls = type(module)
    forward = _FORWARDS.get(cls)
    if forward is None:
        forward = _FORWARDS[cls] = inspect.unwrap(cls.forward)
    return forward


def _is_hf_attention(module: nn.Module) -> bool:
    code = getattr(_forward(module), "__code__", None)
    if code is None or not hasattr(getattr(module, "config", None), "_attn_implementation"):
        return False
    return "ALL_ATTENTION_FUNCTIONS" in _code_names(code)


@functools.lru_cache(maxsize=256)
def _original_function(forward: Callable[..., Any], name: str) -> Callable[..., Any]:
    """The function the module's ``forward`` would call for implementation ``name``: looked up
    in the interface its own modeling file sees (which may override entries locally), and for
    ``eager`` the modeling file's ``eager_attention_forward``."""
    namespace: dict[str, Any] = getattr(forward, "__globals__", {})
    if name == "eager":
        eager = namespace.get("eager_attention_forward")
        if eager is None:
            raise CaptureError(
                f"{forward.__qualname__} runs eager attention but its modeling file defines no "
                "eager_attention_forward for attnprobe to call; probe the model with "
                'attn_implementation="sdpa", or register an adapter for it.'
            )
        return eager  # type: ignore[no-any-return]
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    interface = namespace.get("ALL_ATTENTION_FUNCTIONS", ALL_ATTENTION_FUNCTIONS)
    try:
        return interface[name]  # type: ignore[no-any-return]
    except KeyError:
        raise CaptureError(
            f"attention implementation {name!r} is not registered in transformers' "
            "AttentionInterface (was it unregistered while the probe was attached?)."
        ) from None


@functools.lru_cache(maxsize=256)
def _parameters(function: Callable[..., Any]) -> tuple[str, ...]:
    return tuple(inspect.signature(function).parameters)


def _make_wrapper(original_name: str) -> Callable[..., Any]:
    """The function registered as ``"attnprobe:" + original_name``."""

    def attnprobe_attention(
        module: nn.Module,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        original = _original_function(_forward(module), original_name)
        for edit in _EDITS.get(module, ()):
            query = edit(query)  # (B, H, Lq, D)
        tap = tap_of(module, "capture")
        recorders = [] if tap is None else list(tap.recorders)
        if not recorders:
            return original(module, query, key, value, attention_mask, *args, **kwargs)
        if args:  # HF passes everything after the mask by keyword; normalise anyway
            names = _parameters(original)[5 : 5 + len(args)]
            kwargs = {**dict(zip(names, args, strict=False)), **kwargs}
        inputs, kernel = _capture_inputs(
            module, original, original_name, query, key, value, attention_mask, kwargs
        )
        dropout = float(kwargs.get("dropout", 0.0) or 0.0)

        def run() -> Any:
            return original(module, query, key, value, attention_mask, **kwargs)

        result = dispatch(recorders, inputs, kernel, dropout, run, fusable=original_name == "sdpa")
        if isinstance(result, Tensor):  # a recorder's fused call: (B, H, Lq, Dv)
            return result.transpose(1, 2).contiguous(), None  # (B, Lq, H, Dv), as HF returns
        return result  # the backend's own (output, weights)

    attnprobe_attention.__qualname__ = f"attnprobe_attention[{original_name}]"
    return attnprobe_attention


def _capture_inputs(
    module: nn.Module,
    original: Callable[..., Any],
    original_name: str,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Any,
    kwargs: dict[str, Any],
) -> tuple[AttentionInputs, Callable[..., Tensor]]:
    """The call as ``AttentionInputs`` in SDPA terms, and an SDPA-signature kernel that runs the
    model's own backend function with another value matrix."""
    query_len = query.shape[2]
    if original_name == "sdpa":
        flag = kwargs.get("is_causal")
        causal = bool(getattr(module, "is_causal", True) if flag is None else flag)
        # what sdpa_attention_forward hands to the kernel (transformers/integrations/sdpa_attention)
        is_causal = query_len > 1 and attention_mask is None and causal
    elif original_name == "eager":
        is_causal = False  # eager applies the (always materialised) mask and nothing else
    else:
        is_causal = (
            query_len > 1 and attention_mask is None and bool(getattr(module, "is_causal", False))
        )
    passthrough = {k: v for k, v in kwargs.items() if k not in ("dropout", "output_attentions")}
    bias = passthrough.get("position_bias")
    if isinstance(bias, Tensor) and original_name in ("sdpa", "eager"):
        folded = _fold_position_bias(original_name, bias, attention_mask, is_causal, query, key)
        if folded is not None:
            # one additive mask [B | 1, H, Lq, Lk]: its rows follow the kept query rows
            attention_mask, is_causal = folded, False
            del passthrough["position_bias"]

    def kernel(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        attn_mask: Any = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> Tensor:
        call = dict(passthrough, dropout=dropout_p, scaling=scale)
        if isinstance(attn_mask, Tensor) and attn_mask.dim() < 4:
            # a row-selection mask [R, Lk]: HF backends expect [B | 1, H | 1, Lq, Lk]
            attn_mask = attn_mask.view((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
        if original_name == "sdpa" or "is_causal" in passthrough:
            call["is_causal"] = is_causal
        out = original(module, q, k, v, attn_mask, **call)[0]  # (B, Lq, H, W)
        return out.transpose(1, 2)  # type: ignore[no-any-return]  # (B, H, Lq, W)

    tap = tap_of(module, "capture")
    inputs = AttentionInputs(
        cross=None if tap is None else tap.cross,
        query=query,  # (B, H, Lq, D), post-RoPE
        key=key,  # (B, Hk, Lk, D), before any repetition for grouped-query attention
        value=value,
        attn_mask=attention_mask,
        is_causal=is_causal,
        scale=kwargs.get("scaling"),
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return inputs, kernel


def _fold_position_bias(
    backend: str, bias: Tensor, mask: Any, is_causal: bool, query: Tensor, key: Tensor
) -> Tensor | None:
    """T5-style relative position bias ``[B | 1, H, Lq, Lk]`` (``position_bias``) and the mask
    as the one additive mask the backend would add to the scores, so that selecting query rows
    selects the bias rows too; None where the backend does something else first (SDPA's crop of
    an empty static cache).

    SDPA: ``create_position_bias_mask`` of ``transformers.integrations.sdpa_attention``, the
    backend's own function (bias where the boolean mask attends, ``finfo.min`` elsewhere; bias +
    mask for an additive mask; the causal triangle folded in without a mask). Eager
    (``scores + bias + mask``, T5's ``eager_attention_forward``): ``bias + mask``, equal for the
    0 / ``finfo.min`` masks HF makes.
    """
    if backend == "eager":
        if mask is None:
            return bias
        return bias + mask if isinstance(mask, Tensor) and mask.is_floating_point() else None
    if is_causal and mask is None and key.shape[2] > query.shape[2]:
        return None
    try:
        from transformers.integrations.sdpa_attention import create_position_bias_mask
    except ImportError:  # an older transformers: the backend adds the bias by its own rules
        return None
    return create_position_bias_mask(bias, mask, is_causal, query, key)  # type: ignore[no-any-return]


def _register(name: str, original_name: str) -> None:
    from transformers.modeling_utils import AttentionInterface

    users = _NAME_USERS.get(name, 0)
    if users == 0:
        AttentionInterface.register(name, _make_wrapper(original_name))
        masks = _mask_interface()
        if masks is not None and original_name in masks._global_mapping:
            masks.register(name, masks._global_mapping[original_name])
    _NAME_USERS[name] = users + 1


def _unregister(name: str) -> None:
    from transformers.modeling_utils import AttentionInterface

    users = _NAME_USERS.get(name, 0) - 1
    if users > 0:
        _NAME_USERS[name] = users
        return
    _NAME_USERS.pop(name, None)
    AttentionInterface._global_mapping.pop(name, None)
    masks = _mask_interface()
    if masks is not None:
        masks._global_mapping.pop(name, None)


def _mask_interface() -> Any:
    try:
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError:  # transformers < 4.53 builds masks without an interface
        return None
    return AttentionMaskInterface


class _WrapperName(str):
    """The name ``"attnprobe:X"`` a probed config's implementation is switched to, which also
    compares equal to ``"X"``: modeling files branch on ``config._attn_implementation ==
    "sdpa"`` (e.g. to build a boolean or an additive mask), and must take the branch of the
    implementation that really runs. Looked up in ``AttentionInterface`` by its own text."""

    original: str

    def __new__(cls, name: str, original: str) -> _WrapperName:
        self = super().__new__(cls, name)
        self.original = original
        return self

    def __eq__(self, other: object) -> bool:
        return str.__eq__(self, other) or (isinstance(other, str) and other == self.original)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = str.__hash__

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return (str, (str(self),))  # copies and pickles are the plain name


def _use_config(config: Any) -> Callable[[], None]:
    """Switch ``config`` to the attnprobe wrapper of its implementation; returns the undo."""
    with _LOCK:
        entry = _CONFIG_USERS.get(id(config))
        if entry is not None:
            _CONFIG_USERS[id(config)] = (config, entry[1], entry[2] + 1)
        else:
            original = config._attn_implementation
            if original is None:
                original = "eager"
            if original.startswith(PREFIX):
                raise CaptureError(
                    f"the model's attention implementation is {original!r}, left over from a "
                    "probe that was not closed in this process; set it back with "
                    "model.set_attn_implementation(...)."
                )
            name = PREFIX + original
            _register(name, original)
            config._attn_implementation_internal = _WrapperName(name, original)
            _CONFIG_USERS[id(config)] = (config, original, 1)

    def release() -> None:
        with _LOCK:
            config_, original_, users = _CONFIG_USERS[id(config)]
            if users > 1:
                _CONFIG_USERS[id(config)] = (config_, original_, users - 1)
                return
            del _CONFIG_USERS[id(config)]
            config._attn_implementation_internal = original_
            _unregister(PREFIX + original_)

    return release


def _enlist(
    table: weakref.WeakKeyDictionary[nn.Module, list[Any]],
    module: nn.Module,
    item: Any,
    stack: contextlib.ExitStack,
) -> None:
    """Add ``item`` to ``module``'s list in ``table`` until ``stack`` unwinds."""
    with _LOCK:
        table.setdefault(module, []).append(item)

    def remove() -> None:
        with _LOCK:
            items = table.get(module, [])
            if item in items:
                items.remove(item)
            if not items:
                table.pop(module, None)

    stack.callback(remove)


_CROSS_ARGUMENTS = ("key_value_states", "encoder_hidden_states", "cross_attention_states")
"""Forward arguments through which HF attention modules receive another sequence's states."""


@functools.lru_cache(maxsize=256)
def _cross_positions(forward: Callable[..., Any]) -> tuple[tuple[str, int], ...]:
    """``(name, position in args)`` of the cross-attention arguments of an HF ``forward``."""
    names = [n for n in inspect.signature(forward).parameters if n != "self"]
    return tuple((n, names.index(n)) for n in _CROSS_ARGUMENTS if n in names)


def _cross_from_call(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> bool | None:
    """Whether this call of an HF attention module attends to another sequence: it received
    ``key_value_states`` (or ``encoder_hidden_states``, ``cross_attention_states``) that are
    not None. A module whose forward takes no such argument computes its keys from its own
    hidden states: self-attention (a decoder's self-attention beside its cross-attention, whose
    layer has a key layout for the other)."""
    positions = _cross_positions(_forward(module))
    if not positions:
        return False
    for name, index in positions:
        value = kwargs.get(name, args[index] if index < len(args) else None)
        if value is not None:
            return True
    return False


class HuggingFaceAdapter(Adapter):
    """Attention modules of HuggingFace ``transformers`` models that dispatch through
    ``AttentionInterface`` (BERT, ViT, CLIP/SigLIP, Llama/Qwen/Mistral, LLaVA-style models, …)."""

    name = "transformers"

    def matches(self, module: nn.Module) -> bool:
        return _is_hf_attention(module)

    def is_cross_attention(self, module: nn.Module) -> bool:
        return bool(getattr(module, "is_cross_attention", False)) or (
            "CrossAttention" in type(module).__name__
        )

    def attention_shape(self, module: nn.Module) -> tuple[int, int] | None:
        config: Any = module.config
        heads = getattr(module, "num_heads", None) or getattr(config, "num_attention_heads", None)
        size = getattr(module, "head_dim", None)
        if isinstance(heads, int) and isinstance(size, int):
            return heads, size
        return None

    def attach(self, module: nn.Module, recorder: Recorder, stack: contextlib.ExitStack) -> None:
        config: Any = module.config
        implementation: str = config._attn_implementation or "eager"
        if implementation.startswith(PREFIX):
            implementation = implementation[len(PREFIX) :]
        if implementation not in _DENSE_MASK_BACKENDS and recorder.needs_dense_mask:
            raise CaptureError(
                f"layer {recorder.name!r} runs attention implementation {implementation!r}, "
                "whose masks are not dense tensors: query restriction (queries=...) and "
                "store_maps need eager or sdpa; call model.set_attn_implementation('sdpa') "
                "before probing, or probe all queries without stored maps."
            )

        static = self.is_cross_attention(module)

        def install(tap: Tap) -> None:
            def pre_hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                tap.begin(cross=True if static else _cross_from_call(mod, args, kwargs))

            tap.stack.callback(module.register_forward_pre_hook(pre_hook, with_kwargs=True).remove)

        join_tap(module, "capture", recorder, stack, install)

    def prepare_model(
        self, model: nn.Module, probed: list[nn.Module], stack: contextlib.ExitStack
    ) -> None:
        seen: set[int] = set()
        for module in probed:
            config = module.config
            if id(config) in seen:
                continue
            seen.add(id(config))
            stack.callback(_use_config(config))

    def default_layout(
        self, model: nn.Module, *, tower: str | None = None
    ) -> InputLayout | LayerLayouts | None:
        return hf_layout(model, tower)

    def reference_weights(
        self, module: nn.Module, stack: contextlib.ExitStack, record: Callable[[Tensor], None]
    ) -> str | None:
        config: Any = module.config
        before = config._attn_implementation_internal
        config._attn_implementation_internal = "eager"
        stack.callback(setattr, config, "_attn_implementation_internal", before)

        def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            record(out[1].detach())  # (B, H, Lq, Lk), what output_attentions returns

        stack.callback(module.register_forward_hook(hook).remove)
        return "HF eager attention weights"

    def edit_query(
        self, module: nn.Module, edit: QueryEdit, stack: contextlib.ExitStack, *, name: str
    ) -> None:
        _enlist(_EDITS, module, edit, stack)
        stack.callback(_use_config(module.config))
