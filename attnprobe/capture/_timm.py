"""timm Vision Transformers: the attention module's explicit path, and the ViT token layout.

timm ``Attention`` modules call ``F.scaled_dot_product_attention`` when their per-instance flag
``fused_attn`` is set (captured like any SDPA module, `SdpaAdapter`) and compute the weights by
hand otherwise, passing them through ``attn_drop``. This adapter adds what only timm knows: the
hint when ``fused_attn`` is off, the explicit path as `attnprobe.self_check`'s reference, and
the layout of a ViT's sequence (prefix tokens, then patches). Nothing here imports ``timm``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from attnprobe.capture._hf_layouts import pair
from attnprobe.capture._pooling import pooling_layouts
from attnprobe.capture._sdpa import SdpaAdapter
from attnprobe.labels import InputLayout, LayerLayouts, VisionLayout

__all__ = ["TimmAttentionAdapter"]


class TimmAttentionAdapter(SdpaAdapter):
    """timm ``Attention`` (and any module with a ``fused_attn`` flag and an ``attn_drop``
    module whose forward calls SDPA)."""

    name = "timm"

    def matches(self, module: nn.Module) -> bool:
        return (
            hasattr(module, "fused_attn")
            and isinstance(getattr(module, "attn_drop", None), nn.Module)
            and super().matches(module)
        )

    def explain_missing_capture(self, module: nn.Module) -> str | None:
        if getattr(module, "fused_attn", None) is False:
            return (
                "it has fused_attn = False (timm's explicit path): set module.fused_attn = True, "
                "or register an adapter for it (attnprobe.register_adapter)"
            )
        return None

    def reference_weights(
        self, module: nn.Module, stack: contextlib.ExitStack, record: Callable[[Tensor], None]
    ) -> str | None:
        attention: Any = module
        before = attention.fused_attn
        attention.fused_attn = False
        stack.callback(setattr, attention, "fused_attn", before)

        def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            record(args[0].detach())  # (B, H, L, L), the weights entering attn_drop

        stack.callback(attention.attn_drop.register_forward_hook(hook).remove)
        return "timm non-fused attention weights"

    def default_layout(
        self, model: nn.Module, *, tower: str | None = None
    ) -> InputLayout | LayerLayouts | None:
        if not (hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")):
            return None
        vit: Any = model
        registers = int(getattr(vit, "num_reg_tokens", 0))
        distillation = int(getattr(vit, "dist_token", None) is not None)  # DeiT
        cls = int(vit.num_prefix_tokens) - registers - distillation
        layout = VisionLayout(
            patch_size=pair(vit.patch_embed.patch_size),
            cls_tokens=cls,
            register_tokens=registers,
            distillation_tokens=distillation,
            image_argument=("x", 0),
        )
        patches = None
        if not getattr(vit, "pool_include_prefix", True):  # the pool reads the patches only
            patches = VisionLayout(
                patch_size=layout.patch_size, cls_tokens=0, image_argument=("x", 0)
            )
        return pooling_layouts(model, layout, patches)
