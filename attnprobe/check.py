"""`self_check`: compare the probe's masses on a user's own model with an eager reference.

Run it once on one small batch before trusting a long experiment: it probes the model as it is
configured (its own attention kernel), then recomputes every probed layer's attention weights
the slow, explicit way and sums them per group:

- modules whose family has an explicit path (`attnprobe.capture.Adapter.reference_weights`):
  that path's weights — HuggingFace's ``eager`` implementation, timm's non-fused path;
- any other module: full maps through the math SDPA kernel with ``V = I`` (``store_maps``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from attnprobe._calls import call_model
from attnprobe.capture import LayerSelector, adapter_for
from attnprobe.errors import ProbeConfigError
from attnprobe.functional import group_indicator
from attnprobe.labels import InputLayout, ModalityLayout
from attnprobe.runner import run_model, run_probed

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
            f"{len(self.layers)} layers, tolerance {self.atol:.0e})"
        )


def _labels_of(modalities: Any, inputs: Any, batch: int, length: int) -> Tensor:
    """``[B, L]`` labels the probe applied to this batch."""
    layout: ModalityLayout
    if isinstance(modalities, InputLayout):
        layout = call_model(modalities, inputs)
    elif isinstance(modalities, Mapping):
        layout = ModalityLayout(modalities)
    else:
        layout = modalities
    return layout.labels(batch, length)


def _masses(weights: Tensor, labels: Tensor, groups: int) -> Tensor:
    """``[H, G, G]`` masses from weights ``[B, H, L, L]`` in float64
    (``docs/concepts/attention-mass.md``, "Definition")."""
    onehot = group_indicator(labels.to(weights.device), groups, torch.float64)  # (B, L, G)
    per_row = torch.einsum("bhqk,bkg->bhqg", weights.double(), onehot)  # (B, H, L, G)
    per_row = torch.nan_to_num(per_row) * onehot.sum(-1)[:, None, :, None]  # drop padded rows
    totals = torch.einsum("bhqg,bqG->hGg", per_row, onehot)  # (H, Gq, Gk)
    counts = onehot.sum((0, 1))  # (Gq,)
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
    modalities: ModalityLayout | Mapping[str, int] | InputLayout,
    *,
    layers: LayerSelector = None,
    atol: float = 1e-5,
) -> SelfCheck:
    """Compare the probe's per-group masses with an eager reference on one batch.

    Args:
        model: the model, configured as it will be probed (its attention implementation is
            restored afterwards).
        inputs: one small batch: a mapping of keyword arguments, a tuple of positional
            arguments, or a single tensor.
        modalities: the layout the probe will use (`ModalityLayout`, mapping or
            `InputLayout`).
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
        probed = run_probed(
            model, [inputs], sync=False, modalities=modalities, layers=layers, key_stats=False
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
                    model,
                    [inputs],
                    sync=False,
                    modalities=modalities,
                    layers=list(rest),
                    store_maps=True,
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
        w = weights[base]  # (B, H, L, L)
        if w.shape[-1] != w.shape[-2]:
            raise ProbeConfigError(
                f"self_check: layer {base!r} attends from {w.shape[-2]} to {w.shape[-1]} tokens; "
                "only self-attention over the whole sequence can be checked."
            )
        labels = _labels_of(modalities, inputs, w.shape[0], w.shape[-1])
        expected = _masses(w, labels, len(layer.key_groups))
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
