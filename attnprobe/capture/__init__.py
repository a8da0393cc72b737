"""Adapters that find the attention kernel call of each model family.

Nothing outside this package knows a model family. Built-in adapters, tried after any
registered with `register_adapter`: ``torch.nn.MultiheadAttention``, HuggingFace attention
modules that dispatch through ``AttentionInterface``, then any module whose forward calls
``F.scaled_dot_product_attention`` (timm ``Attention`` included).
"""

from attnprobe.capture._base import (
    _REGISTRY,
    Adapter,
    AttentionInputs,
    Recorder,
    adapter_for,
    adapters,
    register_adapter,
)
from attnprobe.capture._hf import HuggingFaceAdapter
from attnprobe.capture._sdpa import SdpaAdapter
from attnprobe.capture._torch import MultiheadAttentionAdapter

_REGISTRY.extend([MultiheadAttentionAdapter(), HuggingFaceAdapter(), SdpaAdapter()])

__all__ = [
    "Adapter",
    "AttentionInputs",
    "HuggingFaceAdapter",
    "MultiheadAttentionAdapter",
    "Recorder",
    "SdpaAdapter",
    "adapter_for",
    "adapters",
    "register_adapter",
]
