"""What every adapter hands to the probe, the adapter protocol and the registry.

An adapter knows one family of attention modules: how to find the ``q``, ``k``, mask and scale
that the attention kernel sees. It emits `AttentionInputs` to a `Recorder` (the
probe's per-layer state); the recorder runs the indicator pass and reduces immediately.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from attnprobe.labels import InputLayout, LayerLayouts

__all__ = [
    "Adapter",
    "AttentionInputs",
    "QueryEdit",
    "Recorder",
    "Tap",
    "adapter_for",
    "adapters",
    "dispatch",
    "install_hooks",
    "join_tap",
    "register_adapter",
    "tap_of",
    "with_query",
]

QueryEdit = Callable[[Tensor], Tensor]
"""A change of the query an attention kernel receives: ``[B, H, Lq, D] -> [B, H, Lq, D]``
(RollingQ's rotation). It runs in the model's forward, so gradients flow through it."""


@dataclass
class AttentionInputs:
    """The inputs of one attention kernel call, as the kernel sees them.

    Shapes follow ``F.scaled_dot_product_attention``: ``query`` ``[B, H, Lq, D]``, ``key``
    ``[B, Hk, Lk, D]`` with ``Hk`` dividing ``H`` (grouped-query attention), ``value``
    ``[B, Hk, Lk, Dv]``. ``attn_mask`` is broadcastable to ``[B, H, Lq, Lk]``: boolean
    (True = may attend) or an additive float mask.

    Examples:
        >>> import torch
        >>> q = torch.randn(2, 4, 10, 8)
        >>> AttentionInputs(query=q, key=q, is_causal=True).query.shape
        torch.Size([2, 4, 10, 8])
    """

    query: Tensor
    key: Tensor
    value: Tensor | None = None
    attn_mask: Tensor | None = None
    is_causal: bool = False
    scale: float | None = None
    enable_gqa: bool = False
    appended_keys: int = 0
    """Keys the module appends after the sequence (``bias_k``, a zero-attention key); they
    belong to no group, so mass on them is reported as residual."""
    cross: bool | None = None
    """Whether the keys come from another sequence than the queries (cross-attention), as the
    module's call shows it (HF ``key_value_states``, a torch ``MultiheadAttention`` query that
    is not its key); None: unknown, the layer's layouts decide."""
    weights: Tensor | None = None
    """Post-softmax weights ``[B, H, Lq, Lk]`` the module computed itself (attention written
    by hand): masses and maps are read from them instead of a kernel call on ``query`` and
    ``key``, which then serve the query and key statistics only."""


class Recorder(Protocol):
    """Where adapters send captures: one per probed module and probe (implemented by the
    probe). Several probes may be attached to one module; adapters hand every call to all of
    their recorders (`dispatch`)."""

    name: str

    def begin(self) -> None:
        """Called when the module's forward starts."""

    def record(self, inputs: AttentionInputs, kernel: Callable[..., Tensor] | None) -> None:
        """Capture one attention call (second pass, the model's output untouched)."""

    def record_fused(
        self, inputs: AttentionInputs, kernel: Callable[..., Tensor], dropout_p: float
    ) -> Tensor:
        """Capture one call and return the kernel output computed with ``V' = [V, E]``."""
        ...

    @property
    def wants_fused(self) -> bool:
        """Whether this probe runs the fused single call where the adapter supports it."""
        ...

    @property
    def needs_dense_mask(self) -> bool:
        """Whether the probe keeps only some query rows or stores full maps (both need a dense
        ``[B, H, Lq, Lk]``-broadcastable mask from the adapter)."""
        ...


def dispatch(
    recorders: Sequence[Recorder],
    inputs: AttentionInputs,
    kernel: Callable[..., Tensor],
    dropout_p: float,
    run: Callable[[], Any],
    *,
    fusable: bool = True,
) -> Any:
    """Run one intercepted attention call for the model and hand it to every recorder.

    The model's output comes from ``run()`` (its own call, bit-for-bit), or — when a recorder
    wants the fused single call, the call has no dropout and the adapter can fuse
    (``fusable``) — from that recorder's fused call. Every other recorder captures the same
    inputs by its own second pass, so probes attached to one module never see each other's
    passes and each records what it would alone.
    """
    lead = None
    if fusable and dropout_p == 0.0 and inputs.value is not None:
        lead = next((r for r in recorders if r.wants_fused), None)
    out = run() if lead is None else lead.record_fused(inputs, kernel, dropout_p)
    for recorder in recorders:
        if recorder is not lead:
            recorder.record(inputs, kernel)
    return out


class Tap:
    """The interception of one module shared by every probe attached to it: installed by the
    first recorder that joins, removed when the last one leaves."""

    def __init__(self) -> None:
        self.recorders: list[Recorder] = []
        self.stack = contextlib.ExitStack()
        """Where the interception's hooks and flags are undone."""
        self.captured = False
        """Whether the current forward reached the attention call (set by the adapter)."""
        self.cross: bool | None = None
        """Whether the current forward attends across sequences, as its call shows (set by the
        adapter; None: unknown)."""

    def begin(self, cross: bool | None = None) -> None:
        """A forward of the module starts (``cross``: whether it attends across sequences, if
        the call shows it): tell every recorder."""
        self.captured = False
        self.cross = cross
        for recorder in list(self.recorders):
            recorder.begin()


_TAPS: weakref.WeakKeyDictionary[nn.Module, dict[str, Tap]] = weakref.WeakKeyDictionary()
_TAP_LOCK = threading.RLock()


def join_tap(
    module: nn.Module,
    kind: str,
    recorder: Recorder,
    stack: contextlib.ExitStack,
    install: Callable[[Tap], None],
) -> Tap:
    """Add ``recorder`` to the ``kind`` tap of ``module`` until ``stack`` unwinds; the first
    recorder runs ``install(tap)`` (which registers its undo on ``tap.stack``), the last one to
    leave closes it."""
    with _TAP_LOCK:
        taps = _TAPS.setdefault(module, {})
        tap = taps.get(kind)
        if tap is None:
            tap = Tap()
            try:
                install(tap)
            except BaseException:
                tap.stack.close()
                raise
            taps[kind] = tap
        tap.recorders.append(recorder)

    def leave() -> None:
        with _TAP_LOCK:
            if recorder in tap.recorders:
                tap.recorders.remove(recorder)
            if not tap.recorders:
                module_taps = _TAPS.get(module, {})
                if module_taps.get(kind) is tap:
                    del module_taps[kind]
                if not module_taps:
                    _TAPS.pop(module, None)
                tap.stack.close()

    stack.callback(leave)
    return tap


def tap_of(module: nn.Module, kind: str) -> Tap | None:
    """The ``kind`` tap of ``module`` while some recorder is attached to it, else None."""
    taps = _TAPS.get(module)
    return None if taps is None else taps.get(kind)


class Adapter:
    """Base class for adapters: subclass it to probe an attention module attnprobe does not
    know.

    Override `matches` and `extract` (and `prepare` if the module needs a flag
    changed while probed). ``extract`` runs in a forward hook after the module ran, under
    ``torch.no_grad()``, and returns the ``q``, ``k`` and mask of the attention it computed; the
    probe runs the indicator pass on them with ``F.scaled_dot_product_attention``. Built-in
    adapters override `attach` to intercept the module's own kernel call instead.

    Examples:
        A module that computes attention by hand, with a user adapter:

        >>> import torch, attnprobe as ap
        >>> from torch import nn
        >>> class HandAttention(nn.Module):
        ...     def __init__(self, dim):
        ...         super().__init__()
        ...         self.qk = nn.Linear(dim, 2 * dim)
        ...     def forward(self, x):
        ...         q, k = self.qk(x).chunk(2, dim=-1)
        ...         w = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        ...         return w @ x
        >>> class HandAdapter(ap.Adapter):
        ...     def matches(self, module):
        ...         return isinstance(module, HandAttention)
        ...     def extract(self, module, args, kwargs, output):
        ...         q, k = module.qk(args[0]).chunk(2, dim=-1)  # (B, L, D) each
        ...         return ap.AttentionInputs(query=q.unsqueeze(1), key=k.unsqueeze(1))
        >>> unregister = ap.register_adapter(HandAdapter())
        >>> model = nn.Sequential(HandAttention(8))
        >>> with ap.probe(model, modalities={"a": 2, "b": 3}) as p:
        ...     _ = model(torch.randn(4, 5, 8))
        >>> p.result().to_frame()[["layer", "query_modality", "key_modality"]].shape
        (4, 3)
        >>> unregister()
    """

    name: str = "custom"

    def matches(self, module: nn.Module) -> bool:
        """Whether this adapter handles ``module``."""
        return False

    def is_cross_attention(self, module: nn.Module) -> bool:
        """Whether ``module`` always attends from one sequence to another (its keys need a key
        layout); automatic layer selection leaves such a module out when it has none. Calls
        are also told apart one by one (`AttentionInputs.cross`). Default: False."""
        return False

    def attention_shape(self, module: nn.Module) -> tuple[int, int] | None:
        """``(query heads, head size)`` of ``module``'s attention, when known before it runs
        (RollingQ checks them at ``attach``); default: the module's ``num_heads`` and
        ``head_dim`` attributes, else None."""
        heads = getattr(module, "num_heads", None)
        size = getattr(module, "head_dim", None)
        if isinstance(heads, int) and isinstance(size, int):
            return heads, size
        return None

    def default_layout(
        self, model: nn.Module, *, tower: str | None = None
    ) -> InputLayout | LayerLayouts | None:
        """The layouts of ``model``'s token sequences when this adapter's family knows the model
        (`attnprobe.auto_layout` asks each adapter): one `InputLayout`, or `LayerLayouts` for a
        model with several sequences; None otherwise (the default).

        Args:
            model: the model the probe will be attached to.
            tower: ``"text"`` or ``"vision"`` for models with both, or None.
        """
        return None

    def reference_weights(
        self, module: nn.Module, stack: contextlib.ExitStack, record: Callable[[Tensor], None]
    ) -> str | None:
        """Switch ``module`` to an explicit attention computation whose post-softmax weights
        ``[B, H, Lq, Lk]`` go to ``record`` on every forward, for `attnprobe.self_check`
        (undo on ``stack``); returns a description of the reference, or None when this family
        has none (the check then reads maps through the math SDPA kernel)."""
        return None

    def explain_missing_capture(self, module: nn.Module) -> str | None:
        """How to fix ``module`` running without any attention call being captured (a hint
        for the error `attnprobe.Probe.result` raises), or None for the generic one."""
        return None

    def prepare(self, module: nn.Module) -> Callable[[], None] | None:
        """Change what the module needs changed while probed; return a function that undoes it."""
        return None

    def extract(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> AttentionInputs | None:
        """Recompute the ``q``, ``k`` and mask of the attention the module just ran."""
        raise NotImplementedError(
            f"{type(self).__name__}.extract is not implemented: an adapter must return the "
            "AttentionInputs of the attention its module computed (or override attach)."
        )

    def attach(self, module: nn.Module, recorder: Recorder, stack: contextlib.ExitStack) -> None:
        """Install hooks on ``module`` that feed ``recorder``; register every undo on ``stack``."""
        restore = self.prepare(module)
        if restore is not None:
            stack.callback(restore)

        def pre_hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            recorder.begin()

        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            if out is None:  # forward raised (the hook is always called)
                return
            with torch.no_grad():
                inputs = self.extract(mod, args, kwargs, out)
            if inputs is not None:
                recorder.record(inputs, None)

        install_hooks(module, pre_hook, hook, stack)

    def prepare_model(
        self, model: nn.Module, probed: list[nn.Module], stack: contextlib.ExitStack
    ) -> None:
        """Change model-level flags that the probed modules of this family need (optional)."""

    def edit_query(
        self, module: nn.Module, edit: QueryEdit, stack: contextlib.ExitStack, *, name: str
    ) -> None:
        """Make ``module`` call its attention kernel with ``edit(query)`` instead of ``query``
        (every call, until ``stack`` unwinds). A probe attached to the same module sees the
        edited query, whichever was attached first. Built-in adapters implement it; the
        default refuses.

        Args:
            module: the attention module.
            edit: the change, `QueryEdit`.
            stack: where every undo is registered.
            name: the module's path, for error messages.
        """
        from attnprobe.errors import CaptureError

        raise CaptureError(
            f"cannot change the query of {name!r} ({type(module).__name__}): its adapter "
            f"{type(self).__name__} does not implement edit_query; use a module that calls "
            "F.scaled_dot_product_attention, torch.nn.MultiheadAttention or a HuggingFace "
            "attention module, or implement Adapter.edit_query."
        )


def install_hooks(
    module: nn.Module,
    pre_hook: Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], None],
    hook: Callable[[nn.Module, tuple[Any, ...], dict[str, Any], Any], None],
    stack: contextlib.ExitStack,
    *,
    inner: bool = False,
) -> None:
    """Register a forward pre-hook and an always-called forward hook (both with kwargs; the
    forward hook gets ``out=None`` when forward raised), both removed when ``stack`` unwinds.
    Hooks return None, so they never replace the module's output (one that returned a value
    would).

    What the hooks enter (a ``TorchFunctionMode``, a patched kernel) nests by hook order:
    capture hooks are *outer* (the pre-hook runs first, the forward hook last), query edits
    (``inner=True``) are *inner* (pre-hook last, forward hook first). So an edit always
    reaches the kernel call before a probe's capture does, and the probe records the query
    the kernel really received, whatever order they were attached in.
    """

    def guarded(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if _compiling():
            from attnprobe.errors import CaptureError

            raise CaptureError(
                f"{type(mod).__name__} is being traced by torch.compile while attnprobe "
                f"{'changes its query' if inner else 'probes it'}; attnprobe intercepts the "
                "attention call in eager mode, which torch.compile cannot trace. Probe the "
                "model uncompiled (compile it after the probe is closed), or compile only "
                "the parts of the model that are not probed."
            )
        pre_hook(mod, args, kwargs)

    stack.callback(
        module.register_forward_pre_hook(guarded, prepend=not inner, with_kwargs=True).remove
    )
    stack.callback(
        module.register_forward_hook(hook, with_kwargs=True, always_call=True, prepend=inner).remove
    )


def _compiling() -> bool:
    """Whether torch.compile (dynamo) is tracing this code."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def with_query(
    args: tuple[Any, ...], kwargs: dict[str, Any], edit: QueryEdit
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments of an SDPA-signature call with its query replaced by ``edit(query)``."""
    if args:
        return (edit(args[0]), *args[1:]), kwargs
    return args, {**kwargs, "query": edit(kwargs["query"])}


def edit_missed(name: str, module: nn.Module, hint: str) -> Exception:
    """The error raised when a module ran without the attention call a query edit needs."""
    from attnprobe.errors import CaptureError

    return CaptureError(
        f"{name!r} ({type(module).__name__}) ran without calling its attention kernel through "
        f"the path attnprobe intercepts, so its query could not be changed (RollingQ would "
        f"silently do nothing); {hint}"
    )


_REGISTRY: list[Adapter] = []


def register_adapter(adapter: Adapter) -> Callable[[], None]:
    """Register ``adapter`` ahead of the built-in ones; returns a function that unregisters it.

    Examples:
        See `Adapter`.
    """
    if not isinstance(adapter, Adapter):
        from attnprobe.errors import ProbeConfigError

        raise ProbeConfigError(
            f"register_adapter: expected an attnprobe.Adapter instance, received "
            f"{type(adapter).__name__}; subclass attnprobe.Adapter and implement matches() and "
            "extract()."
        )
    _REGISTRY.insert(0, adapter)

    def unregister() -> None:
        if adapter in _REGISTRY:
            _REGISTRY.remove(adapter)

    return unregister


def adapters() -> tuple[Adapter, ...]:
    """The registered adapters, in the order they are tried."""
    return tuple(_REGISTRY)


def adapter_for(module: nn.Module) -> Adapter | None:
    """The first registered adapter that matches ``module``, or None."""
    for adapter in _REGISTRY:
        if adapter.matches(module):
            return adapter
    return None
