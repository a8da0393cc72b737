"""`self_check`: compare the probe's masses on a user's own model with an eager reference.

Run it once on one small batch before trusting a long experiment: it probes the model as it is
configured (its own attention kernel), then recomputes every probed layer's attention weights
the slow, explicit way and sums them per group:

- modules whose family has an explicit path (`attnprobe.capture.Adapter.reference_weights`):
  that path's weights — HuggingFace's ``eager`` implementation, timm's non-fused path;
- any other module: full maps through the math SDPA kernel with ``V = I`` (``store_maps``).

The reference sums its weights over the groups the probe applied to each call, so it checks the
capture (kernel inputs, masks, scale, query rows) and not the layouts: whether a layout
describes the model's tokens is the user's to check (``layout(**inputs)`` shows one batch's
labels).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from attnprobe._text import count
from attnprobe.capture import LayerSelector, adapter_for
from attnprobe.errors import ProbeConfigError
from attnprobe.functional import group_indicator
from attnprobe.labels import InputLayout, LayerLayouts, ModalityLayout
from attnprobe.runner import run_model, run_probed
from attnprobe.stats import Call, Dims, State, Statistic

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SelfCheck", "self_check"]


@dataclass(frozen=True)
class SelfCheck:
    """What `self_check` measured: the largest absolute difference per probed layer between
    the probe's masses and the reference's."""

    layers: tuple[str, ...]
    """Names of the compared layers."""
    references: tuple[str, ...]
    """How each layer's reference weights were computed."""
    max_abs_diff: tuple[float, ...]
    """Largest ``|mass − reference|`` over heads and group pairs, per layer."""
    atol: float
    """The tolerance `passed` applies."""

    @property
    def worst(self) -> float:
        """The largest difference over all layers."""
        return max(self.max_abs_diff, default=0.0)

    @property
    def passed(self) -> bool:
        """Whether every layer is within `atol`."""
        return self.worst <= self.atol

    def to_frame(self) -> pd.DataFrame:
        """One row per layer: ``layer``, ``reference``, ``max_abs_diff``, ``passed``."""
        import pandas as pd

        return pd.DataFrame(
            {
                "layer": list(self.layers),
                "reference": list(self.references),
                "max_abs_diff": list(self.max_abs_diff),
                "passed": [d <= self.atol for d in self.max_abs_diff],
            }
        )

    def __repr__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"SelfCheck({verdict}: largest difference {self.worst:.2e} over "
            f"{count(len(self.layers), 'layer')}, tolerance {self.atol:.0e})"
        )


@dataclass(frozen=True)
class _AppliedLabels(Statistic):
    """The labels the probe applied to each call (keys, kept query rows), so that the
    reference sums its weights over the same groups."""

    name = "self_check_labels"

    def states(self, dims: Dims) -> dict[str, State]:
        return {"applied_keys": State((), "list"), "applied_queries": State((), "list")}

    def update(self, call: Call) -> dict[str, Any]:
        labels = call.labels
        queries = labels.queries  # (B, R)
        if labels.rows is not None:  # back to every query row, -1 where not kept
            full = queries.new_full((queries.shape[0], call.query_all.shape[2]), -1)  # (B, Lq)
            full[:, labels.rows] = queries
            queries = full
        return {"applied_keys": labels.keys.cpu(), "applied_queries": queries.cpu()}


def _masses(
    weights: Tensor, queries: Tensor, keys: Tensor, query_groups: int, key_groups: int
) -> Tensor:
    """``[H, Gq, Gk]`` masses from weights ``[B, H, Lq, Lk]`` in float64, with query labels
    ``[B, Lq]`` and key labels ``[B, Lk]`` (``docs/concepts/attention-mass.md``,
    "Definition")."""
    keys_onehot = group_indicator(keys.to(weights.device), key_groups, torch.float64)  # (B, Lk, Gk)
    rows = group_indicator(queries.to(weights.device), query_groups, torch.float64)  # (B, Lq, Gq)
    per_row = torch.einsum("bhqk,bkg->bhqg", weights.double(), keys_onehot)  # (B, H, Lq, Gk)
    per_row = torch.nan_to_num(per_row) * rows.sum(-1)[:, None, :, None]  # drop unkept rows
    totals = torch.einsum("bhqg,bqG->hGg", per_row, rows)  # (H, Gq, Gk)
    counts = rows.sum((0, 1))  # (Gq,)
    return totals / counts.view(1, -1, 1)


def _recorder_of(weights: dict[str, Tensor], name: str) -> Callable[[Tensor], None]:
    def record(w: Tensor) -> None:
        weights[name] = w

    return record


@contextlib.contextmanager
def _eager_reference(
    modules: dict[str, nn.Module], weights: dict[str, Tensor]
) -> Iterator[dict[str, str]]:
    """Switch each module to its family's explicit attention computation
    (`attnprobe.capture.Adapter.reference_weights`) and record its weights."""
    how: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        for name, module in modules.items():
            adapter = adapter_for(module)
            if adapter is None:
                continue
            described = adapter.reference_weights(module, stack, _recorder_of(weights, name))
            if described is not None:
                how[name] = described
        yield how


def self_check(
    model: nn.Module,
    inputs: Any,
    modalities: ModalityLayout | Mapping[str, Any] | InputLayout | LayerLayouts,
    *,
    key_modalities: ModalityLayout | Mapping[str, Any] | None = None,
    layers: LayerSelector = None,
    atol: float = 1e-5,
) -> SelfCheck:
    """Compare the probe's per-group masses with an eager reference on one batch.

    Args:
        model: the model, configured as it will be probed (its attention implementation is
            restored afterwards).
        inputs: one small batch: a mapping of keyword arguments, a tuple of positional
            arguments, or a single tensor.
        modalities: the layouts the probe will use, as for `attnprobe.probe`: one layout
            (`ModalityLayout`, mapping, `InputLayout`), per-layer layouts
            (``{layer pattern: layout}``) or `attnprobe.labels.LayerLayouts` (what
            ``auto_layout`` gives encoder–decoders).
        key_modalities: the layouts of cross-attention keys, as for `attnprobe.probe`.
        layers: the layers to check (as for `probe`); default: all.
        atol: tolerance for `SelfCheck.passed` (fp32 kernels agree to ~1e-6; use ~1e-2 in
            bf16).

    Returns:
        A `SelfCheck` with the largest difference per layer.

    Examples:
        >>> import torch, attnprobe as ap
        >>> from torch import nn
        >>> model = nn.TransformerEncoder(
        ...     nn.TransformerEncoderLayer(16, 2, batch_first=True), 2, enable_nested_tensor=False
        ... ).eval()
        >>> check = ap.self_check(model, torch.randn(2, 6, 16), {"a": 2, "b": 4})
        >>> check.passed, len(check.layers)
        (True, 2)
    """
    was_training = model.training
    model.eval()  # dropout off: the reference must see the probe's pre-dropout distribution
    try:
        # one batch on this process: no DDP sync, the reference weights are this rank's own
        options: dict[str, Any] = {"modalities": modalities, "key_modalities": key_modalities}
        probed = run_probed(
            model,
            [inputs],
            sync=False,
            layers=layers,
            key_stats=False,
            statistics=[_AppliedLabels()],
            **options,
        )
        result = probed.result
        modules = dict(model.named_modules())
        selected = {name: modules[name] for name in probed.layer_names}
        weights: dict[str, Tensor] = {}
        with _eager_reference(selected, weights) as how:
            run_model(model, [inputs])
        rest = tuple(name for name in probed.layer_names if name not in weights)
        if rest:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.MATH):
                maps = run_probed(
                    model, [inputs], sync=False, layers=list(rest), store_maps=True, **options
                )
            for layer in maps.result.layers:
                if layer.maps is not None and ":" not in layer.name:
                    weights[layer.name] = torch.cat(list(layer.maps))
                    how[layer.name] = "math SDPA maps (V = I)"
    finally:
        model.train(was_training)
    names, references, diffs = [], [], []
    for layer in result.layers:
        base = layer.name.split(":call")[0]
        if base not in weights or layer.name != base:
            continue
        w = weights[base]  # (B, H, Lq, Lk)
        keys = torch.cat(list(layer.states["applied_keys"]))  # (B, Lk)
        queries = torch.cat(list(layer.states["applied_queries"]))  # (B, Lq)
        kept = (queries >= 0).any(0)  # (Lq,) the rows the probe keeps (maps hold only these)
        if w.shape[-2] == int(kept.sum()) != queries.shape[-1]:
            queries = queries[:, kept]  # (B, R)
        if keys.shape[-1] != w.shape[-1] or queries.shape[-1] != w.shape[-2]:
            raise ProbeConfigError(
                f"self_check: layer {base!r}: the reference weights have shape "
                f"{list(w.shape)} but the probe labelled {queries.shape[-1]} queries and "
                f"{keys.shape[-1]} keys; only layers called once per forward can be checked."
            )
        expected = _masses(w, queries, keys, len(layer.query_groups), len(layer.key_groups))
        got = layer.mass.double()
        expected = expected.to(got.device)
        both = ~(torch.isnan(got) | torch.isnan(expected))
        diff = (got - expected).abs()[both]
        mismatch = bool((torch.isnan(got) != torch.isnan(expected)).any())
        names.append(layer.name)
        references.append(how[base])
        diffs.append(math.inf if mismatch else float(diff.max()) if diff.numel() else 0.0)
    if not names:
        raise ProbeConfigError("self_check: no probed layer could be compared.")
    return SelfCheck(tuple(names), tuple(references), tuple(diffs), atol)
