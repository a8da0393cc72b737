"""Sweep attnprobe over every multimodal / seq2seq architecture of the installed transformers.

For each architecture that `tests.hf_zoo` can build as a tiny random model (nothing is
downloaded), on each backend of ``--backends`` (``model.set_attn_implementation``):

1. outputs: ``model(**inputs)`` with and without
   ``with ap.probe(model, modalities=ap.auto_layout(model)) as p: model(**inputs)`` must be
   ``torch.equal`` (every tensor field of the output: logits, last_hidden_state, …);
2. masses: every layer of ``p.result()`` against the model's own eager attention weights
   (`tests.hf_zoo.eager_calls`), summed per group by `tests._reference.masses_from_weights`
   with the labels the layout gives for the inputs (``layout(**inputs).labels(B, L)``, -1
   ignored): mass[h, gq, gk] is the mean over kept query rows of group gq of the weights summed
   over the keys of group gk; equal within ``--atol``.

One CSV row per architecture: model_type, class, mapping, kind, status (``exact``,
``mismatch``, ``output-changed``, ``probe-error``, ``reference-error``, ``skipped``), detail
(max difference, first error line or skip reason), layers probed, build profile, seconds.
Errors from attnprobe are recorded, not raised: the table is the point.

Usage::

    python benchmarks/hf_sweep.py --out /tmp/hf_sweep.csv
    python benchmarks/hf_sweep.py --family speech --limit 5
    python benchmarks/hf_sweep.py --only llava --only whisper
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import gc
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/hf_sweep.py`
    sys.path.insert(0, str(ROOT))

import attnprobe as ap  # noqa: E402
from tests import hf_zoo  # noqa: E402
from tests._reference import masses_from_weights  # noqa: E402

SEED = 0
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


def _source_inputs(
    model: nn.Module, layout: Any, inputs: Mapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The forward arguments of the module a layout reads (its ``source``; the model itself
    when it has none), captured from one forward."""
    source = getattr(layout, "source", None)
    if not source:
        return (), dict(inputs)
    captured: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    module = model.get_submodule(source)
    handle = module.register_forward_pre_hook(
        lambda m, args, kwargs: captured.append((args, dict(kwargs))), with_kwargs=True
    )
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
    args, kwargs = _source_inputs(model, layout, inputs)
    return layout(*args, **kwargs).labels(batch, length)  # type: ignore[no-any-return]


def _layer_layouts(layout: Any, name: str, module: nn.Module) -> tuple[Any, Any]:
    """(query layout, key layout or None) of one layer: per-layer layouts when ``layout``
    maps layers to layouts (``query_layout`` / ``key_layout``), else ``layout`` itself."""
    if hasattr(layout, "query_layout"):
        return layout.query_layout(name, module), layout.key_layout(name, module)
    return layout, None


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
        query_layout, key_layout = _layer_layouts(layout, path, module)
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
                _labels(model, key_layout, inputs, batch, lk) if call.cross else queries
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


def check(built: hf_zoo.Built, backend: str, atol: float) -> tuple[int, float]:
    """Both checks on one backend: (layers probed, worst mass difference)."""
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
    return len(result.layers), worst


def _leftovers() -> list[str]:
    """attnprobe registrations left in transformers' interfaces (a probe that did not
    restore); removed, and named in the row."""
    from transformers.modeling_utils import AttentionInterface

    names = [k for k in AttentionInterface._global_mapping if k.startswith("attnprobe:")]
    for name in names:
        AttentionInterface._global_mapping.pop(name, None)
    return names


def sweep_one(entry: hf_zoo.Entry, backends: Sequence[str], cap: float, atol: float) -> Row:
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
                    row.layers, diff = check(built, backend, atol)
                    worst = max(worst, diff)
                except Failed as failure:
                    row.status, row.detail = failure.status, f"[{backend}] {failure.detail}"
                    break
    except hf_zoo.ZooTimeout as error:
        row.status, row.detail = "probe-error", f"timeout: {error}"
    leftovers = _leftovers()
    if leftovers:
        row.detail += f" (left registered: {', '.join(leftovers)})"
    if not row.status:
        row.status, row.detail = "exact", f"max |diff| {worst:.2g}"
    row.seconds = time.perf_counter() - start
    del built
    gc.collect()
    return row


# -- command line --------------------------------------------------------------------------------
def select(
    entries: Iterable[hf_zoo.Entry], family: str | None, only: Sequence[str], limit: int | None
) -> list[hf_zoo.Entry]:
    chosen = [
        e
        for e in entries
        if (family is None or family.upper().replace("-", "_") in e.mapping)
        and (not only or e.model_type in only)
    ]
    return chosen[:limit] if limit is not None else chosen


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--family", help="part of a mapping name: image_text, multimodal, speech, seq_to_seq, …"
    )
    parser.add_argument("--limit", type=int, help="first N architectures after filtering")
    parser.add_argument(
        "--only", action="append", default=[], metavar="MODEL_TYPE", help="repeatable"
    )
    parser.add_argument("--out", type=Path, help="CSV file to write (rows appear as they finish)")
    parser.add_argument("--backends", default="sdpa,eager", help="comma-separated")
    parser.add_argument("--cap", type=float, default=60.0, help="wall-clock seconds per model")
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument(
        "--all-mappings",
        action="store_true",
        help="keep an architecture once per mapping (default: once per model type and class)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    entries = hf_zoo.families(unique=not args.all_mappings)
    per_mapping = collections.Counter(e.mapping for e in hf_zoo.families(unique=False))
    print("architectures per mapping:", dict(per_mapping), flush=True)
    chosen = select(entries, args.family, args.only, args.limit)
    print(f"sweeping {len(chosen)} of {len(entries)} architectures", flush=True)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    rows: list[Row] = []
    handle = args.out.open("w", newline="") if args.out else None
    writer = csv.DictWriter(handle, fieldnames=FIELDS) if handle else None
    if writer:
        writer.writeheader()
    try:
        for i, entry in enumerate(chosen, 1):
            row = sweep_one(entry, backends, args.cap, args.atol)
            rows.append(row)
            print(
                f"[{i}/{len(chosen)}] {row.model_type:28s} {row.kind or '-':22s} "
                f"{row.status:15s} {row.detail[:110]} ({row.seconds:.1f} s)",
                flush=True,
            )
            if writer and handle:
                writer.writerow(row.as_dict())
                handle.flush()
    finally:
        if handle:
            handle.close()
    summarize(rows)
    return 0


def summarize(rows: Sequence[Row]) -> None:
    print("\nstatus counts:", dict(collections.Counter(r.status for r in rows)))
    by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for row in rows:
        by_kind[row.kind or "(not built)"][row.status] += 1
    for kind, counts in sorted(by_kind.items()):
        print(f"  {kind:24s} {dict(counts)}")
    built = sum(r.status != "skipped" for r in rows)
    print(f"built {built} of {len(rows)}; exact {sum(r.status == 'exact' for r in rows)}")


if __name__ == "__main__":
    sys.exit(main())
