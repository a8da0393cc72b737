"""Which modules a probe attaches to: unwrapping wrappers, selecting attention layers, and
explaining a layer that produced nothing.

Everything here asks the adapters (`adapter_for`, `Adapter.is_cross_attention`,
`Adapter.explain_missing_capture`), so a new model family only touches its adapter.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Sequence

from torch import nn

from attnprobe.capture._base import Adapter, adapter_for
from attnprobe.capture._hand import HandAttentionAdapter
from attnprobe.capture._sdpa import SdpaAdapter
from attnprobe.errors import ProbeConfigError

__all__ = ["LayerSelector", "explain_missing_capture", "select_layers", "unwrap_model"]

LayerSelector = str | Sequence[str] | Callable[[str, nn.Module], bool] | None
"""Which modules to probe: None, a glob, a list of paths or a predicate ``(name, module)``."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """Reject models whose hooks would never fire; unwrap DDP/FSDP-style ``.module``."""
    if not isinstance(model, nn.Module):
        raise ProbeConfigError(
            f"probe: expected a torch.nn.Module, received {type(model).__name__}."
        )
    if isinstance(model, nn.DataParallel):
        raise ProbeConfigError(
            "probe: nn.DataParallel runs replicas of the model, so hooks on the original never "
            "see the batches. Probe model.module on one device, or use "
            "DistributedDataParallel (one process per device), which attnprobe supports."
        )
    for name, module in model.named_modules():
        compiled_wrapper = hasattr(module, "_orig_mod") and hasattr(module, "dynamo_ctx")
        if compiled_wrapper or getattr(module, "_compiled_call_impl", None) is not None:
            raise ProbeConfigError(
                f"probe: {'the model' if not name else repr(name)} is compiled with "
                "torch.compile; hooks added to a compiled model never fire. Attach the probe "
                "to the uncompiled model (model._orig_mod) before compiling, or probe without "
                "compiling."
            )
    if type(model).__name__ in {"DistributedDataParallel", "FullyShardedDataParallel"}:
        inner = getattr(model, "module", None)
        if isinstance(inner, nn.Module):
            return inner
    return model


def _strip_wrapper_prefix(name: str) -> str:
    return name[len("module.") :] if name.startswith("module.") else name


def select_layers(model: nn.Module, layers: LayerSelector) -> list[tuple[str, nn.Module, Adapter]]:
    """The attention modules ``layers`` selects in ``model``, each with its adapter.

    Args:
        model: the (unwrapped) model.
        layers: None (every innermost attention module), a glob on ``named_modules()`` paths,
            a list of paths, or a predicate ``(name, module)``.
    """
    modules = dict(model.named_modules())
    candidates = [(n, m, a) for n, m in modules.items() if (a := adapter_for(m)) is not None]
    # keep the innermost attention modules: a block whose own forward mentions SDPA but which
    # contains a matched attention module is not itself the attention call site
    names = {n for n, _, _ in candidates}
    candidates = [
        (n, m, a)
        for n, m, a in candidates
        if not any(o != n and o.startswith(f"{n}." if n else "") for o in names)
    ]
    hint = ", ".join(repr(n) for n, _, _ in candidates[:6]) or "none found"

    if layers is None:
        chosen = candidates
        if not chosen:
            raise ProbeConfigError(
                "probe: no attention modules found in the model (torch MultiheadAttention, "
                "modules calling F.scaled_dot_product_attention, or registered adapters). "
                "Select layers by name with layers=[...] or register an adapter with "
                "attnprobe.register_adapter."
            )
        return chosen
    if callable(layers) and not isinstance(layers, str):
        predicate = layers
        chosen = [(n, m, a) for n, m, a in candidates if predicate(n, m)]
        if not chosen:
            raise ProbeConfigError(
                f"probe: the layers predicate selected none of the attention modules ({hint})."
            )
        return chosen
    if isinstance(layers, str):
        pattern = _strip_wrapper_prefix(layers)
        chosen = [(n, m, a) for n, m, a in candidates if fnmatch.fnmatchcase(n, pattern)]
        if chosen:
            return chosen
        if pattern not in modules:
            raise ProbeConfigError(
                f"probe: layers={layers!r} matches no attention module; attention modules: {hint}."
            )
        layers = [pattern]
    if not isinstance(layers, Sequence) or not all(isinstance(x, str) for x in layers):
        raise ProbeConfigError(
            "probe: expected layers as None, a glob string, a list of module names or a "
            f"predicate (name, module) -> bool, received {type(layers).__name__}."
        )
    if len(layers) == 0:
        raise ProbeConfigError(
            f"probe: layers=[] selects nothing; pass None for every attention module ({hint})."
        )
    chosen = []
    for raw in layers:
        name = _strip_wrapper_prefix(raw)
        if name not in modules:
            close = difflib.get_close_matches(name, list(modules), n=3)
            raise ProbeConfigError(
                f"probe: no module named {raw!r} in the model"
                + (f"; did you mean {close}?" if close else f"; attention modules: {hint}.")
            )
        module = modules[name]
        chosen.append((name, module, adapter_for(module) or SdpaAdapter()))
    chosen_names = [n for n, _, _ in chosen]
    for a in chosen_names:
        for b in chosen_names:
            if a != b and (a == "" or b.startswith(f"{a}.")):
                raise ProbeConfigError(
                    f"probe: selected layers {a!r} and {b!r} are nested; select only the "
                    "attention module itself."
                )
    return chosen


def explain_missing_capture(name: str, module: nn.Module, forwards: int) -> str:
    """Why the selected module ``name`` produced no capture, and how to fix it."""
    if forwards == 0:
        return (
            f"{name!r} never ran while the probe was attached (is it used in this "
            "forward? was the model compiled, or called through a path that bypasses "
            "module hooks?)"
        )
    inner = [
        f"{name}.{n}" if name else n
        for n, m in module.named_modules()
        if n and adapter_for(m) is not None
    ]
    cause = (
        "its forward did not call F.scaled_dot_product_attention (it may compute attention by hand)"
    )
    adapter = adapter_for(module)
    if inner:
        fix = f"select its attention submodules instead: {inner[:4]}"
    elif isinstance(adapter, HandAttentionAdapter):
        cause = "its forward computed no softmax over the keys of a query-key product"
        fix = adapter.explain_missing_capture(module) or ""
    else:
        fix = (adapter or SdpaAdapter()).explain_missing_capture(module) or (
            "register an adapter for it (attnprobe.register_adapter) that extracts q and k"
        )
    return f"{name!r} ran {forwards} time(s) but no attention call was captured: {cause}; {fix}"
