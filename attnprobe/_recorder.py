"""The hot path: one recorder per probed module, from an attention call to accumulated states.

An adapter (`attnprobe.capture`) hands each attention call of the module to its recorder
(`LayerRecorder.record`, or `LayerRecorder.record_fused` for the fused single call). The
recorder asks the probe's `LabelSource` for the call's labels, builds a `attnprobe.stats.Call`,
lets each statistic of its frozen `RecordSpec` compute its update, and adds the updates to the
call site's `SiteAccumulator`. It holds no reference to its probe: the spec and the label source
are handed down when the probe is created.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from attnprobe import functional
from attnprobe.capture import AttentionInputs
from attnprobe.errors import CaptureError, ModalityLayoutError
from attnprobe.labels import CallLabels, LabelSource
from attnprobe.results import LayerResult
from attnprobe.stats import Call, Dims, SiteAccumulator, States, Statistic

__all__ = ["LayerRecorder", "RecordSpec"]


@dataclass(frozen=True)
class RecordSpec:
    """What every recorder of one probe records (fixed when the probe is created)."""

    statistics: tuple[Statistic, ...]
    """The statistics to accumulate (`attnprobe.stats`)."""
    fused: bool = False
    """Run the fused single call ``V' = [V, E]`` where the adapter supports it."""
    restricted_queries: bool = False
    """Only some query groups are kept."""
    compile_reduction: bool = False
    """Run the fused reduction through ``torch.compile``."""
    needs: frozenset[str] = field(init=False)
    """The union of the statistics' needs."""

    def __post_init__(self) -> None:
        needs: frozenset[str] = frozenset()
        for statistic in self.statistics:
            needs |= statistic.needs
        object.__setattr__(self, "needs", needs)

    @property
    def dense_mask(self) -> bool:
        """Whether the adapter must hand over a dense mask (kept rows, full maps)."""
        return self.restricted_queries or "maps" in self.needs


def _in_backward() -> bool:
    """Whether this code runs inside the autograd engine's backward pass (where activation
    checkpointing recomputes forwards)."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and int(task()) != -1


class LayerRecorder:
    """A probe's recorder for one selected module (the `attnprobe.capture.Recorder` protocol).

    Args:
        name: the module's path (results name its call sites after it).
        spec: what to record.
        labels: where the labels of each call come from.
        lenient: leave out (and count in `misfits`) calls that its layouts do not describe,
            instead of raising (the probe selected the layer itself, ``layers=None``).
    """

    def __init__(
        self, name: str, spec: RecordSpec, labels: LabelSource, *, lenient: bool = False
    ) -> None:
        self.name = name
        self.spec = spec
        self.labels = labels
        """Where the labels of each call come from."""
        self.lenient = lenient
        self.misfits: dict[str, int] = {}
        """Why calls were left out (lenient only), with how many."""
        self.forwards = 0
        """Forwards of the module seen (recomputations excluded)."""
        self.sites: list[SiteAccumulator] = []
        """One accumulator per kernel call site (the N-th attention call of a forward)."""
        self._call_index = 0
        self._recompute = False

    # -- the Recorder protocol -------------------------------------------------------------------
    @property
    def wants_fused(self) -> bool:
        return self.spec.fused

    @property
    def needs_dense_mask(self) -> bool:
        return self.spec.dense_mask

    def begin(self) -> None:
        self._call_index = 0
        # a forward run by the autograd engine is activation checkpointing recomputing one
        # the probe already saw (reentrant or not): record nothing, or it counts twice
        self._recompute = _in_backward()
        if not self._recompute:
            self.forwards += 1

    def record(self, inputs: AttentionInputs, kernel: Callable[..., Tensor] | None) -> None:
        if self._recompute:
            return
        labels = self._call_labels(inputs)
        if labels is None:
            return
        with torch.no_grad():
            self._reduce(inputs, kernel, None, labels)

    def record_fused(
        self, inputs: AttentionInputs, kernel: Callable[..., Tensor], dropout_p: float
    ) -> Tensor:
        assert inputs.value is not None
        labels = self._call_labels(inputs)
        if labels is None:  # nothing to record: the model's own call
            extra = {"enable_gqa": True} if inputs.enable_gqa else {}
            out: Tensor = kernel(
                inputs.query,
                inputs.key,
                inputs.value,
                attn_mask=inputs.attn_mask,
                dropout_p=dropout_p,
                is_causal=inputs.is_causal,
                scale=inputs.scale,
                **extra,
            )
            return out
        groups = len(self._key_names(inputs))
        value = inputs.value
        width = functional.fused_width(inputs.query.shape[-1], value.shape[-1], groups)
        indicator = labels.get(
            ("fused_indicator", value.shape[1], value.shape[-1], value.dtype, width),
            lambda: functional.fused_indicator(labels.keys, groups, value, width),
        )  # (B, Hk, Lk, W - Dv)
        out, mass = functional.fused_attention(
            inputs.query,
            inputs.key,
            value,
            labels.keys,
            groups,
            attn_mask=inputs.attn_mask,
            dropout_p=dropout_p,
            is_causal=inputs.is_causal,
            scale=inputs.scale,
            enable_gqa=inputs.enable_gqa,
            kernel=kernel,
            indicator=indicator,
        )  # (B, H, Lq, Dv), (B, H, Lq, G)
        if self._recompute:  # the same output as the first forward, nothing recorded
            return out
        with torch.no_grad():
            self._reduce(inputs, kernel, mass, labels)  # read without gradient
        return out

    # -- accumulation ----------------------------------------------------------------------------
    def site_at(self, index: int) -> SiteAccumulator:
        """The accumulator of the ``index``-th kernel call site (created when new)."""
        while len(self.sites) <= index:
            i = len(self.sites)
            self.sites.append(SiteAccumulator(self.name if i == 0 else f"{self.name}:call{i}"))
        return self.sites[index]

    def _key_names(self, inputs: AttentionInputs) -> tuple[str, ...]:
        return self.labels.key_names(self.labels.is_cross(inputs.cross))

    def _call_labels(self, inputs: AttentionInputs) -> CallLabels | None:
        """The call's labels; None when a lenient recorder leaves the call out."""
        batch, key_len, query_len = inputs.key.shape[0], inputs.key.shape[2], inputs.query.shape[2]
        try:
            return self.labels.for_call(
                batch,
                key_len - inputs.appended_keys,
                query_len,
                inputs.appended_keys,
                inputs.key.device,
                self.labels.is_cross(inputs.cross),
            )
        except ModalityLayoutError as exc:
            if self.lenient:
                if not self._recompute:
                    reason = str(exc).split("; ")[0]
                    self.misfits[reason] = self.misfits.get(reason, 0) + 1
                    self._call_index += 1  # later calls keep their call sites
                return None
            raise ModalityLayoutError(f"layer {self.name!r}: {exc}") from None

    def _reduce(
        self,
        inputs: AttentionInputs,
        kernel: Callable[..., Tensor] | None,
        mass: Tensor | None,
        labels: CallLabels,
    ) -> None:
        site = self.site_at(self._call_index)
        self._call_index += 1
        query, key = inputs.query, inputs.key
        if query.dim() != 4 or key.dim() != 4:
            raise CaptureError(
                f"layer {self.name!r}: expected query and key of shape [B, H, L, D], received "
                f"{list(query.shape)} and {list(key.shape)}; an adapter must reshape to heads."
            )
        dims = Dims(
            num_heads=query.shape[1],
            num_kv_heads=key.shape[1],
            head_dim=query.shape[3],
            query_groups=self.labels.query_groups,
            key_groups=self._key_names(inputs),
        )
        if site.dims is None:
            site.start(dims, self.spec.statistics, self.spec.compile_reduction)
        elif site.dims != dims:
            before, now = site.dims, dims
            raise CaptureError(
                f"layer {site.name!r}: expected (heads, kv heads, head dim, query groups, key "
                f"groups) = {(before.num_heads, before.num_kv_heads, before.head_dim)}, "
                f"{list(before.query_groups)}, {list(before.key_groups)} as in earlier calls, "
                f"received {(now.num_heads, now.num_kv_heads, now.head_dim)}, "
                f"{list(now.query_groups)}, {list(now.key_groups)}; reset() the probe between "
                "different models (a module called as self- and as cross-attention at the same "
                "call site cannot be probed)."
            )
        call = Call(
            query=query,
            key=key,
            attn_mask=inputs.attn_mask,
            is_causal=inputs.is_causal,
            scale=inputs.scale,
            enable_gqa=inputs.enable_gqa,
            kernel=kernel,
            labels=labels,
            dims=dims,
            needs=self.spec.needs,
            fused_mass=mass,
            weights=inputs.weights,
        )
        site.add_call(call)

    def reset(self) -> None:
        """Forget everything recorded."""
        self.forwards = 0
        self.sites = []
        self.misfits = {}

    def results(self) -> list[LayerResult]:
        """One `LayerResult` per call site that saw a call."""
        out = []
        for site in self.sites:
            if site.dims is None:
                continue
            dims = site.dims
            out.append(
                LayerResult(
                    name=site.name,
                    num_heads=dims.num_heads,
                    num_kv_heads=dims.num_kv_heads,
                    head_dim=dims.head_dim,
                    query_groups=dims.query_groups,
                    key_groups=dims.key_groups,
                    num_calls=site.calls,
                    statistics=site.statistics,
                    states=States(site.compute()),
                )
            )
        return out
