"""The layouts of HuggingFace models: which rules read which config attributes.

`hf_layout` configures a generic `attnprobe.labels.TokenLayout`, `VisionLayout` or
`FrameLayout` from a model's config (``text_config``, ``vision_config``, ``image_token_id``,
``model_type``, …) and the argument names of its forward (``mm_token_type_ids``,
``image_embeds_position_mask``, ``flattened_patches``);
`HuggingFaceAdapter.default_layout` answers `attnprobe.auto_layout` with it. Nothing here
imports ``transformers``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from attnprobe.capture._base import adapter_for
from attnprobe.capture._pooling import pooling_layouts
from attnprobe.errors import ModalityLayoutError, ProbeConfigError
from attnprobe.labels import (
    IGNORE,
    FrameLayout,
    InputLayout,
    LayerLayouts,
    MergedKeys,
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
    layout = _hf_layout(model, tower)
    if isinstance(layout, InputLayout) and tower != "vision":
        return _with_canvas(model, layout) or _with_cross_keys(model, layout)
    return layout


class _Canvas(TokenLayout):
    """The tokens of a decoder that reads another sequence's KV cache without adding to it (a
    block-diffusion decoder's canvas over its encoder's cache): none of the cached tokens are
    its own, so its labels never follow the cache."""

    def past_length(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        return 0


def _with_canvas(model: nn.Module, layout: InputLayout) -> LayerLayouts | None:
    """``layout`` with the layers of a block-diffusion decoder (DiffusionGemma): a decoder
    outside ``layout``'s layers, called with ``decoder_input_ids`` and the encoder's ``cache``
    (no ``encoder_hidden_states``), whose attention reads the cached keys then its own
    (``append_to_cache``): queries ``canvas``, keys ``layout``'s tokens then the canvas
    (`MergedKeys`, own tokens last). None for any other model."""
    decoder = _part(model, "get_decoder")
    path = _path_of(model, decoder)
    if decoder is None or path is None or layout.layers(path, decoder):
        return None
    if not (_takes(decoder, "decoder_input_ids") and _takes(decoder, "cache")):
        return None
    if _takes(decoder, "encoder_hidden_states"):
        return None
    canvas = _Canvas(
        text="canvas",
        source=path,
        prefix=path,
        ids_argument=("decoder_input_ids", _position(decoder, "decoder_input_ids")),
        mask_argument="decoder_attention_mask",
    )
    return LayerLayouts(
        {canvas.layers: canvas, layout.layers: layout},
        keys={canvas.layers: MergedKeys(layout, own="last")},
    )


def _with_cross_keys(model: nn.Module, layout: InputLayout) -> InputLayout | LayerLayouts:
    """``layout``, with the image (or audio) features as the keys of the cross-attention layers
    among its layers (Idefics' gated cross-attention, Mllama's cross-attention layers: text
    queries, keys from the image features — one ``image`` group however many there are), and
    with the learned queries of a projector that reads the features (`_latent_queries`)."""
    config: Any = model.config
    crossing = [
        path
        for path, module in model.named_modules()
        if (adapter := adapter_for(module)) is not None
        and adapter.is_cross_attention(module)
        and layout.layers(path, module)
    ]
    media = [
        kind
        for kind in ("image", "audio")
        if getattr(config, f"{'vision' if kind == 'image' else kind}_config", None) is not None
    ]
    if len(media) != 1:
        return layout
    features = ModalityLayout.uniform(media[0])
    queries, keys = _latent_queries(model, features)
    if not crossing and not queries:
        return layout
    keys.update(dict.fromkeys(crossing, features))
    tower = _find(model, _VISION_TOWERS)
    covers = layout.layers if layout.prefix is not None or tower is None else _Outside(tower)
    return LayerLayouts({**queries, covers: layout}, keys=keys)


class _Outside:
    """Layer selector: every layer but those under ``path`` (a language model's layout on a
    model whose language model has no submodule of its own, beside a vision tower: Idefics)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, name: str, module: nn.Module) -> bool:
        return not (name == self.path or name.startswith(self.path + "."))

    def __repr__(self) -> str:
        return f"outside {self.path!r}"


_LATENT_QUERIES = {"latent_query": "last", "query": None}
"""Learned query parameters of projectors whose attention reads the media features (Kosmos-2's
``latent_query``, whose keys are ``cat([features, latent_query])``: its own tokens last;
Aria's ``query``, over the features only)."""


def _latent_queries(
    model: nn.Module, features: ModalityLayout
) -> tuple[dict[object, object], dict[object, object]]:
    """Query and key layouts of the attention modules under a module that holds learned
    queries (`_LATENT_QUERIES`): one ``latent`` query group, the features as keys (followed by
    the latents where the module appends them)."""
    queries: dict[object, object] = {}
    keys: dict[object, object] = {}
    latent = ModalityLayout.uniform("latent")
    for path, module in model.named_modules():
        for name, own in _LATENT_QUERIES.items():
            if not isinstance(getattr(module, name, None), nn.Parameter):
                continue
            for sub, child in module.named_modules():
                if sub and adapter_for(child) is not None:
                    pattern = f"{path}.{sub}" if path else sub
                    queries[pattern] = latent
                    keys[pattern] = features if own is None else MergedKeys(features, own=own)
            break
    return queries, keys


def _hf_layout(model: nn.Module, tower: str | None) -> InputLayout | LayerLayouts | None:
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
    prefix = _find(model, ("language_model", "text_model", "text_encoder", "text_decoder"))
    # a mask of image positions (Kosmos-2), read from the inputs of the module that consumes
    # it: the text model (which generate calls directly), else the model itself
    masked = [p for p in dict.fromkeys((prefix, None)) if _takes(_module(model, p), _IMAGE_MASK)]
    multimodal_tokens = bool(masked) or any(
        t is not None for t in (image_token, video_token, audio_token)
    )
    if text_config is not None and (
        vision_config is not None or audio_config is not None or multimodal_tokens
    ):
        vision_prefix = _find(model, _VISION_TOWERS)
        if tower == "vision":
            if vision_config is None:
                raise ProbeConfigError(
                    f"auto_layout: {type(model).__name__} has no vision tower (no vision_config: "
                    "its image patches enter the language model directly); expected "
                    "tower='text' or None."
                )
            return pooling_layouts(model, _vision_layout(model, vision_config, vision_prefix))
        if multimodal_tokens:
            source = masked[0] if masked else None
            return TokenLayout(
                image_token_id=image_token,
                video_token_id=video_token,
                audio_token_id=audio_token,
                image_mask_argument=_IMAGE_MASK if masked else None,
                mm_token_types=_mm_token_types(model),
                special="bos",
                special_token_id=_bos(text_config)
                if _bos(text_config) is not None
                else _bos(config),
                prefix=prefix,
                source=source,
                ids_argument=("input_ids", _position(_module(model, source), "input_ids")),
            )
        text = _text_layout(text_config, prefix)
        if tower == "text" or vision_config is None:
            return text
        # a dual encoder (CLIP, SigLIP): both towers, each on its own sequence
        # (BLIP: the text decoder's cross-attention reads the vision tower's tokens)
        vision = pooling_layouts(model, _vision_layout(model, vision_config, vision_prefix))
        towers: dict[object, object] = {text.layers: text}
        keys: dict[object, object] = {}
        tokens: object = vision  # the vision tower's token sequence
        if isinstance(vision, LayerLayouts):
            towers.update(dict(vision.queries))
            keys.update(dict(vision.keys))
            tokens = next(layout for _, layout in vision.keys)  # what the pooling head reads
        else:
            towers[vision.layers] = vision
        if prefix is not None and _takes(_module(model, prefix), "encoder_hidden_states"):
            keys[text.layers] = tokens
        return LayerLayouts(towers, keys or None)
    rows = _patch_rows(model, None)
    if rows is not None and tower != "text":
        return rows  # a Pix2Struct-style vision model on its own
    if tower == "text" or (tower is None and not hasattr(config, "patch_size")):
        text_layout = _text_layout(config, None)
        padded = _padded_to_window(config, text_layout)
        return padded if isinstance(padded, InputLayout) else text_layout
    return pooling_layouts(model, _vision_layout(model, vision_config or config, None))


_VISION_TOWERS = ("vision_model", "vision_tower", "visual", "vision_encoder")

_IMAGE_MASK = "image_embeds_position_mask"
"""The forward argument ``[B, L]`` through which Kosmos-2 and Kosmos-2.5 say where in the token
sequence the image features go (1), whatever the token ids there."""

_PATCH_ROWS = "flattened_patches"
"""The image input of Pix2Struct-style encoders (Pix2Struct, Kosmos-2.5): one row per patch,
``[B, N, 2 + C·p·p]`` (row and column, then the pixels), padded with rows of zeros that the
encoder masks unless it receives an ``attention_mask``."""

_IMAGE_INPUTS = ("pixel_values", _PATCH_ROWS)
"""Main input names of image encoders (which do not declare ``input_modalities``)."""


def _module(model: nn.Module, path: str | None) -> nn.Module:
    return model if not path else model.get_submodule(path)


def _parameters(module: nn.Module) -> list[str]:
    """Argument names of a module's forward (under any decorators), without ``self``."""
    try:
        signature = inspect.signature(inspect.unwrap(type(module).forward))
    except (TypeError, ValueError):
        return []
    return [name for name in signature.parameters if name != "self"]


def _takes(module: nn.Module, argument: str) -> bool:
    """Whether the module's forward has an argument named ``argument``."""
    return argument in _parameters(module)


def _position(module: nn.Module, argument: str) -> int:
    """Position of ``argument`` among the forward's arguments (0 when it has none such)."""
    names = _parameters(module)
    return names.index(argument) if argument in names else 0


def _patch_rows(model: nn.Module, path: str | None, name: str = "image") -> FrameLayout | None:
    """One ``name`` group over the patch rows of the Pix2Struct-style encoder at ``path``
    (None: the model itself), its padding rows ignored as the encoder masks them: read from the
    encoder's own forward, whose ``attention_mask`` (when given) is the patch mask; None when
    the encoder does not take ``flattened_patches``."""
    encoder = _module(model, path)
    if not _takes(encoder, _PATCH_ROWS):
        return None
    return FrameLayout(
        name,
        argument=(_PATCH_ROWS, _position(encoder, _PATCH_ROWS)),
        axis=1,  # (B, N, 2 + C·p·p)
        mask_argument="attention_mask" if _takes(encoder, "attention_mask") else None,
        zero_padding=True,
        source=path or None,
        prefix=path or None,
    )


def _encoder_modality(encoder: nn.Module) -> str:
    """``"image"`` or ``"audio"`` (or what else the encoder declares): the one non-text modality
    of the encoder's ``input_modalities`` (transformers ≥ 5), else read from its main input."""
    declared = getattr(encoder, "input_modalities", None)
    declared = (declared,) if isinstance(declared, str) else tuple(declared or ())
    media = [m for m in declared if isinstance(m, str) and m != "text"]
    if len(media) == 1:
        return media[0]
    main_input = getattr(encoder, "main_input_name", "")
    return "image" if main_input in _IMAGE_INPUTS else "audio"


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


def _ids_argument(decoder: nn.Module) -> tuple[str, int]:
    """Where a decoder's forward receives its token ids: ``input_ids``, else its first argument
    (SpeechT5's text decoder calls them ``input_values``)."""
    names = _parameters(decoder)
    if "input_ids" in names or not names:
        return "input_ids", _position(decoder, "input_ids")
    return names[0], 0


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
    image_token = _token(config, "image")
    if main_input == "input_ids" and image_token is not None:
        # a vision–language encoder (T5Gemma2, Florence-2): image placeholders among the
        # source tokens, read where the ids are: the encoder's forward when it merges the image
        # features itself, else the model's (which merges them before the encoder)
        reader = encoder_path if _takes(encoder, "pixel_values") else None
        source = TokenLayout(
            text="source",
            image_token_id=image_token,
            source=reader,
            ids_argument=("input_ids", _position(_module(model, reader), "input_ids")),
        )
    elif main_input == "input_ids":
        # the encoder's tokens are "source", apart from the decoder's "text"
        source = TokenLayout(text="source", source=encoder_path)
        if all(_takes(encoder, a) for a in ("bbox", "pixel_values")):
            source = _UncoveredPatches.of(encoder, source) or source  # UDOP
    else:
        # audio frames or image patches: one group, however many the encoder makes of them
        # (patch rows: without their padding rows)
        modality = _encoder_modality(encoder)
        source = _patch_rows(model, encoder_path, modality) or ModalityLayout.uniform(modality)
    start = getattr(config, "decoder_start_token_id", None)
    target = TokenLayout(
        special="start" if isinstance(start, int) else None,
        special_token_id=start if isinstance(start, int) else None,
        source=decoder_path,
        ids_argument=_ids_argument(model.get_submodule(decoder_path)),
    )
    encoder_layers = f"{encoder_path}.*"
    decoder_layers = f"{decoder_path}.*"
    # LED pads the encoder's sequence to its attention window (the decoder reads it unpadded)
    encoder_tokens = _padded_to_window(config, source)
    queries: dict[object, object] = {decoder_layers: target}
    streams = _PredictStreams.of(model.get_submodule(decoder_path), target)
    if streams is not None:
        # ProphetNet: the n-gram self-attention's main stream is the target tokens; every
        # other layer of the decoder sees the main stream and the predict streams
        queries = {f"{decoder_layers}.self_attn": target, decoder_layers: streams}
    keys: dict[object, object] = {}
    if any(adapter_for(m) is not None for m in encoder.modules()):  # not a CNN encoder
        queries = {encoder_layers: encoder_tokens, **queries}
    vision = _tower_layouts(model, config) if image_token is not None else None
    if vision is not None:  # first: the tower may sit inside the encoder (T5Gemma2)
        queries = {**dict(vision.queries), **queries}
        keys.update(dict(vision.keys))
    decoder = model.get_submodule(decoder_path)
    merged = any(_takes(m, "merged_attention_mask") for m in decoder.modules())
    # T5Gemma2's decoder attends to its own tokens and the encoder's in one call
    keys[decoder_layers] = MergedKeys(source) if merged else source
    return LayerLayouts(queries, keys=keys)


def _padded_to_window(config: Any, layout: InputLayout | ModalityLayout) -> Any:
    """``layout`` as Longformer-style models (Longformer, LED's encoder) pad the sequence
    before their attention: right-padded with ignored positions to a multiple of
    ``config.attention_window`` (the largest, if one per layer), as their
    ``_pad_to_window_size`` does; ``layout`` itself for other models."""
    window = getattr(config, "attention_window", None)
    if isinstance(window, (list, tuple)) and window:
        window = max(window)
    if not isinstance(window, int) or window < 1 or not isinstance(layout, InputLayout):
        return layout
    return _WindowPadded(layout, window)


class _WindowPadded(InputLayout):
    """The labels of ``tokens``, right-padded with ignored positions to a multiple of
    ``window`` (see `_padded_to_window`)."""

    def __init__(self, tokens: InputLayout, window: int) -> None:
        self.tokens = tokens
        self.window = window
        self.names = tokens.names
        self.source = tokens.source
        self.prefix = tokens.prefix

    def layers(self, name: str, module: nn.Module) -> bool:
        return self.tokens.layers(name, module)

    def past_length(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        return self.tokens.past_length(args, kwargs)

    def labels(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
        labels = self.tokens.labels(args, kwargs)
        if labels is None:
            return None
        padding = -labels.shape[1] % self.window
        return torch.nn.functional.pad(labels, (0, padding), value=IGNORE)  # (B, L + padding)

    def __repr__(self) -> str:
        return f"{self.tokens!r} padded to a multiple of {self.window}"


class _PredictStreams(InputLayout):
    """A ProphetNet decoder's sequence: the main stream (the target tokens) then ``ngram``
    predict streams of as many positions, one after the other, as the decoder concatenates
    them (``torch.cat([hidden_states] + ngram_hidden_states, 1)`` in
    ``transformers.models.prophetnet``): the target's groups, then ``predict`` (padding
    positions ignored in every stream).
    """

    def __init__(self, target: TokenLayout, ngram: int) -> None:
        self.target = target
        self.ngram = ngram
        self.names = (*target.names, "predict")
        self.source = target.source

    @classmethod
    def of(cls, decoder: nn.Module, target: TokenLayout) -> _PredictStreams | None:
        ngram = getattr(decoder, "ngram", None)
        if isinstance(ngram, int) and not isinstance(ngram, bool) and ngram > 0:
            return cls(target, ngram)
        return None

    def past_length(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        return self.target.past_length(args, kwargs)

    def labels(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        main = self.target.labels(args, kwargs)  # (B, L)
        predict = torch.where(main == IGNORE, IGNORE, len(self.target.names))  # (B, L)
        return torch.cat([main] + [predict] * self.ngram, dim=1)  # (B, (1 + ngram) · L)


class _UncoveredPatches(InputLayout):
    """UDOP's encoder sequence: its source tokens, then the image patches that no token's box
    covers, as ``combine_image_text_embeddings`` (``transformers.models.udop``) appends them.

    A token covers the patch its box centre falls in (``floor((x0 + x1) / 2 · n)`` clipped to
    ``[0, n − 1]`` on an ``n × n`` patch grid, likewise ``y``; every token, padding included);
    the ``n² − |covered|`` uncovered patches follow the tokens in patch order, then zero padding
    up to ``n²`` (which the model masks): ``image``, then ignored. Without ``pixel_values`` the
    encoder appends nothing.
    """

    def __init__(self, tokens: TokenLayout, grid: int, positions: dict[str, int]) -> None:
        self.tokens = tokens
        self.grid = grid
        self.positions = positions
        self.names = (*tokens.names, "image")
        self.source = tokens.source
        self.prefix = tokens.source

    @classmethod
    def of(cls, encoder: nn.Module, tokens: TokenLayout) -> _UncoveredPatches | None:
        config = getattr(encoder, "config", None)
        image, patch = getattr(config, "image_size", None), getattr(config, "patch_size", None)
        if not (isinstance(image, int) and isinstance(patch, int) and patch > 0):
            return None
        arguments = ("pixel_values", "image_embeddings", "bbox")
        return cls(tokens, image // patch, {a: _position(encoder, a) for a in arguments})

    def labels(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        text = self.tokens.labels(args, kwargs)  # (B, L)
        pixels, embeddings, boxes = (
            kwargs[a] if a in kwargs else args[i] if i < len(args) else None
            for a, i in self.positions.items()
        )
        if pixels is None and embeddings is None:
            return text
        if not isinstance(boxes, Tensor) or tuple(boxes.shape) != (*text.shape, 4):
            raise ModalityLayoutError(
                f"auto_layout (UDOP): expected bbox of shape [B, L, 4] = "
                f"[{text.shape[0]}, {text.shape[1]}, 4] with the images, received "
                f"{type(boxes).__name__}"
                + (f" of shape {list(boxes.shape)}" if isinstance(boxes, Tensor) else "")
                + "; pass one box per token, as the model does."
            )
        n = self.grid
        boxes = boxes.detach().cpu()
        x = torch.floor((boxes[:, :, 0] + boxes[:, :, 2]) / 2.0 * n).long().clip(0, n - 1)
        y = torch.floor((boxes[:, :, 1] + boxes[:, :, 3]) / 2.0 * n).long().clip(0, n - 1)
        covered = torch.zeros(text.shape[0], n * n, dtype=torch.bool)  # (B, n²)
        covered.scatter_(1, x + y * n, True)
        uncovered = n * n - covered.sum(dim=1, keepdim=True)  # (B, 1)
        appended = torch.where(
            torch.arange(n * n) < uncovered, len(self.tokens.names), IGNORE
        )  # (B, n²): uncovered patches first, then the zero padding
        return torch.cat([text, appended], dim=1)  # (B, L + n²)


def _tower_layouts(model: nn.Module, config: Any) -> LayerLayouts | None:
    """The vision tower's own layouts inside an encoder–decoder (with its pooling head's), or
    None when there is none with attention layers, or none whose layout the config says."""
    path = _find(model, _VISION_TOWERS)
    vision_config = getattr(config, "vision_config", None)
    if path is None or vision_config is None:
        encoder_config = getattr(config, "encoder", None)
        vision_config = getattr(encoder_config, "vision_config", None)
    if path is None or vision_config is None:
        return None
    patch = getattr(vision_config, "patch_size", None)
    if isinstance(patch, (list, tuple)) and len(patch) != 2:
        return None  # one patch size per stage: a hierarchical tower (Florence-2's DaViT)
    try:
        tower = pooling_layouts(model, _vision_layout(model, vision_config, path))
    except ProbeConfigError:  # no patch grid: left out
        return None
    return tower if isinstance(tower, LayerLayouts) else LayerLayouts({tower.layers: tower})


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
        "idefics",
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


def _vision_layout(model: nn.Module, config: Any, prefix: str | None) -> InputLayout:
    """The vision tower's layout: CLS-style prefix tokens and a patch grid read from the image
    size (`VisionLayout`), or the patch rows of a Pix2Struct-style tower (`FrameLayout`)."""
    patch = getattr(config, "patch_size", None)
    if patch is None:
        rows = _patch_rows(model, prefix)
        if rows is not None:
            return rows
        raise ProbeConfigError(
            f"auto_layout: expected a vision config with patch_size or a vision tower that "
            f"takes {_PATCH_ROWS}, received {type(config).__name__}; build a VisionLayout "
            "or an InputLayout yourself."
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
