"""The layouts of HuggingFace models: which rules read which config attributes.

`hf_layout` configures a generic `attnprobe.labels.TokenLayout` or `VisionLayout` from a model's
config (``text_config``, ``vision_config``, ``image_token_id``, ``model_type``, …);
`HuggingFaceAdapter.default_layout` answers `attnprobe.auto_layout` with it. Nothing here
imports ``transformers``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from attnprobe.errors import ProbeConfigError
from attnprobe.labels import InputLayout, TokenLayout, VisionLayout

__all__ = ["hf_layout", "pair"]


def _find(model: nn.Module, names: Sequence[str]) -> str | None:
    """Path of the first submodule whose last path component is one of ``names``."""
    for path, _ in model.named_modules():
        if path.rsplit(".", 1)[-1] in names:
            return str(path)
    return None


def pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


def hf_layout(model: nn.Module, tower: str | None) -> InputLayout | None:
    """The layout of a HuggingFace model's sequence (None: not an HF model); rules in
    `attnprobe.auto_layout`."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return None
    text_config = getattr(config, "text_config", None)
    vision_config = getattr(config, "vision_config", None)
    image_token = getattr(config, "image_token_id", None)
    if image_token is None:
        image_token = getattr(config, "image_token_index", None)
    video_token = getattr(config, "video_token_id", None)
    if video_token is None:
        video_token = getattr(config, "video_token_index", None)
    multimodal_tokens = image_token is not None or video_token is not None
    if text_config is not None and vision_config is not None:
        if tower is None and not multimodal_tokens:
            raise ProbeConfigError(
                f"auto_layout: {type(model).__name__} has a text and a vision tower that run on "
                "different sequences; pass tower='text' or tower='vision' (use two probes to "
                "watch both)."
            )
        if tower == "vision":
            prefix = _find(model, ("vision_model", "vision_tower", "visual", "vision_encoder"))
            return _vision_layout(vision_config, prefix)
        prefix = _find(model, ("language_model", "text_model", "text_encoder"))
        if multimodal_tokens:
            return TokenLayout(
                image_token_id=image_token,
                video_token_id=video_token,
                special="bos",
                special_token_id=_bos(text_config)
                if _bos(text_config) is not None
                else _bos(config),
                prefix=prefix,
            )
        return _text_layout(text_config, prefix)
    if tower == "text" or (tower is None and not hasattr(config, "patch_size")):
        return _text_layout(config, None)
    return _vision_layout(vision_config or config, None)


def _bos(config: Any) -> int | None:
    value = getattr(config, "bos_token_id", None)
    return int(value) if isinstance(value, int) else None


def _text_layout(config: Any, prefix: str | None) -> TokenLayout:
    decoder = (
        bool(getattr(config, "is_decoder", False))
        or "CausalLM" in " ".join(getattr(config, "architectures", None) or [])
        or getattr(config, "model_type", "") in _DECODER_TYPES
    )
    if decoder:
        return TokenLayout(special="bos", special_token_id=_bos(config), prefix=prefix)
    segments = int(getattr(config, "type_vocab_size", 0) or 0) > 1
    return TokenLayout(segments=segments, special="cls", special_first=True, prefix=prefix)


_DECODER_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3_text",
        "phi",
        "phi3",
        "gpt2",
        "gpt_neox",
        "gptj",
        "opt",
        "falcon",
        "olmo",
        "olmo2",
        "starcoder2",
        "clip_text_model",
        "siglip_text_model",
        "granite",
        "cohere",
        "stablelm",
    }
)


def _vision_layout(config: Any, prefix: str | None) -> VisionLayout:
    patch = getattr(config, "patch_size", None)
    if patch is None:
        raise ProbeConfigError(
            f"auto_layout: expected a vision config with patch_size, received "
            f"{type(config).__name__}; build a VisionLayout yourself."
        )
    model_type = getattr(config, "model_type", "")
    cls = 0 if "siglip" in model_type else 1
    return VisionLayout(
        patch_size=pair(patch),
        cls_tokens=cls,
        register_tokens=int(getattr(config, "num_register_tokens", 0) or 0),
        prefix=prefix,
    )
