"""The checks of the HuggingFace architecture sweep: attnprobe against every multimodal and
sequence-to-sequence architecture of the installed transformers.

For an architecture that `tests.hf_zoo` builds as a tiny random model (nothing is downloaded),
`sweep_one` runs, on each backend (``model.set_attn_implementation``):

1. outputs: ``model(**inputs)`` with and without
   ``with ap.probe(model, modalities=ap.auto_layout(model)) as p: model(**inputs)`` must be
   ``torch.equal`` (every tensor field of the output: logits, last_hidden_state, …);
2. masses: every layer of ``p.result()`` against the model's own eager attention weights
   (`tests.hf_zoo.eager_calls`), summed per group by `tests._reference.masses_from_weights`
   with the labels the layout gives for the inputs (``layout(**inputs).labels(B, L)``, -1
   ignored): mass[h, gq, gk] is the mean over kept query rows of group gq of the weights summed
   over the keys of group gk; equal within ``atol``;
3. coverage: no attention layer left out (`ProbeResult.skipped`, or an attention module that
   ran in the eager forward and that the probe did not find), except modules that never ran
   and those on the media side of a multimodal model outside the language model's layout.

The result is a `Row`: status ``exact``, ``partial`` (1 and 2 hold, 3 does not),
``mismatch``, ``output-changed``, ``probe-error``, ``reference-error`` or ``skipped`` (the
zoo could not build the model tiny), with a one-line detail. Errors from attnprobe are
recorded, not raised.

Used by ``tests/test_hf_sweep.py`` (one test per architecture), the command line sweep
``benchmarks/hf_sweep.py`` and the generated page ``docs/reference/hf-architectures.md``
(``docs/scripts/hf_support_table.py``). Not a test file: a harness, like `tests.hf_zoo`.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import attnprobe as ap
from tests import hf_zoo
from tests._reference import masses_from_weights

__all__ = [
    "ATOL",
    "BACKENDS",
    "CAP",
    "CAVEATS",
    "FIELDS",
    "UNSUPPORTED",
    "Failed",
    "Row",
    "check",
    "sweep_one",
]

BACKENDS = ("sdpa", "eager")
"""The attention implementations each architecture is checked on, in order (the model is
built on the first)."""
CAP = 60.0
"""Wall-clock seconds per model: for the build, then again for the checks."""
ATOL = 1e-5
"""Largest difference allowed between a probed mass and the eager reference."""

UNSUPPORTED: dict[str, str] = {
    # partly: the layers probed are exact, these attention layers have no automatic layout
}
"""Architectures (``model_type``) that build tiny but that attnprobe knowingly does not
support, or supports in part (status ``partial``: some attention layers left out), and why:
``tests/test_hf_sweep.py`` expects them to fail (and fails once one passes: remove it from here
then), and the generated table lists them as (partly) not supported."""

CAVEATS: dict[str, str] = {
    "prophetnet": "the n-gram self-attention is read on its main stream (its predict streams' "
    "softmaxes are reported with a warning, not captured)",
}
"""What the table says beside *supported* for architectures whose exact result leaves part of
an attention layer's computation out (and the probe says so)."""

SEED = 0
"""Seed of every forward (some models draw noise or masks inside ``forward``)."""
FIELDS = (
    "model_type",
    "class",
    "mapping",
    "kind",
    "status",
    "detail",
    "layers",
    "profile",
    "build_seconds",
    "seconds",
)
"""The columns of `Row.as_dict` (the CSV of ``benchmarks/hf_sweep.py``)."""


@dataclasses.dataclass
class Row:
    model_type: str
    class_name: str
    mapping: str
    kind: str = ""
    status: str = ""
    detail: str = ""
    layers: int = 0
    profile: str = ""
    build_seconds: float = 0.0
    seconds: float = 0.0
    outside: int = 0
    """Attention layers outside the layout by design: the media side of a multimodal model
    (towers, resamplers, Q-Formers; `_in_tower`), not a failure."""
    leftovers: list[str] = dataclasses.field(default_factory=list)
    """attnprobe registrations the probe left in transformers (removed since; named in
    ``detail``): a failure whatever the status."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "class": self.class_name,
            "mapping": self.mapping,
            "kind": self.kind,
            "status": self.status,
            "detail": self.detail,
            "layers": self.layers,
            "profile": self.profile,
            "build_seconds": f"{self.build_seconds:.1f}",
            "seconds": f"{self.seconds:.1f}",
        }


class Failed(Exception):
    """One check of one architecture failed: ``status`` and a one-line ``detail``."""

    def __init__(self, status: str, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


# -- checks --------------------------------------------------------------------------------------
def _tensors(output: Any) -> dict[str, Tensor]:
    """The tensor fields of a model output (a ModelOutput, a tuple or a tensor)."""
    if isinstance(output, Tensor):
        return {"output": output}
    if isinstance(output, Mapping):
        return {k: v for k, v in output.items() if isinstance(v, Tensor)}
    if isinstance(output, tuple):
        return {str(i): v for i, v in enumerate(output) if isinstance(v, Tensor)}
    return {}


def _compare_outputs(reference: Any, probed: Any) -> None:
    expected, got = _tensors(reference), _tensors(probed)
    if not expected:
        raise Failed("reference-error", f"no tensor in the output ({type(reference).__name__})")
    for key, value in expected.items():
        other = got.get(key)
        if other is None or other.shape != value.shape:
            raise Failed("output-changed", f"{key}: missing or reshaped under the probe")
        if not torch.equal(value, other):
            diff = (value.double() - other.double()).abs().nan_to_num(float("inf")).max()
            raise Failed("output-changed", f"{key}: max |diff| {float(diff):.3g}")


def _source_layout(model: nn.Module, layout: Any, inputs: Mapping[str, Any]) -> ap.ModalityLayout:
    """The per-sample layout an input layout gives for these inputs: called with the forward
    arguments of the module it reads (its ``source``; the model itself when it has none), in a
    forward pre-hook on the first call of that module, so that it sees the arguments as they
    are then (a KV cache passed in fills up during the forward)."""
    source = getattr(layout, "source", None)
    if not source:
        return layout(**inputs)  # type: ignore[no-any-return]
    captured: list[ap.ModalityLayout] = []

    def read(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not captured:
            captured.append(layout(*args, **kwargs))

    handle = model.get_submodule(source).register_forward_pre_hook(read, with_kwargs=True)
    try:
        _forward(model, inputs)
    finally:
        handle.remove()
    if not captured:
        raise Failed("reference-error", f"the layout's source {source!r} was never called")
    return captured[0]


def _labels(
    model: nn.Module, layout: Any, inputs: Mapping[str, Any], batch: int, length: int
) -> Tensor:
    """``[B, L]`` group labels of one sequence layout for these inputs (-1 = ignored)."""
    if isinstance(layout, ap.ModalityLayout):
        return layout.labels(batch, length)
    return _source_layout(model, layout, inputs).labels(batch, length)


def _key_labels(
    model: nn.Module,
    layer: Any,
    key_layout: Any,
    merged: str | None,
    queries: Tensor,
    inputs: Mapping[str, Any],
    length: int,
) -> Tensor:
    """``[B, Lk]`` labels of the keys of one cross call, as indices into the layer's key
    groups. ``merged`` (`attnprobe.labels.MergedKeys`): the layer's own tokens (labelled like
    its queries) and the key layout's, own ``"first"`` or ``"last"``; a group name in both is
    one group."""
    batch, own = queries.shape
    if not merged:
        return _labels(model, key_layout, inputs, batch, length)
    other = _labels(model, key_layout, inputs, batch, length - own)  # (B, Lk - Lq)

    def to_keys(labels: Tensor, names: Sequence[str]) -> Tensor:
        table = torch.tensor([*(layer.key_groups.index(n) for n in names), -1])  # -1 -> -1
        return table[labels.long()]

    mine, theirs = to_keys(queries, layer.query_groups), to_keys(other, key_layout.names)
    return torch.cat([mine, theirs] if merged == "first" else [theirs, mine], dim=1)


def _layer_layouts(layout: Any, name: str, module: nn.Module) -> tuple[Any, Any, str | None]:
    """(query layout, key layout or None, where its own tokens are among the keys of its cross
    calls: ``"first"``, ``"last"`` or None, not merged) of one layer: per-layer layouts when
    ``layout`` maps layers to layouts (``query_layout`` / ``key_layout`` / ``merged_keys``),
    else ``layout`` itself."""
    if hasattr(layout, "query_layout"):
        entry = getattr(layout, "merged_keys", lambda n, m: None)(name, module)
        merged = None if entry is None else entry.own
        return layout.query_layout(name, module), layout.key_layout(name, module), merged
    return layout, None, None


def _check_masses(
    model: nn.Module, result: Any, layout: Any, inputs: Mapping[str, Any], atol: float
) -> float:
    """Largest |probe - eager| mass over every probed layer (raises `Failed`)."""
    calls = hf_zoo.eager_calls(model, inputs)
    by_path: dict[str, list[hf_zoo.Call]] = collections.defaultdict(list)
    for call in calls:
        by_path[call.site].append(call)
    worst = 0.0
    for layer in result.layers:
        path = layer.name.split(":call")[0]
        layer_calls = by_path.get(layer.name)
        if not layer_calls:
            raise Failed("reference-error", f"{layer.name}: no eager call of this site")
        if any(c.weights is None for c in layer_calls):
            raise Failed("reference-error", f"{layer.name}: eager returned no weights")
        module = model.get_submodule(path)
        query_layout, key_layout, merged = _layer_layouts(layout, path, module)
        gq, gk = len(layer.query_groups), len(layer.key_groups)
        total = np.zeros((layer.num_heads, gq, gk))
        count = np.zeros(gq)
        for call in layer_calls:
            weights = call.weights
            assert weights is not None
            batch, _, lq, lk = weights.shape  # (B, H, Lq, Lk)
            if call.cross and key_layout is None:
                raise Failed("reference-error", f"{layer.name}: cross-attention, no key layout")
            queries = _labels(model, query_layout, inputs, batch, lq)  # (B, Lq)
            keys = (
                _key_labels(model, layer, key_layout, merged, queries, inputs, lk)
                if call.cross
                else queries
            )  # (B, Lk)
            mean = masses_from_weights(weights, keys, queries, gk, gq)  # (H, Gq, Gk)
            rows = np.array([(queries == g).sum().item() for g in range(gq)], dtype=float)
            total += np.nan_to_num(mean) * rows[None, :, None]
            count += rows
        with np.errstate(invalid="ignore", divide="ignore"):
            expected = total / count[None, :, None]  # (H, Gq, Gk); NaN for empty groups
        got = layer.mass.double().numpy()
        if got.shape != expected.shape:
            raise Failed("mismatch", f"{layer.name}: shape {got.shape} vs {expected.shape}")
        if not np.array_equal(np.isnan(got), np.isnan(expected)):
            raise Failed("mismatch", f"{layer.name}: empty groups differ")
        diff = float(np.nanmax(np.abs(got - expected))) if np.isfinite(expected).any() else 0.0
        worst = max(worst, diff)
        if diff > atol:
            raise Failed("mismatch", f"{layer.name}: max |diff| {diff:.3g}")
    return worst


def _forward(model: nn.Module, inputs: Mapping[str, Any]) -> Any:
    """One seeded forward (some models draw noise or masks inside ``forward``)."""
    torch.manual_seed(SEED)
    with torch.no_grad():
        return model(**inputs)


def _probe_once(model: nn.Module, inputs: Mapping[str, Any]) -> tuple[Any, Any, Any, Any]:
    """(reference output, probed output, result, layout); attnprobe errors become `Failed`."""
    reference = _forward(model, inputs)
    try:
        layout = ap.auto_layout(model)
        with ap.probe(model, modalities=layout) as p:
            probed = _forward(model, inputs)
        result = p.result()
    except Exception as error:
        raise Failed("probe-error", hf_zoo.first_line(error)) from error
    return reference, probed, result, layout


_BY_DESIGN = (
    "never ran while the probe was attached",
    ("is outside the layers the ", "matches none of the modalities patterns"),
)
"""Why a default probe leaves a layer out without a failure: the module did not run, or (on
the media side, `_in_tower`) the layouts cover the language model and not the tower, which is
probed with ``tower="vision"`` or a layout of its own."""


def _in_tower(model: nn.Module, name: str) -> bool:
    """Whether module ``name`` sits on the media side of a multimodal model (a vision or audio
    tower, a resampler, a Q-Former): under a module whose ``config`` has the class of one of
    the model's sub-configs other than its text config."""
    config = getattr(model, "config", None)
    fields = config.to_dict() if config is not None else {}
    towers = tuple(
        type(sub)
        for key in fields
        if key.endswith("_config")
        and key != "text_config"
        and hasattr(sub := getattr(config, key, None), "to_dict")
    )
    parts = name.split(".")
    for depth in range(1, len(parts)):
        module = model.get_submodule(".".join(parts[:depth]))
        if towers and isinstance(getattr(module, "config", None), towers):
            return True
    return False


def _left_out(
    result: Any, model: nn.Module, inputs: Mapping[str, Any]
) -> tuple[int, dict[str, str]]:
    """(layers of a media tower outside the layout by design, the other layers left out with
    why); attention modules that ran in the eager forward but that the probe neither recorded
    nor listed as left out count among the latter ("not found by the probe")."""
    outside, failed = 0, {}
    for name, why in result.skipped.items():
        if why.startswith(_BY_DESIGN[1]) and _in_tower(model, name):  # str.startswith(tuple)
            outside += 1
        elif not why.startswith(_BY_DESIGN[0]):
            failed[name] = why
    seen = {layer.name.split(":call")[0] for layer in result.layers} | set(result.skipped)
    for call in hf_zoo.eager_calls(model, inputs):
        if call.path not in seen:
            seen.add(call.path)
            failed[call.path] = "was not found by the probe (an attention module it cannot capture)"
    return outside, failed


def check(built: hf_zoo.Built, backend: str, atol: float) -> tuple[int, float, int]:
    """Every check on one backend: (layers probed, worst mass difference, layers outside the
    layout by design). Attention layers left out for any other reason (a call that does not fit
    its layout, a cross-attention without key layout, a module no pattern covers) fail as
    ``partial``, after the probed layers are checked."""
    model, inputs = built.model, built.inputs
    model.set_attn_implementation(backend)  # type: ignore[operator]
    reference, probed, result, layout = _probe_once(model, inputs)
    _compare_outputs(reference, probed)
    if not result.layers:
        raise Failed("probe-error", "no layer recorded")
    try:
        worst = _check_masses(model, result, layout, inputs, atol)
    except Failed:
        raise
    except Exception as error:
        raise Failed("reference-error", hf_zoo.first_line(error)) from error
    outside, failed = _left_out(result, model, inputs)
    if failed:
        total = len(result.layers) + len(failed)
        name, why = next(iter(failed.items()))
        raise Failed("partial", f"{len(failed)} of {total} attention layers left out: {name} {why}")
    return len(result.layers), worst, outside


def _leftovers() -> list[str]:
    """attnprobe registrations left in transformers' interfaces (a probe that did not
    restore); removed, and named in the row."""
    from transformers.modeling_utils import AttentionInterface

    names = [k for k in AttentionInterface._global_mapping if k.startswith("attnprobe:")]
    for name in names:
        AttentionInterface._global_mapping.pop(name, None)
    return names


def sweep_one(
    entry: hf_zoo.Entry,
    backends: Sequence[str] = BACKENDS,
    cap: float = CAP,
    atol: float = ATOL,
) -> Row:
    """Build ``entry`` tiny (`hf_zoo.build`, on ``backends[0]``, within ``cap`` seconds) and
    `check` it on each backend in turn (within another ``cap`` seconds), stopping at the first
    failure; any attnprobe registration left in transformers afterwards is removed and
    recorded (`Row.leftovers`)."""
    row = Row(entry.model_type, entry.class_name, entry.mapping)
    start = time.perf_counter()
    built = hf_zoo.build(
        entry.model_type, entry.mapping, attn_implementation=backends[0], timeout=cap
    )
    row.build_seconds = time.perf_counter() - start
    if isinstance(built, hf_zoo.Skip):
        row.status, row.detail = "skipped", built.reason
        row.seconds = row.build_seconds
        return row
    row.kind, row.profile = built.kind, built.profile
    worst = 0.0
    try:
        with hf_zoo.deadline(cap), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for backend in backends:
                try:
                    row.layers, diff, row.outside = check(built, backend, atol)
                    worst = max(worst, diff)
                except Failed as failure:
                    row.status, row.detail = failure.status, f"[{backend}] {failure.detail}"
                    break
    except hf_zoo.ZooTimeout as error:
        row.status, row.detail = "probe-error", f"timeout: {error}"
    if not row.status:
        row.status, row.detail = "exact", f"max |diff| {worst:.2g}"
    row.leftovers = _leftovers()
    if row.leftovers:
        row.detail += f" (left registered: {', '.join(row.leftovers)})"
    row.seconds = time.perf_counter() - start
    del built
    gc.collect()
    return row
