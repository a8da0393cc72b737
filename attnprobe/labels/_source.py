"""Where a probe's labels come from, and the labels of one attention call.

A probe keeps one `SequenceLabels` per token sequence of the model: its layout (fixed, replaced
per batch with ``set_labels``, or computed from each forward's inputs by an `InputLayout`, which
also follows a KV cache). Each probed layer gets a `LabelSource` over the sequence of its queries
and, for cross-attention calls, the sequence of its keys, with the query groups the probe keeps.
Every recorder asks its source for the labels of the call in hand (`LabelSource.for_call`) and
gets a frozen `CallLabels`: nothing flows back up.

Labels are resolved on the CPU once per call shape and cached, then moved to the call's
device, so that the hot path has no host-device synchronisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from attnprobe.errors import ModalityLayoutError
from attnprobe.labels._inputs import InputLayout
from attnprobe.labels._layers import Layout
from attnprobe.labels._layout import IGNORE, ModalityLayout, check_label_tensor

__all__ = ["CallLabels", "LabelSource", "SequenceLabels"]

_CACHE_SIZE = 64
"""Call shapes whose labels are kept at once (cleared when new labels arrive)."""


@dataclass(frozen=True)
class CallLabels:
    """The labels of one attention call, on the call's device.

    Shapes: ``B`` batch, ``Lk`` keys, ``R`` kept query rows (the rows of the probe's query
    groups that some sample does not ignore).
    """

    keys: Tensor
    """``[B, Lk]`` key group labels, ``-1`` = no group (padding, appended keys)."""
    queries: Tensor
    """``[B, R]`` query-group labels of the kept rows, ``-1`` = ignored in that sample."""
    rows: Tensor | None
    """``[R]`` kept query rows; None = all rows."""
    keys_ignored: bool
    """Whether some key is labelled ``-1``."""
    queries_ignored: bool
    """Whether some kept query row is labelled ``-1`` in some sample."""
    memo: dict[tuple[object, ...], Tensor] = field(default_factory=dict, compare=False)
    """Tensors built from these labels (indicators), kept between calls of the same shape."""

    def get(self, key: tuple[object, ...], make: Callable[[], Tensor]) -> Tensor:
        """The tensor memoised under ``key``, made by ``make()`` the first time."""
        value = self.memo.get(key)
        if value is None:
            value = self.memo[key] = make()
        return value


def _labels_or_layout(
    labels: Tensor | ModalityLayout, layout: ModalityLayout, fn: str
) -> tuple[Tensor | None, ModalityLayout]:
    """What `SequenceLabels.set_labels` keeps: per-batch labels (checked, on the CPU) with the
    current layout, or no batch labels and a replacement layout with the same group names."""
    if isinstance(labels, ModalityLayout):
        if labels.names != layout.names:
            raise ModalityLayoutError(
                f"{fn}: expected a layout with modalities {list(layout.names)}, received "
                f"{list(labels.names)}; the groups of a probe are fixed when it is created."
            )
        return None, labels
    checked = check_label_tensor(labels, len(layout.names), fn)
    return checked.detach().to("cpu", torch.long), layout


class SequenceLabels:
    """The current labels of one token sequence: a fixed layout, labels set per batch, or
    labels an `InputLayout` computes from each forward's inputs (following a KV cache).

    Args:
        layout: the sequence's layout.
        model_name: how error messages name the probed model.
    """

    def __init__(self, layout: Layout, model_name: str = "the probed model") -> None:
        self._model_name = model_name
        self.input_layout: InputLayout | None = None
        """The `InputLayout` computing labels from each forward's inputs, if any."""
        if isinstance(layout, InputLayout):
            self.input_layout = layout
            layout = ModalityLayout.from_labels(
                torch.empty(0, 0, dtype=torch.long), list(layout.names)
            )
        self.layout: ModalityLayout = layout
        """The current layout (replaced by `set_labels` with a `ModalityLayout`)."""
        self.version = 0
        """Increases whenever the labels change (label caches key on it)."""
        self.batch_labels: Tensor | None = None
        """``[B, L]`` labels of the current batch on the CPU, or None: the layout's."""
        self.query_offset: int | None = None
        """Position of the first query in the labelled sequence (KV cache), or None."""
        self._input_labels: Tensor | None = None  # (B, L) labels of the cached sequence

    @property
    def names(self) -> tuple[str, ...]:
        """The groups of the sequence."""
        return self.layout.names

    @property
    def source(self) -> str | None:
        """Path of the module whose forward inputs the `InputLayout` reads (None: the model)."""
        return None if self.input_layout is None else self.input_layout.source

    def observe_inputs(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Labels of this forward from its inputs (the `InputLayout`; a forward pre-hook on
        the module it reads calls it); with a KV cache the new tokens' labels are appended to
        those of the cached ones. A forward that does not carry this sequence (the
        `InputLayout` returns None, e.g. an encoder–decoder called with cached encoder
        outputs) keeps the previous labels."""
        rule = self.input_layout
        assert rule is not None
        raw = rule.labels(args, kwargs)
        if raw is None:
            return
        past = rule.past_length(args, kwargs)
        new = (
            check_label_tensor(raw, len(self.names), f"{type(rule).__name__}.labels")
            .detach()
            .to("cpu", torch.long)
        )  # (B, Lnew)
        if past:
            previous = self._input_labels
            if previous is None or previous.shape[0] != new.shape[0] or previous.shape[1] < past:
                seen = "none" if previous is None else f"shape {list(previous.shape)}"
                raise ModalityLayoutError(
                    f"the model's KV cache holds {past} tokens per sample but the probe saw "
                    f"labels for {seen} (batch {new.shape[0]}); attach the probe before the "
                    "first forward of the generation (beam search, which reorders the cache, "
                    "is not supported)."
                )
            new = torch.cat([previous[:, :past], new], dim=1)  # (B, past + Lnew)
        self._input_labels = new
        self.batch_labels = new
        self.query_offset = past
        self.version += 1

    def set_labels(self, labels: Tensor | ModalityLayout | None, fn: str = "set_labels") -> None:
        """Per-sample labels for the following calls (see `attnprobe.Probe.set_labels`)."""
        self.version += 1
        self.query_offset = None
        if labels is None:
            self.batch_labels = None
            return
        self.batch_labels, self.layout = _labels_or_layout(labels, self.layout, fn)

    def current(self, batch: int, length: int, *, what: str) -> Tensor:
        """``[batch, length]`` labels of the whole sequence on the CPU (``what`` says in errors
        which side of the call they label)."""
        if self.batch_labels is not None:
            if tuple(self.batch_labels.shape) != (batch, length):
                source = (
                    f"the {type(self.input_layout).__name__}"
                    if self.input_layout is not None
                    else "set_labels"
                )
                raise ModalityLayoutError(
                    f"the {what} labels from {source} have shape {list(self.batch_labels.shape)} "
                    f"but the attention call has [batch={batch}, {what}={length}]; "
                    + (
                        "is this layer on another sequence (another tower, cross-attention, "
                        "a sliding-window or static cache)? Give each sequence its layout "
                        "(modalities={pattern: layout, ...}) or select the layers that attend "
                        "over the sequence the layout describes."
                        if self.input_layout is not None
                        else f"call set_{'key_' if what == 'keys' else ''}labels with the "
                        "labels of this batch."
                    )
                )
            return self.batch_labels  # (B, L)
        if self.input_layout is not None:
            where = "" if self.source is None else f" (its submodule {self.source!r})"
            raise ModalityLayoutError(
                f"the {type(self.input_layout).__name__} computes labels from the inputs of "
                f"{self._model_name}{where}.forward, which has not run; call the probed model "
                "itself, not one of its submodules (or probe the submodule)."
            )
        try:
            return self.layout.labels(batch, length)  # (B, L)
        except ModalityLayoutError as exc:
            if what == "tokens":
                raise
            raise ModalityLayoutError(f"{what}: {exc}") from None


class LabelSource:
    """The labels of the calls of one probed layer: the sequence its queries come from, the
    sequence its keys come from in cross-attention calls, and the query groups kept.

    Sequences are shared between the layers that see them; labels are resolved on the CPU once
    per call shape and sequence version, then moved to the call's device.

    Args:
        queries: the sequence of the layer's queries (and of its keys in self-attention calls).
        keys: the sequence of its keys in cross-attention calls (None: it has none).
        query_groups: the query groups to keep (None: all of the query sequence's).
        merged: the keys of a cross-attention call are the layer's own tokens followed by
            ``keys``' (``"first"``), or ``keys``' followed by its own (``"last"``)
            (`attnprobe.labels.MergedKeys`); None: the key sequence's only.
    """

    def __init__(
        self,
        queries: SequenceLabels,
        keys: SequenceLabels | None = None,
        query_groups: Sequence[str] | None = None,
        *,
        merged: str | None = None,
    ) -> None:
        self.queries = queries
        self.keys = keys
        self.merged = merged if keys is not None else None
        names = queries.names
        self.query_groups: tuple[str, ...] = (
            names if query_groups is None else tuple(q for q in names if q in set(query_groups))
        )
        """The query groups recorded."""
        remap = torch.full((len(names) + 1,), IGNORE, dtype=torch.long)
        for i, name in enumerate(names):
            if name in self.query_groups:
                remap[i + 1] = self.query_groups.index(name)
        self._query_remap = remap  # label + 1 -> query group index or -1
        self._cache: dict[tuple[object, ...], CallLabels] = {}

    @property
    def names(self) -> tuple[str, ...]:
        """The groups of the query sequence."""
        return self.queries.names

    def key_names(self, cross: bool) -> tuple[str, ...]:
        """The key groups of a self- or cross-attention call (merged keys: the query
        sequence's groups, then the key sequence's that are not among them)."""
        if not cross or self.keys is None:
            return self.names
        if self.merged:
            return self.names + tuple(n for n in self.keys.names if n not in self.names)
        return self.keys.names

    def _merged_keys(self, own: Tensor, other: Tensor) -> Tensor:
        """``[B, Lown + Lother]`` key labels of a merged call, in the call's order: the other
        sequence's labels renumbered into `key_names` (a group name in both sequences is one
        group)."""
        assert self.keys is not None
        names, theirs = self.key_names(True), self.keys.names
        remap = torch.full((len(theirs) + 1,), IGNORE, dtype=torch.long)  # label + 1 -> group
        for i, name in enumerate(theirs):
            remap[i + 1] = names.index(name)
        parts = [own, remap[other + 1]] if self.merged == "first" else [remap[other + 1], own]
        return torch.cat(parts, dim=1)  # (B, Lown + Lother)

    def is_cross(self, declared: bool | None) -> bool:
        """Whether a call is cross-attention: always for merged keys (every call reads the
        other sequence's keys beside its own, whatever the module receives: a block-diffusion
        decoder gets them as a KV cache); else as the capture declared it, else (None) whether
        this layer has a key sequence."""
        if self.merged:
            return True
        return self.keys is not None if declared is None else declared

    def for_call(
        self,
        batch: int,
        length: int,
        query_len: int,
        appended: int,
        device: torch.device,
        cross: bool = False,
    ) -> CallLabels:
        """Key and query labels of a call over ``length`` labelled keys (plus ``appended`` keys
        of no group) and ``query_len`` queries, on ``device``.

        Self-attention: the keys are the ``length`` labelled tokens of the query sequence, the
        queries the same tokens or, when an `InputLayout` follows a KV cache, the
        ``query_len`` new tokens from the position it read from the cache. Cross-attention
        (``cross``): the keys are labelled by the key sequence, the queries by the query
        sequence (from the cache position, if any).
        """
        q_seq, k_seq = self.queries, self.keys
        versions = (q_seq.version, None if k_seq is None else k_seq.version)
        cache_key = (batch, length, query_len, appended, device, cross, versions)
        cached = self._cache.get(cache_key)
        if cached is not None:
            return cached
        offset = q_seq.query_offset
        if cross:
            if k_seq is None:
                raise ModalityLayoutError(
                    f"this call is cross-attention ({query_len} queries attend to {length} "
                    "keys of another sequence) and the layer has no key layout; give it one "
                    "with key_modalities (a layout, or {layer pattern: layout})."
                )
            # the queries' sequence: the new tokens from the cache position, or all of them
            total = query_len if offset is None else offset + query_len
            labels = q_seq.current(batch, total, what="queries")  # (B, Lq_total)
            if self.merged:  # keys: the layer's own tokens so far and the other sequence's
                if length < total:
                    raise ModalityLayoutError(
                        f"this call attends to {length} keys, fewer than its own {total} tokens "
                        "that MergedKeys counts among them; give the layer a plain key layout "
                        "if its keys are the other sequence's only."
                    )
                other = k_seq.current(batch, length - total, what="keys")  # (B, Lk - Lq_total)
                keys = self._merged_keys(labels, other)  # (B, Lk)
            else:
                keys = k_seq.current(batch, length, what="keys")  # (B, Lk)
        else:
            if offset is None and query_len != length:
                self._different_sequences(query_len, length)
            labels = q_seq.current(batch, length, what="tokens")  # (B, L)
            keys = labels  # (B, L)
            if offset is not None and offset + query_len > length:
                self._different_sequences(query_len, length, offset)
        start = 0 if offset is None else offset
        queries = labels[:, start : start + query_len]  # (B, Lq)
        if len(self.query_groups) != len(self.names):
            queries = self._query_remap[queries + 1]  # (B, Lq): query-group index or -1
        keep = (queries >= 0).any(0)  # (Lq,)
        rows_cpu = None
        if not bool(keep.all()):
            rows_cpu = keep.nonzero().squeeze(-1)  # (R,)
            queries = queries.index_select(1, rows_cpu)  # (B, R)
        if appended:
            keys = nn.functional.pad(keys, (0, appended), value=IGNORE)  # (B, Lk)
        resolved = CallLabels(
            keys=keys.to(device),
            queries=queries.to(device),
            rows=None if rows_cpu is None else rows_cpu.to(device),
            keys_ignored=bool((keys < 0).any()),
            queries_ignored=bool((queries < 0).any()),
        )
        if len(self._cache) > _CACHE_SIZE:
            self._cache.clear()
        self._cache[cache_key] = resolved
        return resolved

    def _different_sequences(self, query_len: int, length: int, offset: int | None = None) -> None:
        raise ModalityLayoutError(
            f"{query_len} query tokens attend to {length} key tokens"
            + (f" from position {offset}" if offset is not None else "")
            + ": the queries and keys are different sequences. For cross-attention, give the "
            "layer a key layout (key_modalities: a layout, or {layer pattern: layout}); for a "
            "KV cache, give it an InputLayout (attnprobe.auto_layout(model) for HuggingFace "
            "models), which follows the cache."
        )
