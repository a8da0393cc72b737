"""The probe: selects attention layers, owns every hook and changed flag, accumulates.

``with attnprobe.probe(model, modalities=...) as p:`` attaches one adapter per selected layer
(``attnprobe.capture``); every hook handle and every flag change goes onto one
``contextlib.ExitStack`` that is unwound on normal exit and on exceptions (``CAPTURE.md``,
pitfall 2). Each layer's recorder runs the indicator pass on the exact ``q``, ``k`` and mask the
kernel saw and reduces immediately into float64 sums (``attnprobe.stats``), so memory does not
grow with sequence length or number of batches.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from attnprobe import functional as AF
from attnprobe._errors import AttnProbeWarning, CaptureError, ModalityLayoutError, ProbeConfigError
from attnprobe.auto import InputLayout
from attnprobe.capture import Adapter, AttentionInputs, SdpaAdapter, adapter_for
from attnprobe.layout import IGNORE, ModalityLayout, _check_label_tensor
from attnprobe.results import LayerResult, ProbeResult
from attnprobe.stats import Reservoir, SumAccumulator

__all__ = ["Method", "Probe", "probe"]

Method = Literal["second_pass", "fused"]
ENTROPY_CHUNK_ELEMENTS = 1 << 22
"""Attention weights held at once while computing within-group entropies (``entropy=True``)."""
LayerSelector = str | Sequence[str] | Callable[[str, nn.Module], bool] | None


@dataclass(frozen=True)
class _Labels:
    """Labels of one call, resolved on the CPU (no device sync in the hot path) and cached."""

    keys: Tensor  # (B, Lk) on the device of the call, -1 = ignored
    queries: Tensor  # (B, R) query-group labels of the kept rows, on the device
    rows: Tensor | None  # (R,) kept query rows on the device; None = all rows
    keys_ignored: bool  # some key is labelled -1
    queries_ignored: bool  # some kept query row is labelled -1 in some sample
    memo: dict[tuple[object, ...], Tensor] = field(default_factory=dict, compare=False)
    """Indicator tensors built from these labels, kept between calls."""

    def get(self, key: tuple[object, ...], make: Callable[[], Tensor]) -> Tensor:
        value = self.memo.get(key)
        if value is None:
            value = self.memo[key] = make()
        return value


class _CallState:
    """Accumulated state of one kernel call site (a module's N-th attention call)."""

    def __init__(self, name: str, reservoir_size: int, seed: int) -> None:
        self.name = name
        self.sums = SumAccumulator()
        self.calls = 0
        self.unsynced_calls = 0  # calls since the last Probe.sync
        self.shape: tuple[int, int, int, tuple[str, ...], tuple[str, ...]] | None = None
        self.reservoir_size = reservoir_size
        self.seed = seed
        self.reservoirs: list[Reservoir] = []
        self.samples: list[Tensor] = []
        self.sample_keys: list[Tensor] = []
        self.sample_queries: list[Tensor] = []
        self.maps: list[Tensor] = []

    def reset(self) -> None:
        self.sums.reset()
        self.calls = 0
        self.unsynced_calls = 0
        self.shape = None
        self.reservoirs = []
        self.samples = []
        self.sample_keys = []
        self.sample_queries = []
        self.maps = []


def _labels_or_layout(
    labels: Tensor | ModalityLayout, layout: ModalityLayout, fn: str
) -> tuple[Tensor | None, ModalityLayout]:
    """What `Probe.set_labels` / `Probe.set_key_labels` keep: per-batch labels (checked, on the
    CPU) with the current layout, or no batch labels and a replacement layout with the same
    modality names."""
    if isinstance(labels, ModalityLayout):
        if labels.names != layout.names:
            raise ModalityLayoutError(
                f"{fn}: expected a layout with modalities {list(layout.names)}, received "
                f"{list(labels.names)}; the groups of a probe are fixed when it is created."
            )
        return None, labels
    checked = _check_label_tensor(labels, len(layout.names), fn)
    return checked.detach().to("cpu", torch.long), layout


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


def _in_backward() -> bool:
    """Whether this code runs inside the autograd engine's backward pass (where activation
    checkpointing recomputes forwards)."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and int(task()) != -1


class _LayerRecorder:
    """The probe's recorder for one selected module (see ``capture.Recorder``)."""

    def __init__(self, name: str, probe: Probe) -> None:
        self.name = name
        self._probe = probe
        self.forwards = 0
        self._call_index = 0
        self._captured = False
        self._recompute = False
        self.states: list[_CallState] = []

    # -- the Recorder protocol -------------------------------------------------------------
    @property
    def wants_fused(self) -> bool:
        return self._probe.method == "fused"

    @property
    def captured_this_call(self) -> bool:
        return self._captured

    @property
    def restricts_queries(self) -> bool:
        probe = self._probe
        return probe.store_maps or len(probe.query_groups) != len(probe.layout.names)

    def begin(self) -> None:
        self._call_index = 0
        self._captured = False
        # a forward run by the autograd engine is activation checkpointing recomputing one
        # the probe already saw (reentrant or not): record nothing, or it counts twice
        self._recompute = _in_backward()
        if not self._recompute:
            self.forwards += 1

    def record(self, inputs: AttentionInputs, kernel: Callable[..., Tensor] | None) -> None:
        if self._recompute:
            self._captured = True
            return
        with torch.no_grad():
            self._reduce(inputs, kernel, None, self._labels(inputs))

    def fused(
        self, inputs: AttentionInputs, kernel: Callable[..., Tensor], dropout_p: float
    ) -> Tensor:
        assert inputs.value is not None
        labels = self._labels(inputs)
        out, mass = AF.fused_attention(
            inputs.query,
            inputs.key,
            inputs.value,
            labels.keys,
            len(self._probe.key_names),
            attn_mask=inputs.attn_mask,
            dropout_p=dropout_p,
            is_causal=inputs.is_causal,
            scale=inputs.scale,
            enable_gqa=inputs.enable_gqa,
            kernel=kernel,
        )  # (B, H, Lq, Dv), (B, H, Lq, G)
        if self._recompute:  # the same output as the first forward, nothing recorded
            self._captured = True
            return out
        with torch.no_grad():
            self._reduce(inputs, kernel, mass.detach(), labels)
        return out

    # -- reduction --------------------------------------------------------------------------
    def _state(self) -> _CallState:
        index = self._call_index
        self._call_index += 1
        return self.state_at(index)

    def state_at(self, index: int) -> _CallState:
        """The state of the ``index``-th kernel call site (created when new)."""
        while len(self.states) <= index:
            i = len(self.states)
            name = self.name if i == 0 else f"{self.name}:call{i}"
            self.states.append(_CallState(name, self._probe.reservoir_size, self._probe.seed))
        return self.states[index]

    def _labels(self, inputs: AttentionInputs) -> _Labels:
        batch, key_len, query_len = inputs.key.shape[0], inputs.key.shape[2], inputs.query.shape[2]
        try:
            return self._probe._resolve_labels(
                batch,
                key_len - inputs.appended_keys,
                query_len,
                inputs.appended_keys,
                inputs.key.device,
            )
        except ModalityLayoutError as exc:
            raise ModalityLayoutError(f"layer {self.name!r}: {exc}") from None

    def _reduce(
        self,
        inputs: AttentionInputs,
        kernel: Callable[..., Tensor] | None,
        mass: Tensor | None,
        labels: _Labels,
    ) -> None:
        probe = self._probe
        state = self._state()
        self._captured = True
        query, key = inputs.query.detach(), inputs.key.detach()
        if query.dim() != 4 or key.dim() != 4:
            raise CaptureError(
                f"layer {self.name!r}: expected query and key of shape [B, H, L, D], received "
                f"{list(query.shape)} and {list(key.shape)}; an adapter must reshape to heads."
            )
        _, heads, _, head_dim = query.shape
        kv_heads, key_len = key.shape[1], key.shape[2]
        key_labels, query_labels = labels.keys, labels.queries  # (B, Lk), (B, R)
        num_groups = len(probe.key_names)
        num_qgroups = len(probe.query_groups)

        shape = (heads, kv_heads, head_dim, probe.query_groups, probe.key_names)
        if state.shape is None:
            state.shape = shape
        elif state.shape != shape:
            raise CaptureError(
                f"layer {state.name!r}: expected (heads, kv heads, head dim) = "
                f"{state.shape[:3]} as in earlier calls, received {shape[:3]}; reset() the "
                "probe between different models."
            )
        state.calls += 1
        state.unsynced_calls += 1

        # rows of the queries to keep (a query-group restriction makes capture nearly free)
        attn_mask, is_causal = inputs.attn_mask, inputs.is_causal
        if labels.rows is not None:
            if mass is None or probe.entropy:
                query, attn_mask, is_causal = AF.select_query_rows(
                    query, attn_mask, is_causal, labels.rows, key_len
                )  # (B, H, R, D)
            if mass is not None:
                mass = mass.index_select(2, labels.rows)  # (B, H, R, G)

        if mass is None:
            if probe.store_maps:
                maps = AF.attention_maps(
                    query,
                    key,
                    attn_mask=attn_mask,
                    is_causal=is_causal,
                    scale=inputs.scale,
                    enable_gqa=inputs.enable_gqa,
                    kernel=kernel,
                )  # (B, H, R, Lk)
                state.maps.append(maps.float().cpu())
                onehot = AF.group_indicator(key_labels, num_groups, maps.dtype)  # (B, Lk, G)
                mass = torch.einsum("bhqk,bkg->bhqg", maps, onehot)  # (B, H, R, G)
            else:
                width = head_dim if num_groups <= head_dim else num_groups
                values = labels.get(
                    ("values", query.dtype, width),
                    lambda: AF.indicator_values(key_labels, num_groups, query.dtype, width),
                )  # (B, 1, Lk, W)
                mass = AF.group_attention_mass(
                    query,
                    key,
                    key_labels,
                    num_groups,
                    attn_mask=attn_mask,
                    is_causal=is_causal,
                    scale=inputs.scale,
                    enable_gqa=inputs.enable_gqa,
                    kernel=kernel,
                    values=values,
                )  # (B, H, R, G)

        query_onehot = labels.get(
            ("query_onehot",),
            lambda: AF.group_indicator(query_labels, num_qgroups, torch.float64),
        )  # (B, R, Gq)
        if probe.entropy:
            update_entropy = self._entropy(
                query, key, attn_mask, is_causal, inputs, kernel, key_labels, query_onehot
            )
        sums = AF.reduce_mass(
            mass,
            query_labels,
            num_qgroups,
            onehot=query_onehot,
            has_ignored=labels.queries_ignored,
        )
        update = {"mass": sums.total, "queries": sums.count}
        if probe.entropy:
            update.update(update_entropy)
        if probe.per_sample:
            state.samples.append(
                (sums.sample_total / sums.sample_count.unsqueeze(1).unsqueeze(-1)).float().cpu()
            )  # (B, H, Gq, Gk), NaN where a sample has no query of a group
        if probe.key_stats:
            km = AF.group_moments(
                key,
                key_labels,
                num_groups,
                second_moment=probe.second_moment,
                has_ignored=labels.keys_ignored,
                onehot=labels.get(
                    ("key_onehot",),
                    lambda: AF.group_indicator(key_labels, num_groups, torch.float64),
                ),  # (B, Lk, G)
            )
            qm = AF.group_moments(
                query,
                query_labels,
                num_qgroups,
                has_ignored=labels.queries_ignored,
                onehot=query_onehot,
            )
            cos_total, cos_count = AF.mean_cosines(
                qm.sample_total, qm.sample_count, km.sample_total, km.sample_count
            )
            update.update(
                key_count=km.count,
                key_total=km.total,
                key_total_sq=km.total_sq,
                query_count=qm.count,
                query_total=qm.total,
                query_total_sq=qm.total_sq,
                cosine_total=cos_total,
                cosine_count=cos_count,
            )
            if km.outer is not None:
                update.update(key_outer=km.outer)
            if probe.per_sample:
                # per-sample mean key / query of each group (NaN where a sample has none)
                state.sample_keys.append(
                    (km.sample_total / km.sample_count.unsqueeze(1).unsqueeze(-1)).float().cpu()
                )  # (B, Hk, Gk, D)
                state.sample_queries.append(
                    (qm.sample_total / qm.sample_count.unsqueeze(1).unsqueeze(-1)).float().cpu()
                )  # (B, H, Gq, D)
        state.sums.update(update)
        if probe.reservoir_size:
            if not state.reservoirs:
                # independent streams per group and per DDP rank, reproducible from `seed`
                rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
                state.reservoirs = [
                    Reservoir(probe.reservoir_size, probe.seed + 1009 * g + 1_000_003 * rank)
                    for g in range(num_groups)
                ]
            tokens = key.transpose(1, 2)  # (B, Lk, Hk, D)
            for g, reservoir in enumerate(state.reservoirs):
                reservoir.update(tokens[key_labels == g])  # (n, Hk, D), sample-major order

    def _entropy(
        self,
        query: Tensor,
        key: Tensor,
        attn_mask: Tensor | None,
        is_causal: bool,
        inputs: AttentionInputs,
        kernel: Callable[..., Tensor] | None,
        key_labels: Tensor,
        query_onehot: Tensor,
    ) -> dict[str, Tensor]:
        """Σ over query rows of the within-group entropy (``functional.group_entropy``), from
        the model's kernel with ``V = I``, a chunk of rows at a time so that memory stays
        ``O(chunk · Lk)``."""
        batch, heads, rows, _ = query.shape
        key_len = key.shape[2]
        groups = len(self._probe.key_names)
        chunk = max(1, ENTROPY_CHUNK_ELEMENTS // max(1, batch * heads * key_len))
        total = torch.zeros(heads, query_onehot.shape[-1], groups, dtype=torch.float64)
        count = torch.zeros_like(total)
        total, count = total.to(query.device), count.to(query.device)
        for start in range(0, rows, chunk):
            index = torch.arange(start, min(start + chunk, rows), device=query.device)  # (C,)
            q_c, mask_c, causal_c = AF.select_query_rows(
                query, attn_mask, is_causal, index, key_len
            )  # (B, H, C, D)
            weights = AF.attention_maps(
                q_c,
                key,
                attn_mask=mask_c,
                is_causal=causal_c,
                scale=inputs.scale,
                enable_gqa=inputs.enable_gqa,
                kernel=kernel,
            )  # (B, H, C, Lk)
            entropy, defined = AF.group_entropy(weights, key_labels, groups)  # (B, H, C, G)
            rows_onehot = query_onehot.index_select(1, index)  # (B, C, Gq)
            total += torch.einsum("bhcg,bcq->hqg", entropy, rows_onehot)
            count += torch.einsum("bhcg,bcq->hqg", defined.double(), rows_onehot)
        return {"entropy_total": total, "entropy_count": count}

    def results(self) -> list[LayerResult]:
        out = []
        for state in self.states:
            if state.shape is None:
                continue
            heads, kv_heads, head_dim, qgroups, kgroups = state.shape
            sums = state.sums.compute()
            samples = priorities = None
            if state.reservoirs:
                samples = tuple(
                    r.sample() if r.seen else torch.empty(0, kv_heads, head_dim)
                    for r in state.reservoirs
                )
                priorities = tuple(r.priorities() for r in state.reservoirs)
            out.append(
                LayerResult(
                    name=state.name,
                    num_heads=heads,
                    num_kv_heads=kv_heads,
                    head_dim=head_dim,
                    query_groups=qgroups,
                    key_groups=kgroups,
                    num_calls=state.calls,
                    mass_total=sums["mass"],
                    num_queries=sums["queries"],
                    key_count=sums.get("key_count"),
                    key_total=sums.get("key_total"),
                    key_total_sq=sums.get("key_total_sq"),
                    key_outer=sums.get("key_outer"),
                    query_count=sums.get("query_count"),
                    query_total=sums.get("query_total"),
                    query_total_sq=sums.get("query_total_sq"),
                    cosine_total=sums.get("cosine_total"),
                    cosine_count=sums.get("cosine_count"),
                    entropy_total=sums.get("entropy_total"),
                    entropy_count=sums.get("entropy_count"),
                    key_sample=samples,
                    key_sample_priority=priorities,
                    reservoir_size=state.reservoir_size,
                    sample_mass=torch.cat(state.samples) if state.samples else None,
                    sample_key_mean=torch.cat(state.sample_keys) if state.sample_keys else None,
                    sample_query_mean=(
                        torch.cat(state.sample_queries) if state.sample_queries else None
                    ),
                    maps=tuple(state.maps) if state.maps else None,
                )
            )
        return out


def _unwrap(model: nn.Module) -> nn.Module:
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


def _select(
    model: nn.Module, layers: LayerSelector, cross: bool = False, automatic: bool = False
) -> list[tuple[str, nn.Module, Adapter]]:
    modules = dict(model.named_modules())
    candidates = [(n, m, a) for n, m in modules.items() if (a := adapter_for(m)) is not None]
    if layers is None or automatic:  # self- or cross-attention, as the probe expects
        candidates = [(n, m, a) for n, m, a in candidates if a.is_cross_attention(m) == cross]
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
        if not chosen and cross:
            raise ProbeConfigError(
                "probe: key_modalities is given but no module is known to be cross-attention; "
                "select the cross-attention layers by name (e.g. layers='layers.*.multihead_attn' "
                "for nn.TransformerDecoder)."
            )
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


class Probe:
    """Attached forward hooks that capture per-modality attention of selected layers.

    Create with `probe`. Use as a context manager, or call `attach` and
    `close` yourself (e.g. around a training loop).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        modalities: ModalityLayout | Mapping[str, int] | InputLayout,
        layers: LayerSelector = None,
        queries: Sequence[str] | str | None = None,
        key_modalities: ModalityLayout | Mapping[str, int] | None = None,
        method: Method = "second_pass",
        key_stats: bool = True,
        second_moment: bool = False,
        reservoir_size: int = 0,
        seed: int = 0,
        per_sample: bool = False,
        store_maps: bool = False,
        entropy: bool = False,
    ) -> None:
        if isinstance(key_modalities, Mapping):
            key_modalities = ModalityLayout(key_modalities)
        if key_modalities is not None and not isinstance(key_modalities, ModalityLayout):
            raise ProbeConfigError(
                "probe: expected key_modalities as an attnprobe.ModalityLayout, a mapping of "
                f"name -> length or None, received {type(key_modalities).__name__}."
            )
        self.key_layout: ModalityLayout | None = key_modalities
        """The layout of the keys of cross-attention layers (None: self-attention)."""
        self._rule: InputLayout | None = None
        rule_selects = False
        if isinstance(modalities, InputLayout):
            self._rule = modalities
            names = list(modalities.names)
            modalities = ModalityLayout.from_labels(torch.empty(0, 0, dtype=torch.long), names)
            rule_selects = layers is None
            if rule_selects:
                layers = self._rule.layers
        if isinstance(modalities, Mapping):
            modalities = ModalityLayout(modalities)
        if not isinstance(modalities, ModalityLayout):
            raise ProbeConfigError(
                "probe: expected modalities as an attnprobe.ModalityLayout, a mapping of "
                "name -> length or an attnprobe.InputLayout (e.g. attnprobe.auto_layout(model)), "
                f"received {type(modalities).__name__}."
            )
        if method not in ("second_pass", "fused"):
            raise ProbeConfigError(
                f"probe: expected method 'second_pass' or 'fused', received {method!r}."
            )
        if reservoir_size < 0:
            raise ProbeConfigError(
                f"probe: expected reservoir_size >= 0, received {reservoir_size}."
            )
        self.model = _unwrap(model)
        self.layout = modalities
        self.key_names: tuple[str, ...] = (
            modalities.names if key_modalities is None else key_modalities.names
        )
        """Key groups: the layout's, or those of ``key_modalities`` for cross-attention."""
        if isinstance(queries, str):
            queries = [queries]
        if queries is None:
            self.query_groups: tuple[str, ...] = modalities.names
        else:
            for q in queries:
                modalities.index(q)
            if len(queries) == 0:
                raise ProbeConfigError(
                    "probe: queries=[] selects no query group; pass None for all of them."
                )
            self.query_groups = tuple(q for q in modalities.names if q in set(queries))
        remap = torch.full((len(modalities.names) + 1,), IGNORE, dtype=torch.long)
        for i, name in enumerate(modalities.names):
            if name in self.query_groups:
                remap[i + 1] = self.query_groups.index(name)
        self._query_remap = remap  # index label + 1 -> query group index or -1
        self.method: Method = method
        self.key_stats = key_stats
        self.second_moment = second_moment
        self.reservoir_size = reservoir_size
        self.seed = seed
        self.per_sample = per_sample
        self.store_maps = store_maps
        self.entropy = entropy
        self._batch_labels: Tensor | None = None  # (B, L) on the CPU
        self._batch_key_labels: Tensor | None = None  # (B, Lk) on the CPU (cross-attention)
        self._query_offset: int | None = None  # position of the first query (KV cache)
        self._rule_labels: Tensor | None = None  # (B, L) labels of the cached sequence
        self._label_cache: dict[tuple[object, ...], _Labels] = {}
        try:
            self._selection = _select(
                self.model, layers, cross=key_modalities is not None, automatic=rule_selects
            )
        except ProbeConfigError as exc:
            if self._rule is None or not rule_selects:
                raise
            raise ProbeConfigError(
                f"{exc} The {type(self._rule).__name__} selects the layers that see its "
                "sequence by their path in the model it was built from: build it from the model "
                "you probe (auto_layout(model)), or pass layers=... yourself."
            ) from None
        # the root module has the empty path; name it by its class in results
        self._recorders = [
            _LayerRecorder(n or type(m).__name__, self) for n, m, _ in self._selection
        ]
        self._stack: contextlib.ExitStack | None = None
        if method == "fused":
            warnings.warn(
                "probe(method='fused') returns the model's attention output from a kernel call "
                "with a wider value matrix: outputs equal the unprobed model's only up to "
                "floating-point rounding. Use method='second_pass' for bit-identical outputs.",
                AttnProbeWarning,
                stacklevel=3,
            )

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def layers(self) -> tuple[str, ...]:
        """Names of the selected modules."""
        return tuple(n for n, _, _ in self._selection)

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
                adapter.prepare_model(self.model, modules, stack)
            if self._rule is not None:
                handle = self.model.register_forward_pre_hook(self._rule_hook, with_kwargs=True)
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

    # -- labels ------------------------------------------------------------------------------
    def _rule_hook(
        self, module: nn.Module, args: tuple[object, ...], kwargs: dict[str, object]
    ) -> None:
        """Labels of this forward from its inputs (an `InputLayout`); with a KV cache the new
        tokens' labels are appended to those of the cached ones."""
        assert self._rule is not None
        past = self._rule.past_length(args, kwargs)  # type: ignore[arg-type]
        new = (
            _check_label_tensor(
                self._rule.labels(args, kwargs),  # type: ignore[arg-type]
                len(self.layout.names),
                f"{type(self._rule).__name__}.labels",
            )
            .detach()
            .to("cpu", torch.long)
        )  # (B, Lnew)
        if past:
            previous = self._rule_labels
            if previous is None or previous.shape[0] != new.shape[0] or previous.shape[1] < past:
                seen = "none" if previous is None else f"shape {list(previous.shape)}"
                raise ModalityLayoutError(
                    f"the model's KV cache holds {past} tokens per sample but the probe saw "
                    f"labels for {seen} (batch {new.shape[0]}); attach the probe before the "
                    "first forward of the generation (beam search, which reorders the cache, "
                    "is not supported)."
                )
            new = torch.cat([previous[:, :past], new], dim=1)  # (B, past + Lnew)
        self._rule_labels = new
        self._label_cache.clear()
        self._batch_labels = new
        self._query_offset = past

    def set_labels(self, labels: Tensor | ModalityLayout | None) -> None:
        """Per-sample group labels for the following forward passes (until changed).

        Args:
            labels: a ``[B, L]`` integer tensor of indices into the probe's modality names
                (``-1`` = ignore, e.g. padding), a `ModalityLayout` with the same names,
                or None to go back to the probe's layout.

        Example:
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
        self._label_cache.clear()
        self._query_offset = None
        if labels is None:
            self._batch_labels = None
            return
        self._batch_labels, self.layout = _labels_or_layout(labels, self.layout, "set_labels")

    def _different_sequences(self, query_len: int, length: int, offset: int | None = None) -> None:
        raise ModalityLayoutError(
            f"{query_len} query tokens attend to {length} key tokens"
            + (f" from position {offset}" if self._query_offset is not None else "")
            + ": the queries and keys are different sequences. For cross-attention, give the "
            "probe key_modalities (the layout of the keys) and select the cross-attention "
            "layers; for a KV cache, give it an InputLayout (attnprobe.auto_layout(model) for "
            "HuggingFace models), which follows the cache."
        )

    def set_key_labels(self, labels: Tensor | ModalityLayout | None) -> None:
        """Per-sample labels of the keys of cross-attention layers for the following forward
        passes (until changed); the probe must have been created with ``key_modalities``.

        Args:
            labels: a ``[B, Lk]`` integer tensor of indices into the key modality names
                (``-1`` = ignore, e.g. padded memory), a `ModalityLayout` with the same names,
                or None to go back to ``key_modalities``.
        """
        if self.key_layout is None:
            raise ProbeConfigError(
                "set_key_labels: this probe has no key_modalities (it probes self-attention); "
                "create it with key_modalities=... to probe cross-attention layers."
            )
        self._label_cache.clear()
        if labels is None:
            self._batch_key_labels = None
            return
        self._batch_key_labels, self.key_layout = _labels_or_layout(
            labels, self.key_layout, "set_key_labels"
        )

    def _resolve_labels(
        self, batch: int, length: int, query_len: int, appended: int, device: torch.device
    ) -> _Labels:
        """Key and query labels of a call, computed on the CPU once per (shape, device) and
        moved to the device, so that the hot path has no host-device synchronisation.

        Self-attention: the keys are the ``length`` labelled tokens, the queries the same
        tokens or, when an `InputLayout` follows a KV cache, the ``query_len`` new tokens from
        the position it read from the cache. Cross-attention (``key_modalities``): the keys are
        labelled by the key layout, the queries by the probe's layout."""
        cache_key = (batch, length, query_len, appended, device)
        cached = self._label_cache.get(cache_key)
        if cached is not None:
            return cached
        cross = self.key_layout is not None
        if not cross and self._query_offset is None and query_len != length:
            self._different_sequences(query_len, length)
        # the labelled sequence the queries come from (and, for self-attention, the keys)
        sequence = query_len if cross and self._query_offset is None else length
        if self._batch_labels is not None:
            # cross-attention queries are checked against query_len below
            if self._batch_labels.shape[0] != batch or (
                not cross and self._batch_labels.shape[1] != sequence
            ):
                source = "the InputLayout" if self._rule is not None else "set_labels"
                raise ModalityLayoutError(
                    f"the labels from {source} have shape {list(self._batch_labels.shape)} "
                    f"but the attention call has [batch={batch}, keys={length}]; "
                    + (
                        "is this layer on another sequence (another tower, cross-attention, "
                        "a sliding-window or static cache)? Select the layers that attend over "
                        "the sequence the layout describes, or give cross-attention layers "
                        "key_modalities."
                        if self._rule is not None
                        else "call set_labels with the labels of this batch."
                    )
                )
            labels = self._batch_labels  # (B, L)
        elif self._rule is not None:
            raise ModalityLayoutError(
                f"the probe's {type(self._rule).__name__} computes labels from the inputs of "
                f"{type(self.model).__name__}.forward, which has not run; call the probed model "
                "itself, not one of its submodules (or probe the submodule)."
            )
        else:
            labels = self.layout.labels(batch, sequence)  # (B, L)
        if cross:
            assert self.key_layout is not None
            if self._batch_key_labels is not None:
                if tuple(self._batch_key_labels.shape) != (batch, length):
                    raise ModalityLayoutError(
                        f"the key labels from set_key_labels have shape "
                        f"{list(self._batch_key_labels.shape)} but the attention call has "
                        f"[batch={batch}, keys={length}]; call set_key_labels with the key "
                        "labels of this batch."
                    )
                keys = self._batch_key_labels  # (B, Lk)
            else:
                keys = self.key_layout.labels(batch, length)  # (B, Lk)
        else:
            keys = labels  # (B, L)
        # without a tracked cache offset, the queries are the whole labelled sequence
        offset = 0 if self._query_offset is None else self._query_offset
        total = labels.shape[1]
        fits = query_len == total if self._query_offset is None else offset + query_len <= total
        if not fits:
            self._different_sequences(query_len, length, offset)
        queries = labels[:, offset : offset + query_len]  # (B, Lq)
        if len(self.query_groups) != len(self.layout.names):
            queries = self._query_remap[queries + 1]  # (B, Lq): query-group index or -1
        keep = (queries >= 0).any(0)  # (Lq,)
        rows_cpu = None
        if not bool(keep.all()):
            rows_cpu = keep.nonzero().squeeze(-1)  # (R,)
            queries = queries.index_select(1, rows_cpu)  # (B, R)
        if appended:
            keys = nn.functional.pad(keys, (0, appended), value=IGNORE)  # (B, Lk)
        resolved = _Labels(
            keys=keys.to(device),
            queries=queries.to(device),
            rows=None if rows_cpu is None else rows_cpu.to(device),
            keys_ignored=bool((keys < 0).any()),
            queries_ignored=bool((queries < 0).any()),
        )
        if len(self._label_cache) > 64:
            self._label_cache.clear()
        self._label_cache[cache_key] = resolved
        return resolved

    # -- results -------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything captured so far (hooks stay attached)."""
        for recorder in self._recorders:
            recorder.forwards = 0
            for state in recorder.states:
                state.reset()
            recorder.states = []

    def sync(self) -> None:
        """Sum the statistics of all DDP ranks; no-op without ``torch.distributed``.

        Call it on every rank. Ranks first exchange which layers and call sites they saw
        (``all_gather_object`` of names and shapes), so a rank on which a layer saw no batch
        takes part with zeros instead of leaving the others waiting; then one ``all_reduce``
        per call site sums what each rank added since the previous sync (syncing twice never
        double counts). Reservoir samples and per-sample statistics stay per rank.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        local = [
            [(state.shape, state.unsynced_calls, state.sums.entries()) for state in rec.states]
            for rec in self._recorders
        ]
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, local)
        for r, recorder in enumerate(self._recorders):
            for index in range(max(len(ranks[r]) for ranks in gathered)):
                seen = [ranks[r][index] for ranks in gathered if index < len(ranks[r])]
                state = recorder.state_at(index)
                if state.shape is None:
                    state.shape = next((shape for shape, _, _ in seen if shape is not None), None)
                state.calls += sum(calls for _, calls, _ in seen) - state.unsynced_calls
                state.unsynced_calls = 0
                entries: dict[str, tuple[int, ...]] = {}
                for _, _, names in seen:
                    entries.update(names)
                state.sums.ensure(entries)
                state.sums.sync()

    def result(self, *, strict: bool = True) -> ProbeResult:
        """The statistics captured since the last `reset`.

        Args:
            strict: raise `CaptureError` when a selected layer produced no capture
                (it never ran, or ran without reaching an attention kernel); with False such
                layers are left out with a warning.
        """
        problems = []
        for (name, module, _), recorder in zip(self._selection, self._recorders, strict=True):
            if any(s.calls for s in recorder.states):
                continue
            if recorder.forwards == 0:
                problems.append(
                    f"{name!r} never ran while the probe was attached (is it used in this "
                    "forward? was the model compiled, or called through a path that bypasses "
                    "module hooks?)"
                )
            else:
                inner = [
                    f"{name}.{n}" if name else n
                    for n, m in module.named_modules()
                    if n and adapter_for(m) is not None
                ]
                if inner:
                    fix = f"select its attention submodules instead: {inner[:4]}"
                elif getattr(module, "fused_attn", None) is False:
                    fix = (
                        "it has fused_attn = False (timm's explicit path): set "
                        "module.fused_attn = True, or register an adapter for it "
                        "(attnprobe.register_adapter)"
                    )
                else:
                    fix = (
                        "register an adapter for it (attnprobe.register_adapter) that "
                        "extracts q and k"
                    )
                problems.append(
                    f"{name!r} ran {recorder.forwards} time(s) but no attention call was "
                    "captured: its forward did not call F.scaled_dot_product_attention (it may "
                    f"compute attention by hand); {fix}"
                )
        if problems and strict:
            if all(r.forwards == 0 for r in self._recorders):
                raise CaptureError(
                    "no forward pass ran through the probed layers while the probe was "
                    "attached; run the model inside the `with probe(...)` block (or between "
                    "attach() and close())."
                )
            raise CaptureError(
                "selected layers produced no capture: "
                + "; ".join(problems)
                + ". Pass strict=False to get the other layers' results."
            )
        if problems:
            warnings.warn(
                "left out of the result: " + "; ".join(problems), AttnProbeWarning, stacklevel=2
            )
        layers: list[LayerResult] = []
        for recorder in self._recorders:
            layers.extend(recorder.results())
        for layer in layers:
            _warn_if_degenerate(layer)
        return ProbeResult(tuple(layers))

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        keys = "" if self.key_layout is None else f", key groups={list(self.key_names)}"
        return (
            f"Probe({len(self._selection)} layers, groups={list(self.layout.names)}{keys}, "
            f"method={self.method!r}, {state})"
        )


def probe(
    model: nn.Module,
    *,
    modalities: ModalityLayout | Mapping[str, int] | InputLayout,
    layers: LayerSelector = None,
    queries: Sequence[str] | str | None = None,
    key_modalities: ModalityLayout | Mapping[str, int] | None = None,
    method: Method = "second_pass",
    key_stats: bool = True,
    second_moment: bool = False,
    reservoir_size: int = 0,
    seed: int = 0,
    per_sample: bool = False,
    store_maps: bool = False,
    entropy: bool = False,
) -> Probe:
    """Probe the attention layers of ``model`` per modality.

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
        method: ``"second_pass"`` (default; the model's outputs are bit-for-bit unchanged) or
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

    Returns:
        A `Probe`, not yet attached: use it in a ``with`` block or call ``attach()``.

    Example:
        >>> import torch, attnprobe as ap
        >>> from torch import nn
        >>> layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, batch_first=True)
        >>> model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        >>> x = torch.randn(3, 6, 16)
        >>> with ap.probe(model, modalities={"cls": 1, "audio": 2, "video": 3}) as p:
        ...     _ = model(x)
        >>> p.result().names
        ('layers.0.self_attn', 'layers.1.self_attn')
        >>> frame = p.result().to_frame()
        >>> frame.groupby(["layer", "head", "query_modality"])["mass"].sum().round(6).unique()
        array([1.])
    """
    return Probe(
        model,
        modalities=modalities,
        layers=layers,
        queries=queries,
        key_modalities=key_modalities,
        method=method,
        key_stats=key_stats,
        second_moment=second_moment,
        reservoir_size=reservoir_size,
        seed=seed,
        per_sample=per_sample,
        store_maps=store_maps,
        entropy=entropy,
    )
