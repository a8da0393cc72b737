"""`auto_layout`: the token layout of a model attnprobe knows, from what the model is.

Each adapter knows the models of its family (`Adapter.default_layout`): the HuggingFace adapter
reads a model's config, the timm adapter a Vision Transformer's patch embedding and prefix
tokens; `auto_layout` asks them in registration order.
"""

from __future__ import annotations

from torch import nn

from attnprobe.capture._base import adapters
from attnprobe.errors import ProbeConfigError
from attnprobe.labels import InputLayout, LayerLayouts

__all__ = ["auto_layout"]


def auto_layout(model: nn.Module, *, tower: str | None = None) -> InputLayout | LayerLayouts:
    """The layout of a HuggingFace or timm model's token sequence, derived from its inputs.

    - timm Vision Transformers and HF vision models (ViT, DINOv2, CLIP/SigLIP vision):
      `VisionLayout` — ``cls`` and ``registers`` (when the model has them) vs ``patches``.
    - HF text models: `TokenLayout` — ``cls`` for encoders (BERT-like; with
      ``segment_a``/``segment_b`` from ``token_type_ids`` when the model has token types),
      ``bos`` for decoders whose first token is the BOS token, ``text``; padding ignored.
    - HF vision-language models (LLaVA-style ``image_token_id``, Qwen-VL-style
      ``mm_token_type_ids``): the language model's sequence — ``bos``, ``text``, ``image``
      (and ``video``) — and, by default, only the language model's attention layers.
    - HF vision-language and audio-language models: image, video and audio placeholder
      tokens (``image_token_id``, ``video_token_id``, ``audio_token_id``) and
      ``mm_token_type_ids`` give the ``image``/``video``/``audio`` groups; so do models
      without a vision tower whose patches enter the language model at the placeholders
      (Fuyu), and Kosmos-2 / Kosmos-2.5, whose ``image_embeds_position_mask`` says where the
      image features go.
    - Dual encoders (CLIP, SigLIP): both towers, each with its layout (`LayerLayouts`);
      ``tower="text"`` or ``tower="vision"`` picks one.
    - Encoder–decoders (Whisper, T5, BART, Pix2Struct): `LayerLayouts` — the encoder's
      self-attention over ``audio`` frames, ``image`` patches or ``source`` tokens, the
      decoder's over ``start``/``text`` (following its KV cache), and the cross-attention:
      decoder queries over the encoder's keys.
    - Pix2Struct-style image encoders (``flattened_patches``: Pix2Struct, Kosmos-2.5's vision
      tower): `FrameLayout` — one ``image`` group over the patch rows, the zero-padded rows
      the encoder masks ignored.
    - Vision towers with an attention-pooling head (SigLIP, AIMv2, timm ``global_pool="map"``):
      the head's learned query is a group of its own, ``pool``, over the tower's keys.
    - DeiT's distillation token is the group ``distillation``, registers ``registers``.

    Args:
        model: the model the probe is attached to (its forward receives the inputs).
        tower: ``"text"`` or ``"vision"`` for models with both; default: the language model
            of a vision-language model.

    Returns:
        An `InputLayout` (one sequence; calling it on a batch, ``layout(**inputs)``, gives that
        batch's `ModalityLayout`) or a `LayerLayouts` (several sequences), to pass as
        ``probe(model, modalities=...)``.

    Raises:
        ProbeConfigError: the model's inputs are not recognised, or a dual encoder without
            ``tower``.

    Examples:
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
    for adapter in adapters():
        layout = adapter.default_layout(model, tower=tower)
        if layout is not None:
            return layout
    raise ProbeConfigError(
        f"auto_layout: expected a HuggingFace transformers model or a timm Vision "
        f"Transformer, received {type(model).__name__}; build a ModalityLayout or subclass "
        "attnprobe.InputLayout for other models."
    )
