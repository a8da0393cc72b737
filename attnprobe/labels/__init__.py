"""Token group labels: layouts, layouts computed from a model's inputs, and a probe's labels.

- `ModalityLayout`: which group every token position belongs to (spans, slices or a
  per-sample ``[B, L]`` tensor; ``-1`` = ignored).
- `InputLayout` (with `TokenLayout`, `VisionLayout` and `FrameLayout`): labels computed from
  each forward's inputs, following a KV cache.
- `LayerLayouts`: the layouts of a model's several sequences, per attention layer
  (`MergedKeys`: keys that are a layer's own tokens followed by another sequence's).
- `LabelSource` and `CallLabels`: a probe's labels in one place, and the labels of one
  attention call that its recorders receive.

Concepts: ``docs/concepts/layouts.md``.
"""

from attnprobe.labels._inputs import FrameLayout, InputLayout, TokenLayout, VisionLayout
from attnprobe.labels._layers import LayerLayouts, MergedKeys
from attnprobe.labels._layout import (
    IGNORE,
    ModalityLayout,
    as_layout,
    check_label_tensor,
    check_names,
)
from attnprobe.labels._source import CallLabels, LabelSource, SequenceLabels

__all__ = [
    "IGNORE",
    "CallLabels",
    "FrameLayout",
    "InputLayout",
    "LabelSource",
    "LayerLayouts",
    "MergedKeys",
    "ModalityLayout",
    "SequenceLabels",
    "TokenLayout",
    "VisionLayout",
    "as_layout",
    "check_label_tensor",
    "check_names",
]
