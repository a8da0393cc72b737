"""The probe: one object per watch of a model, owning every hook and changed flag.

``with attnprobe.probe(model, modalities=...) as p:`` selects attention modules
(`attnprobe.capture.select_layers`), attaches one recorder per module (`attnprobe._recorder`)
through its adapter, and puts every hook handle and every flag change on one
``contextlib.ExitStack`` that unwinds on normal exit and on exceptions. The labels live in one
`attnprobe.labels.LabelSource`; what is recorded is fixed by a frozen spec of statistics
(`attnprobe.stats`). `Probe.result` assembles the recorders' states into a `ProbeResult`;
`Probe.sync` sums them over DDP ranks.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from attnprobe._distributed import is_distributed
from attnprobe._recorder import LayerRecorder, RecordSpec
from attnprobe._text import count
from attnprobe.capture import (
    Adapter,
    LayerSelector,
    explain_missing_capture,
    select_layers,
    unwrap_model,
)
from attnprobe.errors import AttnProbeWarning, CaptureError, ModalityLayoutError, ProbeConfigError
from attnprobe.labels import (
    InputLayout,
    LabelSource,
    LayerLayouts,
    MergedKeys,
    ModalityLayout,
    SequenceLabels,
)
from attnprobe.results import LayerResult, ProbeResult
from attnprobe.stats import Dims, Statistic, from_options

__all__ = ["Capture", "LayerSelector", "Probe", "probe"]

Capture = Literal["second_pass", "fused"]
"""How a probe gets the masses from an attention call (`Probe`'s ``capture``)."""


def _warn_if_degenerate(layer: LayerResult) -> None:
    """Warn when a layer's statistics are NaN for a reason the user should know about: NaN or
    Inf reached its attention (the sums include them), or it saw no query token at all."""
    sums = [layer.mass_total, layer.key_total, layer.query_total]
    if any(t is not None and not bool(torch.isfinite(t).all()) for t in sums):
        warnings.warn(
            f"layer {layer.name!r}: NaN or Inf reached its attention in some batch (non-finite "
            "model inputs or activations), so its sums and every mean derived from them are "
            "NaN/Inf; find the batch with torch.isfinite on the inputs, or reset() the probe "
            "after it.",
            AttnProbeWarning,
            stacklevel=3,
        )
    elif float(layer.num_queries.sum()) == 0:
        warnings.warn(
            f"layer {layer.name!r} ran but saw no query token (only empty batches, or every "
            "query row was padding or outside the selected query groups); its masses are NaN.",
            AttnProbeWarning,
            stacklevel=3,
        )


def _statistics(chosen: tuple[Statistic, ...], extra: Sequence[Statistic]) -> tuple[Statistic, ...]:
    """The statistics the probe options chose, with ``extra`` replacing those of its names."""
    for statistic in extra:
        if not isinstance(statistic, Statistic) or not statistic.name:
            raise ProbeConfigError(
                "probe: expected statistics as attnprobe.stats.Statistic instances with a name, "
                f"received {statistic!r}; subclass attnprobe.stats.Statistic (see its docs)."
            )
    names = {s.name for s in extra}
    if len(names) != len(extra):
        raise ProbeConfigError(
            f"probe: statistics has two of the same name: {[s.name for s in extra]}."
        )
    return tuple(s for s in chosen if s.name not in names) + tuple(extra)


_SIDE = {"queries": "query", "keys": "key"}


class _LeftOut(Exception):
    """Why a layer cannot be probed with the probe's layouts (left out when automatic);
    ``warn``: the layouts miss a layer they seem meant for (worth a warning)."""

    def __init__(self, why: str, *, warn: bool = False) -> None:
        super().__init__(why)
        self.warn = warn


def _query_names(
    queries: Sequence[str] | str | None, layouts: LayerLayouts
) -> frozenset[str] | None:
    """The query groups the probe keeps (None: all), checked against the layouts' groups."""
    if queries is None:
        return None
    if isinstance(queries, str):
        queries = [queries]
    if len(queries) == 0:
        raise ProbeConfigError(
            "probe: queries=[] selects no query group; pass None for all of them."
        )
    known = {g for _, layout in layouts.queries for g in layout.names}
    for q in queries:
        if q not in known:
            raise ModalityLayoutError(
                f"unknown modality {q!r}; expected one of {sorted(known)} (the query groups of "
                "the probe's layouts)."
            )
    return frozenset(queries)


def _submodule(model: nn.Module, path: str, layout: object) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ProbeConfigError(
            f"probe: the {type(layout).__name__} reads the inputs of submodule {path!r}, which "
            f"{type(model).__name__} does not have; build the layout from the model you probe "
            "(auto_layout(model))."
        ) from None


class Probe:
    """Attached forward hooks that capture per-modality attention of selected layers.

    Create it with `probe` (or directly, with the same arguments). Use it as a context
    manager, or call `attach` and `close` yourself (e.g. around a training loop). Every hook
    and every changed flag is undone on `close`, also after an exception; any number of
    probes may watch the same layers, each recording what it would alone.

    Args:
        model: any ``nn.Module`` (a DDP wrapper is unwrapped; ``DataParallel`` and compiled
            models are refused with an explanation).
        modalities: the token layout of the attention layers' sequences: a
            `ModalityLayout`, a mapping ``name -> length`` (contiguous, in order), or an
            `InputLayout` that derives each forward's labels from the model's inputs
            (``attnprobe.auto_layout(model)`` for HuggingFace and timm models; it also
            follows a KV cache through ``generate``).
        layers: which modules to probe: None (every attention module found — with an
            `InputLayout`, those its ``layers`` method accepts — torch
            ``MultiheadAttention``, modules calling ``F.scaled_dot_product_attention``, and
            modules of registered adapters), a glob on ``named_modules()`` paths
            (``"encoder.layers.*.self_attn"``), a list of paths, or a predicate
            ``(name, module) -> bool`` over the attention modules.
        queries: restrict capture to the query rows of these groups (e.g. ``"cls"``); the
            indicator pass then costs a few rows instead of a second full attention.
        key_modalities: for cross-attention layers (queries from one sequence, keys from
            another, e.g. a decoder attending to an encoder's output): the layout of the keys;
            ``modalities`` then describes the queries, and ``layers=None`` selects the modules
            known to be cross-attention (HuggingFace's). Per-batch key labels go through
            `Probe.set_key_labels`.
        capture: ``"second_pass"`` (default; the model's outputs are bit-for-bit unchanged) or
            ``"fused"`` (one kernel call with ``V' = [V, E]``; outputs equal up to rounding).
        key_stats: accumulate per-(head, group) key and query moments and per-sample mean-key
            cosines (AIR).
        second_moment: also accumulate ``Σ k kᵀ`` per head and group (``D × D`` each).
        reservoir_size: keep a seeded uniform sample of this many key vectors per group and
            layer (for distribution distances); 0 = off.
        seed: seed of the reservoir samples.
        per_sample: keep each sample's mass ``[H, Gq, Gk]`` (for adaptability experiments) and,
            with ``key_stats``, its mean key ``[Hk, Gk, D]`` and mean query ``[H, Gq, D]`` per
            group (per-sample AIR); memory grows with the number of samples.
        store_maps: keep full attention maps (small inputs only: ``O(L²)`` memory per layer).
        entropy: also accumulate the entropy of the attention inside each key group
            (``functional.group_entropy``; `LayerResult.entropy`). It needs the attention
            weights themselves, so it runs the kernel with ``V = I`` over chunks of query rows:
            memory stays bounded, but the cost is that of a full attention with ``Lk`` value
            columns (restrict ``queries`` to keep it cheap).
        statistics: further statistics to accumulate (`attnprobe.stats`: built-in ones, or a
            `attnprobe.stats.Statistic` of your own); one given here replaces the one of the
            same name that the options above select. The masses (`attnprobe.stats.Mass`) are
            always kept.
        compile_reduction: run the built-in statistics' per-call reduction (a few batched
            matrix products, `attnprobe.stats` "The fused reduction") through
            ``torch.compile``; never the model. Off by default: on the CPU it did not pay
            (no faster, and 5-20 s of compilation per process; ``docs/benchmarks.md``); on
            a GPU it fuses the elementwise steps of the reduction into fewer kernels, measure
            with ``benchmarks/compiled_reduction.py``. Needs a working ``torch.compile`` (a
            C++ compiler on the CPU, Triton on a GPU).
        method: deprecated spelling of ``capture``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        modalities: ModalityLayout | Mapping[str, int] | InputLayout,
        layers: LayerSelector = None,
        queries: Sequence[str] | str | None = None,
        key_modalities: ModalityLayout | Mapping[str, int] | None = None,
        capture: Capture = "second_pass",
        key_stats: bool = True,
        second_moment: bool = False,
        reservoir_size: int = 0,
        seed: int = 0,
        per_sample: bool = False,
        store_maps: bool = False,
        entropy: bool = False,
        statistics: Sequence[Statistic] = (),
        compile_reduction: bool = False,
        method: Capture | None = None,
    ) -> None:
        if method is not None:
            warnings.warn(
                f"probe(method={method!r}) is deprecated; use probe(capture={method!r}).",
                DeprecationWarning,
                stacklevel=3,
            )
            capture = method
        if key_modalities is not None and not isinstance(key_modalities, (Mapping, ModalityLayout)):
            raise ProbeConfigError(
                "probe: expected key_modalities as an attnprobe.ModalityLayout, a mapping of "
                f"name -> length or None, received {type(key_modalities).__name__}."
            )
        if capture not in ("second_pass", "fused"):
            raise ProbeConfigError(
                f"probe: expected capture 'second_pass' or 'fused', received {capture!r}."
            )
        if reservoir_size < 0:
            raise ProbeConfigError(
                f"probe: expected reservoir_size >= 0, received {reservoir_size}."
            )
        chosen = _statistics(
            from_options(
                key_stats=key_stats,
                second_moment=second_moment,
                reservoir_size=reservoir_size,
                seed=seed,
                per_sample=per_sample,
                store_maps=store_maps,
                entropy=entropy,
            ),
            tuple(statistics),
        )
        self._model = unwrap_model(model)
        model_name = type(self._model).__name__
        self._layouts = LayerLayouts.from_options(modalities, key_modalities)
        self._sequences = {
            id(layout): SequenceLabels(layout, model_name) for layout in self._layouts.layouts()
        }
        for sequence in self._sequences.values():
            if sequence.source is not None:
                _submodule(self._model, sequence.source, sequence.input_layout)
        self.capture: Capture = capture
        """``"second_pass"`` or ``"fused"``."""
        wanted = _query_names(queries, self._layouts)
        automatic = layers is None
        candidates = select_layers(self._model, layers)
        if self._layouts.is_per_layer:  # every pattern must give some attention module a layout
            everything = candidates if automatic else select_layers(self._model, None)
            self._layouts.check_patterns([(n, m) for n, m, _ in everything])
        self._skipped: dict[str, str] = {}
        self._warn_skipped: set[str] = set()
        self._selection: list[tuple[str, nn.Module, Adapter]] = []
        sources: list[LabelSource] = []
        # one key layout for every layer and layers=None: the probe is about cross-attention
        cross_only = automatic and bool(self._layouts.keys) and not self._layouts.is_per_layer
        for name, module, adapter in candidates:
            if cross_only and not adapter.is_cross_attention(module):
                continue
            try:
                source = self._label_source(name, module, adapter, wanted)
            except _LeftOut as why:
                if not automatic:
                    raise ProbeConfigError(f"probe: layer {name!r} {why}") from None
                self._skipped[name or type(module).__name__] = str(why)
                if why.warn:
                    self._warn_skipped.add(name or type(module).__name__)
                continue
            self._selection.append((name, module, adapter))
            sources.append(source)
        if not self._selection and cross_only:
            raise ProbeConfigError(
                "probe: key_modalities is given but no module is known to be cross-attention; "
                "select the cross-attention layers by name (e.g. layers='layers.*.multihead_attn' "
                "for nn.TransformerDecoder), or give per-layer layouts (modalities={pattern: "
                "layout}, key_modalities={pattern: layout})."
            )
        only = self._layouts.queries[0][1] if len(self._layouts.queries) == 1 else None
        if not self._selection and isinstance(only, InputLayout):
            raise ProbeConfigError(
                f"probe: no attention module of {model_name} is among the layers the "
                f"{type(only).__name__} describes"
                + (f" (those under {only.prefix!r})" if only.prefix else "")
                + f". The {type(only).__name__} selects the layers that see its sequence by "
                "their path in the model it was built from: build it from the model you probe "
                "(auto_layout(model)), or pass layers=... yourself."
            )
        if not self._selection:
            skipped = "; ".join(f"{n!r}: {why}" for n, why in self._skipped.items())
            raise ProbeConfigError(
                "probe: none of the attention modules has a layout for its sequences ("
                + skipped
                + "). Give each sequence its layout (modalities={layer pattern: layout}), build "
                "an InputLayout from the model you probe (auto_layout(model)), or select "
                "layers=... yourself."
            )
        self._spec = RecordSpec(
            statistics=chosen,
            fused=capture == "fused",
            restricted_queries=wanted is not None,
            compile_reduction=compile_reduction,
        )
        # the root module has the empty path; name it by its class in results
        self._recorders = [
            LayerRecorder(n or type(m).__name__, self._spec, source, lenient=automatic)
            for (n, m, _), source in zip(self._selection, sources, strict=True)
        ]
        self._automatic = automatic
        self._stack: contextlib.ExitStack | None = None
        if capture == "fused":
            warnings.warn(
                "probe(capture='fused') returns the model's attention output from a kernel call "
                "with a wider value matrix: outputs equal the unprobed model's only up to "
                "floating-point rounding. Use capture='second_pass' for bit-identical outputs.",
                AttnProbeWarning,
                stacklevel=3,
            )

    def _label_source(
        self, name: str, module: nn.Module, adapter: Adapter, wanted: frozenset[str] | None
    ) -> LabelSource:
        """The labels of layer ``name``'s calls, or `_LeftOut` saying why it has none."""
        query_layout = self._layouts.query_layout(name, module)
        key_layout = self._layouts.key_layout(name, module)
        if query_layout is None:
            if key_layout is not None:
                raise ProbeConfigError(
                    f"probe: layer {name!r} has a key layout (key_modalities) but no layout of "
                    "its queries; give it one in modalities as well."
                )
            if (
                isinstance(self._layouts.queries[0][1], InputLayout)
                and len(self._layouts.queries) == 1
            ):
                layout = self._layouts.queries[0][1]
                raise _LeftOut(
                    f"is outside the layers the {type(layout).__name__} describes"
                    + (f" (those under {layout.prefix!r})" if layout.prefix else "")
                )
            raise _LeftOut("matches none of the modalities patterns")
        if key_layout is None and adapter.is_cross_attention(module):
            raise _LeftOut(
                "is cross-attention (keys from another sequence) and has no key layout "
                "(key_modalities)",
                warn=True,
            )
        groups = None
        if wanted is not None:
            groups = [g for g in query_layout.names if g in wanted]
            if not groups:
                raise _LeftOut(
                    f"has none of the query groups {sorted(wanted)} (its queries' groups: "
                    f"{list(query_layout.names)})"
                )
        merged = self._layouts.merged_keys(name, module)
        return LabelSource(
            self._sequences[id(query_layout)],
            None if key_layout is None else self._sequences[id(key_layout)],
            groups,
            merged=None if merged is None else merged.own,
        )

    # -- what the probe watches ------------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        """The probed model (unwrapped from DDP/FSDP)."""
        return self._model

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Paths of the selected modules (``""`` for the model itself)."""
        return tuple(n for n, _, _ in self._selection)

    @property
    def layers(self) -> tuple[str, ...]:
        """Deprecated: `layer_names` (``ProbeResult.layers`` are results, not names)."""
        warnings.warn(
            "Probe.layers is deprecated; use Probe.layer_names.", DeprecationWarning, stacklevel=2
        )
        return self.layer_names

    @property
    def layouts(self) -> LayerLayouts:
        """The layouts of the model's sequences, per layer (`attnprobe.labels.LayerLayouts`)."""
        return self._layouts

    @property
    def skipped(self) -> dict[str, str]:
        """Attention layers left out when the probe was created (``layers=None``), with why;
        `ProbeResult.skipped` adds those whose calls did not fit their layout."""
        return dict(self._skipped)

    def _sequence(self, side: str, layers: str | None, fn: str) -> SequenceLabels:
        """The one query (``side="queries"``) or key sequence ``fn`` acts on."""
        entries = [
            (selector, entry.layout if isinstance(entry, MergedKeys) else entry)
            for selector, entry in (
                self._layouts.queries if side == "queries" else self._layouts.keys
            )
        ]
        if layers is not None:
            for selector, layout in entries:
                if selector == layers:
                    return self._sequences[id(layout)]
            for (name, _, _), recorder in zip(self._selection, self._recorders, strict=True):
                if name == layers:
                    source = recorder.labels
                    sequence = source.queries if side == "queries" else source.keys
                    if sequence is not None:
                        return sequence
            patterns = [sel for sel, _ in entries if isinstance(sel, str)]
            raise ProbeConfigError(
                f"{fn}: layers={layers!r} names no {_SIDE[side]} layout of this probe; expected "
                f"one of its patterns {patterns} or a probed layer's path."
            )
        distinct = {id(layout): layout for _, layout in entries}
        if len(distinct) == 1:
            return self._sequences[next(iter(distinct))]
        if not distinct:
            raise ProbeConfigError(
                f"{fn}: this probe has no key layout (no key_modalities: it probes "
                "self-attention only); create it with key_modalities=... to probe "
                "cross-attention layers."
            )
        patterns = [sel for sel, _ in entries if isinstance(sel, str)]
        raise ProbeConfigError(
            f"{fn}: this probe has {len(distinct)} {_SIDE[side]} layouts ({patterns}); say "
            "which with layers=PATTERN."
        )

    @property
    def layout(self) -> ModalityLayout:
        """The current layout of the probed sequence (a probe with one query layout)."""
        return self._sequence("queries", None, "Probe.layout").layout

    @property
    def key_layout(self) -> ModalityLayout | None:
        """The layout of the keys of cross-attention calls (None: no key layout; a probe with
        at most one key layout)."""
        if not self._layouts.keys:
            return None
        return self._sequence("keys", None, "Probe.key_layout").layout

    @property
    def key_names(self) -> tuple[str, ...]:
        """Key groups: those of the key layout, or of the layout for self-attention."""
        key = self.key_layout
        return self.layout.names if key is None else key.names

    @property
    def query_groups(self) -> tuple[str, ...]:
        """The query groups recorded (a probe with one query layout)."""
        return self._recorders[0].labels.query_groups

    @property
    def statistics(self) -> tuple[Statistic, ...]:
        """The statistics accumulated at every call site."""
        return self._spec.statistics

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        """Whether the hooks are installed."""
        return self._stack is not None

    def attach(self) -> Probe:
        """Install every hook; a no-op if already attached. Returns ``self``."""
        if self._stack is not None:
            return self
        stack = contextlib.ExitStack()
        try:
            by_adapter: dict[int, tuple[Adapter, list[nn.Module]]] = {}
            for (_, module, adapter), recorder in zip(
                self._selection, self._recorders, strict=True
            ):
                adapter.attach(module, recorder, stack)
                by_adapter.setdefault(id(adapter), (adapter, []))[1].append(module)
            for adapter, modules in by_adapter.values():
                adapter.prepare_model(self._model, modules, stack)
            for sequence in self._sequences.values():
                if sequence.input_layout is None:
                    continue
                reader = (
                    self._model
                    if sequence.source is None
                    else self._model.get_submodule(sequence.source)
                )
                handle = reader.register_forward_pre_hook(sequence.observe_inputs, with_kwargs=True)
                stack.callback(handle.remove)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def close(self) -> None:
        """Remove every hook and restore every changed flag (idempotent)."""
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def __enter__(self) -> Probe:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- labels ----------------------------------------------------------------------------------
    def set_labels(
        self, labels: Tensor | ModalityLayout | None, *, layers: str | None = None
    ) -> None:
        """Per-sample group labels for the following forward passes (until changed).

        Args:
            labels: a ``[B, L]`` integer tensor of indices into the probe's modality names
                (``-1`` = ignore, e.g. padding), a `ModalityLayout` with the same names,
                or None to go back to the probe's layout.
            layers: with several layouts, which sequence: a pattern of ``modalities`` or a
                probed layer's path.

        Examples:
            >>> import torch, attnprobe as ap
            >>> from attnprobe.models import FusionAttention
            >>> layer = FusionAttention(dim=8)
            >>> p = ap.probe(layer, modalities={"cls": 1, "audio": 2, "video": 2}).attach()
            >>> p.set_labels(torch.tensor([[0, 1, 1, 2, -1], [0, 1, 2, 2, 2]]))
            >>> _ = layer(torch.randn(2, 4, 8))
            >>> p.result().layers[0].num_queries.tolist()
            [2.0, 3.0, 4.0]
            >>> p.close()
        """
        self._sequence("queries", layers, "set_labels").set_labels(labels)

    def set_key_labels(
        self, labels: Tensor | ModalityLayout | None, *, layers: str | None = None
    ) -> None:
        """Per-sample labels of the keys of cross-attention layers for the following forward
        passes (until changed); the probe must have been created with ``key_modalities``.

        Args:
            labels: a ``[B, Lk]`` integer tensor of indices into the key modality names
                (``-1`` = ignore, e.g. padded memory), a `ModalityLayout` with the same names,
                or None to go back to ``key_modalities``.
            layers: with several key layouts, which: a pattern of ``key_modalities`` or a
                probed layer's path.
        """
        self._sequence("keys", layers, "set_key_labels").set_labels(labels, "set_key_labels")

    # -- results ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything captured so far (hooks stay attached)."""
        for recorder in self._recorders:
            recorder.reset()

    def sync(self) -> None:
        """Sum the statistics of all DDP ranks; no-op without ``torch.distributed``.

        Call it on every rank. Ranks first exchange which layers and call sites they saw
        (``all_gather_object`` of names and sizes), so a rank on which a layer saw no batch
        takes part with zeros instead of leaving the others waiting; then one ``all_reduce``
        per call site sums the ``"sum"`` states each rank added since the previous sync (syncing
        twice never double counts). Per-sample rows, maps and reservoir samples stay per rank.
        """
        if not is_distributed():
            return
        local = [
            [(site.dims, site.unsynced_calls, site.sums.entries()) for site in rec.sites]
            for rec in self._recorders
        ]
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, local)
        for r, recorder in enumerate(self._recorders):
            for index in range(max(len(ranks[r]) for ranks in gathered)):
                seen = [ranks[r][index] for ranks in gathered if index < len(ranks[r])]
                site = recorder.site_at(index)
                if site.dims is None:
                    dims: Dims | None = next((d for d, _, _ in seen if d is not None), None)
                    if dims is not None:
                        site.start(dims, self._spec.statistics, self._spec.compile_reduction)
                site.calls += sum(calls for _, calls, _ in seen) - site.unsynced_calls
                site.unsynced_calls = 0
                entries: dict[str, tuple[int, ...]] = {}
                for _, _, names in seen:
                    entries.update(names)
                site.sums.ensure(entries)
                site.sums.sync()

    def result(self, *, strict: bool = True) -> ProbeResult:
        """The statistics captured since the last `reset`.

        Layers the probe selected itself (``layers=None``) that never ran, whose calls did not
        fit their layouts, or that ran without an attention call it could capture (attention
        computed in a way no adapter reads) are left out and listed in `ProbeResult.skipped` (the
        latter two with an `AttnProbeWarning`); when no call of any layer fit, it raises
        `ModalityLayoutError`, and when no layer captured anything, `CaptureError`, saying
        why.

        Args:
            strict: raise `CaptureError` when a layer selected by name produced no capture
                (it never ran, or ran without reaching an attention kernel); with False such
                layers are left out with a warning.
        """
        skipped = dict(self._skipped)
        misfits: set[str] = set()
        problems = []
        uncaptured: dict[str, str] = {}  # selected by default, ran, nothing captured
        for (name, module, _), recorder in zip(self._selection, self._recorders, strict=True):
            if recorder.misfits:
                misfits.add(recorder.name)
                calls = sum(recorder.misfits.values())
                seen = calls + sum(site.calls for site in recorder.sites)
                reasons = "; ".join(recorder.misfits)
                skipped[recorder.name] = (
                    f"{calls} of its {seen} calls did not fit its layouts and were left out: "
                    f"{reasons}"
                )
            elif not any(site.calls for site in recorder.sites):
                why = explain_missing_capture(name, module, recorder.forwards)
                if self._automatic and recorder.forwards == 0:
                    skipped[recorder.name] = "never ran while the probe was attached"
                elif self._automatic:  # left out, unless no layer captured anything
                    uncaptured[recorder.name] = why.removeprefix(f"{name!r} ")
                else:
                    problems.append(why)
        captured = any(site.calls for r in self._recorders for site in r.sites)
        if uncaptured and not captured:
            problems += [f"{n!r} {why}" for n, why in uncaptured.items()]
        elif uncaptured:
            skipped.update(uncaptured)
        if not captured and all(r.forwards == 0 for r in self._recorders) and strict:
            raise CaptureError(
                "no forward pass ran through the probed layers while the probe was "
                "attached; run the model inside the `with probe(...)` block (or between "
                "attach() and close())."
            )
        if misfits and not captured and strict:
            raise ModalityLayoutError(
                "no call of the probed layers fits the probe's layouts: "
                + "; ".join(f"layer {n!r}: {skipped[n]}" for n in sorted(misfits))
                + ". Make the layout describe the sequence the layers see, or give each "
                "sequence its layout (modalities={layer pattern: layout})."
            )
        if problems and strict:
            raise CaptureError(
                "selected layers produced no capture: "
                + "; ".join(problems)
                + ". Pass strict=False to get the other layers' results."
            )
        if problems:
            warnings.warn(
                "left out of the result: " + "; ".join(problems), AttnProbeWarning, stacklevel=2
            )
        # worth a warning: layers whose calls the layouts do not describe (not those outside the
        # layouts' patterns by design, nor modules that never ran)
        misfit = {
            n: why
            for n, why in skipped.items()
            if n in self._warn_skipped or n in misfits or n in uncaptured
        }
        if misfit:
            warnings.warn(
                "layers left out of the result (see ProbeResult.skipped): "
                + "; ".join(f"{n!r} {why}" for n, why in misfit.items()),
                AttnProbeWarning,
                stacklevel=2,
            )
        layers: list[LayerResult] = []
        for recorder in self._recorders:
            layers.extend(recorder.results())
        for layer in layers:
            _warn_if_degenerate(layer)
        return ProbeResult(tuple(layers), skipped=skipped)

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        n = len(self._selection)
        if self._layouts.is_per_layer:
            groups = f"layouts={self._layouts!r}"
        else:
            keys = "" if self.key_layout is None else f", key groups={list(self.key_names)}"
            groups = f"groups={list(self.layout.names)}{keys}"
        return f"Probe({count(n, 'layer')}, {groups}, capture={self.capture!r}, {state})"


def probe(model: nn.Module, **options: Any) -> Probe:
    """Probe the attention layers of ``model`` per modality: ``Probe(model, **options)``.

    The options (``modalities``, ``layers``, ``queries``, ``key_modalities``, ``capture``,
    ``key_stats``, ``second_moment``, ``reservoir_size``, ``seed``, ``per_sample``,
    ``store_maps``, ``entropy``, ``statistics``, ``compile_reduction``) are documented on
    `Probe`.

    Returns:
        A `Probe`, not yet attached: use it in a ``with`` block or call ``attach()``.

    Examples:
        >>> import torch, attnprobe as ap
        >>> from torch import nn
        >>> layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, batch_first=True)
        >>> model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        >>> x = torch.randn(3, 6, 16)
        >>> with ap.probe(model, modalities={"cls": 1, "audio": 2, "video": 3}) as p:
        ...     _ = model(x)
        >>> p.result().layer_names
        ('layers.0.self_attn', 'layers.1.self_attn')
        >>> frame = p.result().to_frame()
        >>> frame.groupby(["layer", "head", "query_modality"])["mass"].sum().round(6).unique()
        array([1.])
    """
    return Probe(model, **options)
