"""The layouts of HuggingFace models: which rules read which config attributes.

`hf_layout` configures a generic `attnprobe.labels.TokenLayout` or `VisionLayout` from a model's
config (``text_config``, ``vision_config``, ``image_token_id``, ``model_type``, …);
`HuggingFaceAdapter.default_layout` answers `attnprobe.auto_layout` with it. Nothing here
imports ``transformers``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from torch import nn

from attnprobe.capture._base import adapter_for
from attnprobe.capture._pooling import pooling_layouts
from attnprobe.errors import ProbeConfigError
from attnprobe.labels import (
    InputLayout,
    LayerLayouts,
    ModalityLayout,
    TokenLayout,
    VisionLayout,
)

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


def hf_layout(model: nn.Module, tower: str | None) -> InputLayout | LayerLayouts | None:
    """The layouts of a HuggingFace model's sequences (None: not an HF model); rules in
    `attnprobe.auto_layout`."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return None
    if getattr(config, "is_encoder_decoder", False) and tower is None:
        layouts = _encoder_decoder_layouts(model, config)
        if layouts is not None:
            return layouts
    text_config = getattr(config, "text_config", None)
    vision_config = getattr(config, "vision_config", None)
    audio_config = getattr(config, "audio_config", None)
    image_token = _token(config, "image")
    video_token = _token(config, "video")
    audio_token = _token(config, "audio")
    multimodal_tokens = any(t is not None for t in (image_token, video_token, audio_token))
    if text_config is not None and (vision_config is not None or audio_config is not None):
        vision_prefix = _find(model, _VISION_TOWERS)
        if tower == "vision":
            if vision_config is None:
                raise ProbeConfigError(
                    f"auto_layout: {type(model).__name__} has no vision tower; expected "
                    "tower='text' or None."
                )
            return pooling_layouts(model, _vision_layout(vision_config, vision_prefix))
        prefix = _find(model, ("language_model", "text_model", "text_encoder"))
        if multimodal_tokens:
            return TokenLayout(
                image_token_id=image_token,
                video_token_id=video_token,
                audio_token_id=audio_token,
                mm_token_types=_mm_token_types(model),
                special="bos",
                special_token_id=_bos(text_config)
                if _bos(text_config) is not None
                else _bos(config),
                prefix=prefix,
            )
        text = _text_layout(text_config, prefix)
        if tower == "text" or vision_config is None:
            return text
        # a dual encoder (CLIP, SigLIP): both towers, each on its own sequence
        vision = pooling_layouts(model, _vision_layout(vision_config, vision_prefix))
        towers: dict[object, object] = {text.layers: text}
        if isinstance(vision, LayerLayouts):
            towers.update(dict(vision.queries))
            return LayerLayouts(towers, dict(vision.keys))
        towers[vision.layers] = vision
        return LayerLayouts(towers)
    if tower == "text" or (tower is None and not hasattr(config, "patch_size")):
        return _text_layout(config, None)
    return pooling_layouts(model, _vision_layout(vision_config or config, None))


_VISION_TOWERS = ("vision_model", "vision_tower", "visual", "vision_encoder")


def _token(config: Any, kind: str) -> int | None:
    """The id of the ``kind`` (image, video, audio) placeholder token, if the config has one."""
    for name in (f"{kind}_token_id", f"{kind}_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _mm_token_types(model: nn.Module) -> bool:
    """Whether the model's forward takes ``mm_token_type_ids`` (Qwen-VL style)."""
    try:
        return "mm_token_type_ids" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _path_of(model: nn.Module, part: nn.Module | None) -> str | None:
    if part is None:
        return None
    return next((path for path, m in model.named_modules() if m is part and path), None)


def _part(model: nn.Module, getter: str) -> nn.Module | None:
    get = getattr(model, getter, None)
    if not callable(get):
        return None
    try:
        part = get()
    except (AttributeError, NotImplementedError, TypeError):
        return None
    return part if isinstance(part, nn.Module) else None


def _encoder_decoder_layouts(model: nn.Module, config: Any) -> LayerLayouts | None:
    """An encoder–decoder's three kinds of layers: the encoder's self-attention (audio frames
    or source tokens), the decoder's self-attention (target tokens, following the KV cache)
    and the cross-attention (decoder queries × encoder keys); None when the model does not
    say where its encoder and decoder are."""
    encoder_path = _path_of(model, _part(model, "get_encoder"))
    decoder_path = _path_of(model, _part(model, "get_decoder"))
    if encoder_path is None or decoder_path is None:
        return None
    if decoder_path == encoder_path or encoder_path.startswith(decoder_path + "."):
        # get_decoder() gave the whole encoder–decoder: its decoder is the encoder's sibling
        parent = encoder_path.rsplit(".", 1)[0] + "." if "." in encoder_path else ""
        decoder_path = parent + "decoder"
        if decoder_path not in dict(model.named_modules()):
            return None
    encoder = model.get_submodule(encoder_path)
    main_input = getattr(encoder, "main_input_name", "input_ids")
    source: InputLayout | ModalityLayout
    if main_input == "input_ids":
        # the encoder's tokens are "source", apart from the decoder's "text"
        source = TokenLayout(text="source", source=encoder_path)
    else:
        # audio frames or image patches: one group, however many the encoder makes of them
        source = ModalityLayout.uniform("image" if main_input == "pixel_values" else "audio")
    start = getattr(config, "decoder_start_token_id", None)
    target = TokenLayout(
        special="start" if isinstance(start, int) else None,
        special_token_id=start if isinstance(start, int) else None,
        source=decoder_path,
    )
    encoder_layers = f"{encoder_path}.*"
    decoder_layers = f"{decoder_path}.*"
    queries: dict[object, object] = {decoder_layers: target}
    if any(adapter_for(m) is not None for m in encoder.modules()):  # not a CNN encoder
        queries = {encoder_layers: source, **queries}
    return LayerLayouts(queries, keys={decoder_layers: source})


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
        distillation_tokens=int(model_type == "deit"),
        register_tokens=int(getattr(config, "num_register_tokens", 0) or 0),
        prefix=prefix,
    )
