"""`auto_layout`: the token layout of a HuggingFace or timm model, from what the model is.

The rules read each family's attributes (a timm ViT's ``patch_embed`` and
``num_prefix_tokens``, an HF config's ``text_config``, ``vision_config``,
``image_token_id``, ``model_type``) and configure a generic `attnprobe.labels.InputLayout`.
Nothing here imports ``transformers`` or ``timm``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from attnprobe._errors import ProbeConfigError
from attnprobe.labels import InputLayout, TokenLayout, VisionLayout

__all__ = ["auto_layout"]


def _find(model: nn.Module, names: Sequence[str]) -> str | None:
    """Path of the first submodule whose last path component is one of ``names``."""
    for path, _ in model.named_modules():
        if path.rsplit(".", 1)[-1] in names:
            return str(path)
    return None


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


def auto_layout(model: nn.Module, *, tower: str | None = None) -> InputLayout:
    """The layout of a HuggingFace or timm model's token sequence, derived from its inputs.

    - timm Vision Transformers and HF vision models (ViT, DINOv2, CLIP/SigLIP vision):
      `VisionLayout` — ``cls`` and ``registers`` (when the model has them) vs ``patches``.
    - HF text models: `TokenLayout` — ``cls`` for encoders (BERT-like; with
      ``segment_a``/``segment_b`` from ``token_type_ids`` when the model has token types),
      ``bos`` for decoders whose first token is the BOS token, ``text``; padding ignored.
    - HF vision-language models (LLaVA-style ``image_token_id``, Qwen-VL-style
      ``mm_token_type_ids``): the language model's sequence — ``bos``, ``text``, ``image``
      (and ``video``) — and, by default, only the language model's attention layers.
    - Dual encoders (CLIP, SigLIP): pick ``tower="text"`` or ``tower="vision"``; to watch
      both, use two probes.

    Args:
        model: the model the probe is attached to (its forward receives the inputs).
        tower: ``"text"`` or ``"vision"`` for models with both; default: the language model
            of a vision-language model.

    Returns:
        An `InputLayout` to pass as ``probe(model, modalities=...)``; calling it on a batch
        (``layout(**inputs)``) gives that batch's `ModalityLayout`.

    Raises:
        ProbeConfigError: the model's inputs are not recognised, or a dual encoder without
            ``tower``.

    Example:
        >>> import torch, attnprobe as ap
        >>> from transformers import BertConfig, BertModel
        >>> bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1,
        ...                             num_attention_heads=2, intermediate_size=64))
        >>> layout = ap.auto_layout(bert)
        >>> layout.names
        ('cls', 'segment_a', 'segment_b')
        >>> ids = torch.tensor([[101, 7, 8, 102, 9, 102]])
        >>> types = torch.tensor([[0, 0, 0, 0, 1, 1]])
        >>> with ap.probe(bert, modalities=layout) as p:
        ...     _ = bert(input_ids=ids, token_type_ids=types)
        >>> p.result().layers[0].num_queries.tolist()
        [1.0, 3.0, 2.0]
    """
    if tower not in (None, "text", "vision"):
        raise ProbeConfigError(
            f"auto_layout: expected tower 'text', 'vision' or None, received {tower!r}."
        )
    if hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens"):  # timm ViT
        vit: Any = model
        registers = int(getattr(vit, "num_reg_tokens", 0))
        cls = int(vit.num_prefix_tokens) - registers
        return VisionLayout(
            patch_size=_pair(vit.patch_embed.patch_size),
            cls_tokens=cls,
            register_tokens=registers,
            image_argument=("x", 0),
        )
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise ProbeConfigError(
            f"auto_layout: expected a HuggingFace transformers model or a timm Vision "
            f"Transformer, received {type(model).__name__}; build a ModalityLayout or subclass "
            "attnprobe.InputLayout for other models."
        )
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
        patch_size=_pair(patch),
        cls_tokens=cls,
        register_tokens=int(getattr(config, "num_register_tokens", 0) or 0),
        prefix=prefix,
    )
