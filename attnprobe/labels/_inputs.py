"""Layouts derived from each forward's inputs: `InputLayout`, `TokenLayout`, `VisionLayout`.

A `ModalityLayout` is fixed when the probe is created (or replaced per batch with
``Probe.set_labels``). An `InputLayout` instead computes the labels of every forward from the
inputs the model is called with — ``input_ids`` against an image token, ``token_type_ids``,
``mm_token_type_ids``, ``attention_mask`` padding, the shape of ``pixel_values`` — in a forward
pre-hook on the probed model. With a KV cache (``model.generate``) the labels of the new tokens
are appended to those of the cached ones, so cached keys keep their groups while decoding
(``docs/concepts/layouts.md``).

`attnprobe.auto_layout` picks and configures one of these for a model it knows (the rules of
each model family live with its adapter in `attnprobe.capture`). Subclass `InputLayout` for
other input conventions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from attnprobe.errors import ModalityLayoutError, ProbeConfigError
from attnprobe.labels._layout import IGNORE, ModalityLayout, check_names

__all__ = ["FrameLayout", "InputLayout", "TokenLayout", "VisionLayout"]


def _argument(args: tuple[Any, ...], kwargs: Mapping[str, Any], name: str, position: int) -> Any:
    if name in kwargs:
        return kwargs[name]
    if len(args) > position:
        return args[position]
    return None


class InputLayout:
    """Group labels computed from the inputs of each forward of the probed model.

    Pass an instance as ``probe(model, modalities=...)``; the probe calls `labels` in a forward
    pre-hook on ``model`` before every forward. Subclasses set `names` and implement
    `labels`; `past_length` and `layers` have defaults for HuggingFace-style models.

    Examples:
        Labels from a modality-id tensor that the model receives as a keyword:

        >>> import torch, attnprobe as ap
        >>> from torch import nn
        >>> class FromIds(ap.InputLayout):
        ...     names = ("audio", "video")
        ...     def labels(self, args, kwargs):
        ...         return kwargs["modality_ids"]  # (B, L), -1 = padding
        >>> class Model(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        ...     def forward(self, x, modality_ids):
        ...         return self.attn(x, x, x)[0]
        >>> model = Model()
        >>> ids = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
        >>> with ap.probe(model, modalities=FromIds()) as p:
        ...     _ = model(torch.randn(2, 5, 8), modality_ids=ids)
        >>> p.result().layers[0].num_queries.tolist()
        [3.0, 7.0]
    """

    names: tuple[str, ...] = ()
    """Group names, fixed for the life of the probe."""

    source: str | None = None
    """Path of the submodule whose forward inputs `labels` reads (e.g. ``"model.decoder"`` for
    the decoder sequence of an encoder–decoder); None: the probed model itself."""

    def labels(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
        """``[B, L]`` labels of the tokens this forward adds (``-1`` = ignored): the whole
        sequence, or only the new tokens when `past_length` is non-zero. None: this forward
        does not carry the sequence (the labels of the previous one stay)."""
        raise NotImplementedError(f"{type(self).__name__} must implement labels(args, kwargs)")

    def past_length(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        """Tokens already in the model's KV cache before this forward (0 without a cache).

        The default reads ``get_seq_length()`` of the HuggingFace cache passed as ``cache``
        (transformers ≥ 5.2x) or ``past_key_values``."""
        for name in ("cache", "past_key_values"):
            cache = kwargs.get(name)
            if cache is not None and hasattr(cache, "get_seq_length"):
                return int(cache.get_seq_length())
        return 0

    prefix: str | None = None
    """Module path under which the attention modules see this sequence (None: all of them)."""

    def layers(self, name: str, module: nn.Module) -> bool:
        """Which attention modules see the sequence these labels describe (used when the probe
        is created with ``layers=None``); default: those under `prefix`, or all of them."""
        prefix = self.prefix
        return prefix is None or name == prefix or name.startswith(prefix + ".")

    def __call__(self, *args: Any, **kwargs: Any) -> ModalityLayout:
        """The labels of one batch as a per-sample `ModalityLayout` (call it with the forward
        arguments of the module it reads, `source`)."""
        labels = self.labels(args, kwargs)
        if labels is None:
            raise ModalityLayoutError(
                f"{type(self).__name__}: these inputs do not carry the sequence it labels."
            )
        return ModalityLayout.from_labels(labels, self.names)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(groups={', '.join(self.names)})"


class TokenLayout(InputLayout):
    """Labels of a token sequence from HuggingFace-style inputs (text and vision-language
    models). Build it with `auto_layout` or directly.

    Every non-padding token gets one group, in this order of precedence:

    1. ``attention_mask == 0`` → ignored (left or right padding);
    2. ``special`` (``"cls"``/``"bos"``): the first non-padding token of each sample, when
       ``special_first`` is set, or when it equals ``special_token_id``;
    3. ``mm_token_type_ids`` (Qwen-VL, GLM-4V style): 1 → ``"image"``, 2 → ``"video"``;
    4. ``input_ids == image_token_id`` → ``"image"``; ``== video_token_id`` → ``"video"``;
       ``== audio_token_id`` → ``"audio"``; a non-zero ``image_mask_argument`` (Kosmos-2's
       ``image_embeds_position_mask``) → ``"image"``
       (counts may differ per sample: nothing is assumed about them);
    5. ``input_ids == sep_token_id`` → ``"sep"`` (when given);
    6. ``token_type_ids`` (sentence pairs): 0 → ``"segment_a"``, 1 → ``"segment_b"``;
    7. otherwise ``"text"`` (or the name given as ``text``).

    Groups that cannot occur with the given options are left out of `names`.

    Args:
        image_token_id: id of the image placeholder token (LLaVA-style models).
        video_token_id: id of the video placeholder token.
        audio_token_id: id of the audio placeholder token (audio-language models).
        image_mask_argument: name of a ``[B, L]`` forward argument whose non-zero entries mark
            the positions the model writes image features to (Kosmos-2's
            ``image_embeds_position_mask``), whatever the token ids there.
        segments: label sentence pairs by ``token_type_ids``.
        mm_token_types: read ``mm_token_type_ids`` (Qwen-VL style) instead of token ids.
        special: name of the first-token group (``"cls"``, ``"bos"``) or None for none.
        special_first: the first non-padding token is always ``special`` (encoders with CLS).
        special_token_id: otherwise, only a first token equal to this id is ``special``.
        prefix: only attention modules under this module path see this sequence (the language
            model of a vision-language model); None = all.
        source: read the inputs of this submodule's forward instead of the model's (the decoder
            of an encoder–decoder, `InputLayout.source`).
        ids_argument: name and position of the token ids among the forward's arguments.
        mask_argument: name of the padding mask argument.
        text: the name of the text group (e.g. ``"source"`` for an encoder's tokens).
        sep_token_id: give separator tokens (``[SEP]``) a group of their own, ``sep`` (where
            attention sinks are looked for); default: they count as text.

    Examples:
        >>> import torch, attnprobe as ap
        >>> layout = ap.labels.TokenLayout(image_token_id=9, special="bos", special_token_id=1)
        >>> layout.names
        ('bos', 'text', 'image')
        >>> ids = torch.tensor([[0, 1, 9, 9, 5], [1, 5, 9, 9, 9]])
        >>> mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
        >>> layout(input_ids=ids, attention_mask=mask).labels(2, 5).tolist()
        [[-1, 0, 2, 2, 1], [0, 1, 2, 2, 2]]
    """

    def __init__(
        self,
        *,
        image_token_id: int | None = None,
        video_token_id: int | None = None,
        audio_token_id: int | None = None,
        segments: bool = False,
        mm_token_types: bool = False,
        special: str | None = None,
        special_first: bool = False,
        special_token_id: int | None = None,
        prefix: str | None = None,
        source: str | None = None,
        ids_argument: tuple[str, int] = ("input_ids", 0),
        mask_argument: str = "attention_mask",
        text: str = "text",
        sep_token_id: int | None = None,
        image_mask_argument: str | None = None,
    ) -> None:
        media = (image_token_id, video_token_id, audio_token_id, image_mask_argument)
        if segments and (any(t is not None for t in media) or mm_token_types):
            raise ProbeConfigError(
                "TokenLayout: expected either sentence segments (token_type_ids) or image "
                "tokens, received both; pick the one the model's inputs carry."
            )
        names: list[str] = []
        if special is not None:
            names.append(special)
        if sep_token_id is not None:
            names.append("sep")
        if segments:
            names += ["segment_a", "segment_b"]
        else:
            names.append(text)
            if image_token_id is not None or image_mask_argument is not None or mm_token_types:
                names.append("image")
            if video_token_id is not None or mm_token_types:
                names.append("video")
            if audio_token_id is not None:
                names.append("audio")
        self.names = check_names(names, "TokenLayout")
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id
        self.audio_token_id = audio_token_id
        self.image_mask_argument = image_mask_argument
        self.segments = segments
        self.mm_token_types = mm_token_types
        self.special = special
        self.special_first = special_first
        self.special_token_id = special_token_id
        self.prefix = prefix
        self.source = source
        self.ids_argument = ids_argument
        self.mask_argument = mask_argument
        self.text = text
        self.sep_token_id = sep_token_id

    @property
    def _text_only(self) -> bool:
        """Whether every token this layout labels is text (no group depends on the ids)."""
        return self.names == (self.text,)

    def labels(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        ids = _argument(args, kwargs, *self.ids_argument)
        embeds = kwargs.get("inputs_embeds")
        if ids is None and isinstance(embeds, Tensor) and embeds.dim() == 3 and self._text_only:
            # one group: the ids are not needed, only the length and the padding mask
            ids = torch.zeros(embeds.shape[:2], dtype=torch.long)  # (B, L)
        if not isinstance(ids, Tensor) or ids.dim() != 2:
            raise ModalityLayoutError(
                f"TokenLayout: expected the {'model' if self.source is None else self.source!r} "
                f"to be called with {self.ids_argument[0]} of shape [B, L], "
                f"received {type(ids).__name__}"
                + (f" of shape {list(ids.shape)}" if isinstance(ids, Tensor) else "")
                + "; with inputs_embeds, pass labels with probe.set_labels or a ModalityLayout."
            )
        ids = ids.detach().cpu()
        batch, length = ids.shape
        index = {name: i for i, name in enumerate(self.names)}
        if self.segments:
            types = kwargs.get("token_type_ids")
            if types is None:
                labels = torch.full((batch, length), index["segment_a"], dtype=torch.long)
            else:
                types = types.detach().cpu().long()  # (B, L)
                labels = torch.where(types > 0, index["segment_b"], index["segment_a"])
        else:
            labels = torch.full((batch, length), index[self.text], dtype=torch.long)  # (B, L)
            if self.image_token_id is not None:
                labels[ids == self.image_token_id] = index["image"]
            if self.video_token_id is not None:
                labels[ids == self.video_token_id] = index["video"]
            if self.audio_token_id is not None:
                labels[ids == self.audio_token_id] = index["audio"]
            if self.image_mask_argument is not None:
                marked = self._image_positions(kwargs, batch, length)  # (B, L) or None
                if marked is not None:
                    labels[marked] = index["image"]
            if self.mm_token_types and kwargs.get("mm_token_type_ids") is not None:
                # the model's own token types win over placeholder ids: GLM-4V marks video
                # frames with the image placeholder and type 2
                types = kwargs["mm_token_type_ids"].detach().cpu().long()  # (B, L)
                labels[types == 1] = index["image"]
                labels[types == 2] = index["video"]
        if self.sep_token_id is not None:
            labels[ids == self.sep_token_id] = index["sep"]
        mask = kwargs.get(self.mask_argument)
        keep = torch.ones(batch, length, dtype=torch.bool)  # (B, L)
        if isinstance(mask, Tensor) and mask.dim() == 2:
            keep = mask.detach().cpu()[:, -length:] != 0  # (B, L): the new tokens' columns
        if self.special is not None and self.past_length(args, kwargs) == 0:
            first = keep.long().argmax(dim=1)  # (B,) first non-padding position
            rows = torch.arange(batch)
            is_special = keep[rows, first]  # (B,)
            if not self.special_first:
                token = self.special_token_id
                is_special = is_special & (
                    ids[rows, first] == token if token is not None else False
                )
            labels[rows[is_special], first[is_special]] = index[self.special]
        labels[~keep] = IGNORE
        return labels

    def _image_positions(self, kwargs: dict[str, Any], batch: int, length: int) -> Tensor | None:
        """``[B, L]`` where the ``image_mask_argument`` of this forward is non-zero (its last
        ``L`` columns: the new tokens'); None when the forward was called without it (decoding
        steps after the first, where the model inserts no image features)."""
        name = self.image_mask_argument
        assert name is not None
        marks = kwargs.get(name)
        if marks is None:
            return None
        if (
            not isinstance(marks, Tensor)
            or marks.dim() != 2
            or marks.shape[0] != batch
            or marks.shape[1] < length
        ):
            raise ModalityLayoutError(
                f"TokenLayout: expected {name} of shape [B, L] = [{batch}, {length}] (or longer, "
                f"over cached tokens too), received {type(marks).__name__}"
                + (f" of shape {list(marks.shape)}" if isinstance(marks, Tensor) else "")
                + f"; pass {name} with one column per token of input_ids."
            )
        return marks.detach().cpu()[:, -length:] != 0  # (B, L)


class VisionLayout(InputLayout):
    """Labels of a Vision Transformer's token sequence: prefix tokens (CLS, a distillation
    token, registers) then patches, with the number of patches read from each batch's image
    size. Each kind of prefix token is a group of its own: attention sinks are looked for
    there.

    Args:
        patch_size: ``(height, width)`` of a patch in pixels.
        cls_tokens: number of class tokens before the patches (0 for SigLIP-style models).
        register_tokens: number of register tokens after the class (and distillation) tokens.
        distillation_tokens: number of distillation tokens right after the class token (DeiT:
            1), the group ``distillation``.
        prefix: only attention modules under this module path see this sequence; None = all.
        image_argument: name (and position) of the image argument of the model's forward.
        source: read the inputs of this submodule's forward instead of the model's.

    Examples:
        >>> import torch, attnprobe as ap
        >>> layout = ap.labels.VisionLayout(patch_size=(16, 16), cls_tokens=1, register_tokens=2)
        >>> layout.names
        ('cls', 'registers', 'patches')
        >>> layout(torch.zeros(1, 3, 32, 48)).labels(1, 9).tolist()
        [[0, 1, 1, 2, 2, 2, 2, 2, 2]]
    """

    def __init__(
        self,
        *,
        patch_size: int | Sequence[int],
        cls_tokens: int = 1,
        register_tokens: int = 0,
        prefix: str | None = None,
        image_argument: tuple[str, int] = ("pixel_values", 0),
        source: str | None = None,
        distillation_tokens: int = 0,
    ) -> None:
        size = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ProbeConfigError(
                f"VisionLayout: expected patch_size as a positive int or (height, width), "
                f"received {patch_size!r}."
            )
        self.patch_size = (int(size[0]), int(size[1]))
        self.cls_tokens = cls_tokens
        self.register_tokens = register_tokens
        self.prefix = prefix
        self.source = source
        self.image_argument = image_argument
        self.distillation_tokens = distillation_tokens
        names = (
            (["cls"] if cls_tokens else [])
            + (["distillation"] if distillation_tokens else [])
            + (["registers"] if register_tokens else [])
        )
        self.names = check_names([*names, "patches"], "VisionLayout")

    def labels(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        image = _argument(args, kwargs, *self.image_argument)
        if not isinstance(image, Tensor) or image.dim() != 4:
            raise ModalityLayoutError(
                f"VisionLayout: expected images of shape [B, C, H, W] as argument "
                f"{self.image_argument[0]!r}, received {type(image).__name__}"
                + (f" of shape {list(image.shape)}" if isinstance(image, Tensor) else "")
                + "."
            )
        batch, _, height, width = image.shape
        grid = (height // self.patch_size[0]) * (width // self.patch_size[1])
        counts = {
            "cls": self.cls_tokens,
            "distillation": self.distillation_tokens,
            "registers": self.register_tokens,
            "patches": grid,
        }
        return ModalityLayout({n: counts[n] for n in self.names}).labels(
            batch, sum(counts[n] for n in self.names)
        )  # (B, L)


class FrameLayout(InputLayout):
    """One group over the frames of a feature sequence (an audio encoder's input, the patch rows
    of a Pix2Struct-style image encoder), with the number of frames read from each batch:
    ``ceil(T / stride)`` for features ``[B, C, T]``. Frames marked as padding are ignored.

    Args:
        name: the group name (``"audio"``, ``"image"``).
        stride: the encoder's downsampling of the time axis (Whisper: 2).
        argument: name and position of the features among the forward's arguments.
        axis: the time axis of the features.
        source: read the inputs of this submodule's forward (e.g. the encoder).
        prefix: only attention modules under this module path see this sequence.
        mask_argument: name of a ``[B, ceil(T / stride)]`` padding mask among the forward's
            arguments (0 = padding), used when the forward receives one.
        zero_padding: without that mask, frames whose features sum to zero are padding, as
            Pix2Struct and Kosmos-2.5 mask their zero-padded ``flattened_patches``
            (``stride`` must be 1).

    Examples:
        >>> import torch, attnprobe as ap
        >>> layout = ap.labels.FrameLayout("audio", stride=2)
        >>> layout(input_features=torch.zeros(2, 8, 10)).labels(2, 5).tolist()[0]
        [0, 0, 0, 0, 0]

        Patch rows ``[B, N, D]`` padded with rows of zeros:

        >>> rows = ap.labels.FrameLayout(
        ...     "image", argument=("flattened_patches", 0), axis=1, zero_padding=True
        ... )
        >>> patches = torch.ones(1, 4, 6)
        >>> patches[:, 3] = 0
        >>> rows(flattened_patches=patches).labels(1, 4).tolist()
        [[0, 0, 0, -1]]
    """

    def __init__(
        self,
        name: str = "audio",
        *,
        stride: int = 1,
        argument: tuple[str, int] = ("input_features", 0),
        axis: int = -1,
        source: str | None = None,
        prefix: str | None = None,
        mask_argument: str | None = None,
        zero_padding: bool = False,
    ) -> None:
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ProbeConfigError(
                f"FrameLayout: expected a positive int stride, received {stride!r}."
            )
        if zero_padding and stride != 1:
            raise ProbeConfigError(
                f"FrameLayout: zero_padding reads one frame per row of the features, expected "
                f"stride 1, received {stride}; pass mask_argument for a downsampling encoder."
            )
        self.names = check_names([name], "FrameLayout")
        self.stride = stride
        self.argument = argument
        self.axis = axis
        self.source = source
        self.prefix = prefix
        self.mask_argument = mask_argument
        self.zero_padding = zero_padding

    def labels(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
        features = _argument(args, kwargs, *self.argument)
        if features is None:
            return None  # e.g. an encoder–decoder called with cached encoder outputs
        if not isinstance(features, Tensor) or features.dim() < 2:
            raise ModalityLayoutError(
                f"FrameLayout: expected features of shape [B, ..., T] as argument "
                f"{self.argument[0]!r}, received {type(features).__name__}"
                + (f" of shape {list(features.shape)}" if isinstance(features, Tensor) else "")
                + "."
            )
        batch = features.shape[0]
        frames = -(-features.shape[self.axis] // self.stride)  # ceil(T / stride)
        labels = torch.zeros(batch, frames, dtype=torch.long)  # (B, L)
        mask = None if self.mask_argument is None else kwargs.get(self.mask_argument)
        if mask is not None:
            if not isinstance(mask, Tensor) or tuple(mask.shape) != (batch, frames):
                raise ModalityLayoutError(
                    f"FrameLayout: expected {self.mask_argument} of shape [B, frames] = "
                    f"[{batch}, {frames}], received {type(mask).__name__}"
                    + (f" of shape {list(mask.shape)}" if isinstance(mask, Tensor) else "")
                    + f"; pass a padding mask with one column per frame of {self.argument[0]}."
                )
            labels[mask.detach().cpu() == 0] = IGNORE
        elif self.zero_padding:
            rows = features.detach().movedim(self.axis, 1)  # (B, T, ...)
            sums = rows.flatten(2).sum(dim=-1) if rows.dim() > 2 else rows  # (B, T)
            labels[(sums == 0).cpu()] = IGNORE  # the encoder's own padding test
        return labels
