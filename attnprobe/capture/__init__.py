"""Adapters that find the attention kernel call of each model family, and everything else that
knows a model family.

Nothing outside this package knows a model family. Built-in adapters, tried after any
registered with `register_adapter`: ``torch.nn.MultiheadAttention``, HuggingFace attention
modules that dispatch through ``AttentionInterface``, timm ``Attention``, any module whose
forward calls ``F.scaled_dot_product_attention``, Longformer-style sliding-window attention,
then attention modules that compute their weights by hand (a softmax of a query–key product).
Layer selection and the unwrapping of DDP/FSDP wrappers (`select_layers`, `unwrap_model`), the
layouts of known models (`auto_layout`) and the explicit reference of `attnprobe.self_check`
live here too.
"""

from attnprobe.capture._banded import BandedAttentionAdapter
from attnprobe.capture._base import (
    _REGISTRY,
    Adapter,
    AttentionInputs,
    Recorder,
    adapter_for,
    adapters,
    register_adapter,
)
from attnprobe.capture._hand import HandAttentionAdapter
from attnprobe.capture._hf import HuggingFaceAdapter
from attnprobe.capture._layouts import auto_layout
from attnprobe.capture._sdpa import SdpaAdapter
from attnprobe.capture._select import (
    LayerSelector,
    explain_missing_capture,
    select_layers,
    unwrap_model,
)
from attnprobe.capture._timm import TimmAttentionAdapter
from attnprobe.capture._torch import MultiheadAttentionAdapter

_REGISTRY.extend(
    [
        MultiheadAttentionAdapter(),
        HuggingFaceAdapter(),
        TimmAttentionAdapter(),
        SdpaAdapter(),
        BandedAttentionAdapter(),
        HandAttentionAdapter(),
    ]
)

__all__ = [
    "Adapter",
    "AttentionInputs",
    "BandedAttentionAdapter",
    "HandAttentionAdapter",
    "HuggingFaceAdapter",
    "LayerSelector",
    "MultiheadAttentionAdapter",
    "Recorder",
    "SdpaAdapter",
    "TimmAttentionAdapter",
    "adapter_for",
    "adapters",
    "auto_layout",
    "explain_missing_capture",
    "register_adapter",
    "select_layers",
    "unwrap_model",
]
