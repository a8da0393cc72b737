"""Where a probe's labels come from, and the labels of one attention call.

A probe owns one `LabelSource`: its layout (fixed, replaced per batch with ``set_labels``, or
computed from each forward's inputs by an `InputLayout`, which also follows a KV cache), the
key layout of cross-attention layers, and the query groups it keeps. Every recorder of the probe
asks the source for the labels of the call in hand (`LabelSource.for_call`) and gets a frozen
`CallLabels`: nothing flows back up.

Labels are resolved on the CPU once per call shape and cached, then moved to the call's
device, so that the hot path has no host-device synchronisation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from attnprobe.errors import ModalityLayoutError, ProbeConfigError
from attnprobe.labels._inputs import InputLayout
from attnprobe.labels._layout import IGNORE, ModalityLayout, check_label_tensor

__all__ = ["CallLabels", "LabelSource"]

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


def _as_layout(value: object, argument: str, also: str) -> ModalityLayout:
    if isinstance(value, Mapping):
        return ModalityLayout(value)
    if not isinstance(value, ModalityLayout):
        raise ProbeConfigError(
            f"probe: expected {argument} as an attnprobe.ModalityLayout, a mapping of "
            f"name -> length{also}, received {type(value).__name__}."
        )
    return value


def _labels_or_layout(
    labels: Tensor | ModalityLayout, layout: ModalityLayout, fn: str
) -> tuple[Tensor | None, ModalityLayout]:
    """What `LabelSource.set_labels` / `LabelSource.set_key_labels` keep: per-batch labels
    (checked, on the CPU) with the current layout, or no batch labels and a replacement layout
    with the same group names."""
    if isinstance(labels, ModalityLayout):
        if labels.names != layout.names:
            raise ModalityLayoutError(
                f"{fn}: expected a layout with modalities {list(layout.names)}, received "
                f"{list(labels.names)}; the groups of a probe are fixed when it is created."
            )
        return None, labels
    checked = check_label_tensor(labels, len(layout.names), fn)
    return checked.detach().to("cpu", torch.long), layout


class LabelSource:
    """The labels of one probe: layout, per-batch labels, input layout, key layout, query groups.

    Args:
        modalities: the layout of the attention layers' sequences (`ModalityLayout`, a mapping
            ``name -> length``, or an `InputLayout`).
        key_modalities: the layout of cross-attention keys (None: self-attention).
        queries: the query groups to keep (None: all).
        model_name: how error messages name the probed model.
    """

    def __init__(
        self,
        modalities: ModalityLayout | Mapping[str, int] | InputLayout,
        *,
        key_modalities: ModalityLayout | Mapping[str, int] | None = None,
        queries: Sequence[str] | str | None = None,
        model_name: str = "the probed model",
    ) -> None:
        self._model_name = model_name
        self.input_layout: InputLayout | None = None
        """The `InputLayout` computing labels from each forward's inputs, if any."""
        if isinstance(modalities, InputLayout):
            self.input_layout = modalities
            modalities = ModalityLayout.from_labels(
                torch.empty(0, 0, dtype=torch.long), list(modalities.names)
            )
        self.layout = _as_layout(
            modalities,
            "modalities",
            " or an attnprobe.InputLayout (e.g. attnprobe.auto_layout(model))",
        )
        """The current layout (replaced by `set_labels` with a `ModalityLayout`)."""
        self.key_layout: ModalityLayout | None = (
            None
            if key_modalities is None
            else _as_layout(key_modalities, "key_modalities", " or None")
        )
        """The layout of the keys of cross-attention layers (None: self-attention)."""
        names = self.layout.names
        if isinstance(queries, str):
            queries = [queries]
        if queries is None:
            self.query_groups: tuple[str, ...] = names
        else:
            for q in queries:
                self.layout.index(q)
            if len(queries) == 0:
                raise ProbeConfigError(
                    "probe: queries=[] selects no query group; pass None for all of them."
                )
            self.query_groups = tuple(q for q in names if q in set(queries))
        remap = torch.full((len(names) + 1,), IGNORE, dtype=torch.long)
        for i, name in enumerate(names):
            if name in self.query_groups:
                remap[i + 1] = self.query_groups.index(name)
        self._query_remap = remap  # label + 1 -> query group index or -1
        self._batch_labels: Tensor | None = None  # (B, L) on the CPU
        self._batch_key_labels: Tensor | None = None  # (B, Lk) on the CPU (cross-attention)
        self._query_offset: int | None = None  # position of the first query (KV cache)
        self._input_labels: Tensor | None = None  # (B, L) labels of the cached sequence
        self._cache: dict[tuple[object, ...], CallLabels] = {}

    @property
    def names(self) -> tuple[str, ...]:
        """The groups of the layout (query side)."""
        return self.layout.names

    @property
    def key_names(self) -> tuple[str, ...]:
        """Key groups: the layout's, or those of the key layout for cross-attention."""
        return self.names if self.key_layout is None else self.key_layout.names

    @property
    def cross(self) -> bool:
        """Whether the keys have a layout of their own (cross-attention)."""
        return self.key_layout is not None

    # -- new labels ------------------------------------------------------------------------------
    def observe_inputs(
        self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Labels of this forward from its inputs (the `InputLayout`; a forward pre-hook on the
        probed model calls it); with a KV cache the new tokens' labels are appended to those
        of the cached ones."""
        rule = self.input_layout
        assert rule is not None
        past = rule.past_length(args, kwargs)
        new = (
            check_label_tensor(
                rule.labels(args, kwargs), len(self.names), f"{type(rule).__name__}.labels"
            )
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
        self._cache.clear()
        self._batch_labels = new
        self._query_offset = past

    def set_labels(self, labels: Tensor | ModalityLayout | None) -> None:
        """Per-sample labels for the following calls (see `attnprobe.Probe.set_labels`)."""
        self._cache.clear()
        self._query_offset = None
        if labels is None:
            self._batch_labels = None
            return
        self._batch_labels, self.layout = _labels_or_layout(labels, self.layout, "set_labels")

    def set_key_labels(self, labels: Tensor | ModalityLayout | None) -> None:
        """Per-sample key labels of cross-attention calls (see
        `attnprobe.Probe.set_key_labels`)."""
        if self.key_layout is None:
            raise ProbeConfigError(
                "set_key_labels: this probe has no key_modalities (it probes self-attention); "
                "create it with key_modalities=... to probe cross-attention layers."
            )
        self._cache.clear()
        if labels is None:
            self._batch_key_labels = None
            return
        self._batch_key_labels, self.key_layout = _labels_or_layout(
            labels, self.key_layout, "set_key_labels"
        )

    # -- the labels of one call ------------------------------------------------------------------
    def for_call(
        self, batch: int, length: int, query_len: int, appended: int, device: torch.device
    ) -> CallLabels:
        """Key and query labels of a call over ``length`` labelled keys (plus ``appended`` keys
        of no group) and ``query_len`` queries, on ``device``.

        Self-attention: the keys are the ``length`` labelled tokens, the queries the same
        tokens or, when an `InputLayout` follows a KV cache, the ``query_len`` new tokens from
        the position it read from the cache. Cross-attention: the keys are labelled by the key
        layout, the queries by the layout.
        """
        cache_key = (batch, length, query_len, appended, device)
        cached = self._cache.get(cache_key)
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
                source = "the InputLayout" if self.input_layout is not None else "set_labels"
                raise ModalityLayoutError(
                    f"the labels from {source} have shape {list(self._batch_labels.shape)} "
                    f"but the attention call has [batch={batch}, keys={length}]; "
                    + (
                        "is this layer on another sequence (another tower, cross-attention, "
                        "a sliding-window or static cache)? Select the layers that attend over "
                        "the sequence the layout describes, or give cross-attention layers "
                        "key_modalities."
                        if self.input_layout is not None
                        else "call set_labels with the labels of this batch."
                    )
                )
            labels = self._batch_labels  # (B, L)
        elif self.input_layout is not None:
            raise ModalityLayoutError(
                f"the probe's {type(self.input_layout).__name__} computes labels from the "
                f"inputs of {self._model_name}.forward, which has not run; call the probed "
                "model itself, not one of its submodules (or probe the submodule)."
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
            + (f" from position {offset}" if self._query_offset is not None else "")
            + ": the queries and keys are different sequences. For cross-attention, give the "
            "probe key_modalities (the layout of the keys) and select the cross-attention "
            "layers; for a KV cache, give it an InputLayout (attnprobe.auto_layout(model) for "
            "HuggingFace models), which follows the cache."
        )
