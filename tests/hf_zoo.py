"""A zoo of tiny HuggingFace ``transformers`` models, enumerated from the installed version.

`families` lists the multimodal and sequence-to-sequence architectures of transformers' auto
mappings at run time (an upgrade of transformers brings its new architectures in), and `build`
makes one of them as a tiny random model (nothing is downloaded) with inputs that run it:

- the config comes from ``AutoConfig.for_model(model_type)``, shrunk generically by
  `shrink_config` (every sub-config: widths, depths, heads, vocabulary, image and audio sizes,
  the lists sized by them; `make_config`), retried with less shrinking (`PROFILES`) when the
  model does not run; a few fields that default configs leave to checkpoints are set in
  `OVERRIDES`;
- inputs are a batch of 2, the first sample left-padded (``attention_mask``), with one image
  or audio clip per sample whose placeholder tokens are counted from the model itself (its
  ``get_image_features`` / ``get_audio_features``, else the count its mismatch error
  reports), and decoder ids for encoder–decoders; the layout of the pixels / features is the
  first of a list of candidates (`_image_candidates`, `_audio_candidates`) the model runs on;
- a model is built when ``model(**inputs)`` runs under both ``eager`` and ``sdpa``; otherwise
  `build` returns a `Skip` with the reason (the first line of the exception of the attempt
  that got furthest, and a `HINTS` note for the known cases).

`eager_calls` / `eager_weights` / `names_by_kind` give the eager reference: the post-softmax
weights ``[B, H, Lq, Lk]`` of every module that dispatches through ``ALL_ATTENTION_FUNCTIONS``,
and whether each call was self- or cross-attention.

Nothing here depends on attnprobe: it is the independent side of the comparison.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import itertools
import math
import re
import signal
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, TypeGuard

import torch
from torch import Tensor, nn

__all__ = [
    "BATCH",
    "Built",
    "Call",
    "Entry",
    "Skip",
    "build",
    "deadline",
    "describe",
    "eager_calls",
    "eager_weights",
    "families",
    "find_entry",
    "first_line",
    "is_hand_attention",
    "is_hf_attention",
    "names_by_kind",
    "shrink_config",
]

BATCH = 2
"""Samples per batch: the first is left-padded by `PAD_LEFT` positions."""
PAD_LEFT = 2

# -- enumeration ---------------------------------------------------------------------------------
_MAPPING_PATTERN = re.compile(
    r"MODEL_FOR_(IMAGE_TEXT_TO_TEXT|VISION_2_SEQ|VIDEO_TEXT_TO_TEXT|AUDIO_TEXT_TO_TEXT"
    r"|MULTIMODAL_LM|SPEECH_SEQ_2_SEQ|SEQ_TO_SEQ_CAUSAL_LM|ANY_TO_ANY)_MAPPING_NAMES"
)
"""The auto mappings swept (whichever of them this transformers version defines)."""


class Entry(NamedTuple):
    """One architecture of one auto mapping."""

    mapping: str
    """The mapping's name in ``transformers.models.auto.modeling_auto``."""
    model_type: str
    class_name: str


def _mapping_names() -> list[str]:
    from transformers.models.auto import modeling_auto

    return sorted(n for n in dir(modeling_auto) if _MAPPING_PATTERN.fullmatch(n))


def families(*, unique: bool = True) -> list[Entry]:
    """The architectures to sweep, read from transformers' auto mappings now.

    Args:
        unique: keep only the first entry of each (model type, class) pair seen in mapping
            order (image-text-to-text first; the multimodal mapping repeats most of it).
    """
    from transformers.models.auto import modeling_auto

    names = _mapping_names()
    # image-text first, then the other multimodal ones, then the rest alphabetically
    # (text seq2seq, then speech seq2seq)
    order = ("IMAGE_TEXT", "VISION_2_SEQ", "VIDEO_TEXT", "AUDIO_TEXT", "MULTIMODAL", "ANY_TO_ANY")
    names.sort(key=lambda n: next((i for i, k in enumerate(order) if k in n), len(order)))
    entries: list[Entry] = []
    seen: set[tuple[str, str]] = set()
    for mapping in names:
        for model_type, class_name in getattr(modeling_auto, mapping).items():
            if isinstance(class_name, (tuple, list)):  # older versions: several classes
                class_name = class_name[0]
            key = (model_type, class_name)
            if unique and key in seen:
                continue
            seen.add(key)
            entries.append(Entry(mapping, model_type, str(class_name)))
    return entries


def find_entry(model_type: str, task: str | None = None) -> Entry:
    """The entry of ``model_type`` in mapping ``task`` (a mapping name, or a part of one such as
    ``"SPEECH"``; None: the first mapping that has it)."""
    for entry in families(unique=False):
        if entry.model_type == model_type and (task is None or task.upper() in entry.mapping):
            return entry
    raise KeyError(f"no architecture {model_type!r} in the mappings {task or _mapping_names()}")


# -- results -------------------------------------------------------------------------------------
def is_banded_attention(module: nn.Module) -> bool:
    """Whether ``module`` is Longformer-style sliding-window attention (Longformer, LED's
    encoder), whose own weights come banded: `longformer_weights` is the reference."""
    return isinstance(getattr(module, "one_sided_attn_window_size", None), int) and hasattr(
        module, "query_global"
    )


def longformer_weights(
    module: nn.Module,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    is_index_masked: Tensor | None = None,
    is_index_global_attn: Tensor | None = None,
    *_: Any,
    **__: Any,
) -> Tensor:
    """Dense post-softmax weights ``[B, H, L, L]`` of a Longformer attention call, written from
    the definition (Beltagy et al. 2020, arXiv 2004.05150, §3.1) on the module's projections:
    a local query attends to the keys within ``w`` positions that are neither padding nor
    global, and to every global key; a global query attends, with the global projections, to
    every key that is not padding; padding rows are zero."""
    batch, length, _ = hidden_states.shape
    heads, size = int(module.num_heads), int(module.head_dim)
    window = int(module.one_sided_attn_window_size)
    pad = is_index_masked if is_index_masked is not None else torch.zeros(batch, length).bool()
    glob = is_index_global_attn if is_index_global_attn is not None else torch.zeros_like(pad)

    def project(name: str) -> Tensor:
        out = getattr(module, name)(hidden_states).view(batch, length, heads, size)
        return out.transpose(1, 2).double()  # (B, H, L, D)

    with torch.no_grad():
        local = project("query") @ project("key").transpose(-1, -2) / size**0.5  # (B, H, L, L)
        wide = project("query_global") @ project("key_global").transpose(-1, -2) / size**0.5
    position = torch.arange(length)
    near = (position[:, None] - position[None, :]).abs() <= window  # (L, L)
    seen = (near & ~glob[:, None, :] & ~pad[:, None, :]) | glob[:, None, :]  # (B, L, L)
    local = torch.softmax(local.masked_fill(~seen[:, None], -torch.inf), -1)
    wide = torch.softmax(wide.masked_fill(pad[:, None, None, :], -torch.inf), -1)
    weights = torch.where(glob[:, None, :, None], wide, local)  # (B, H, L, L)
    return weights.masked_fill(pad[:, None, :, None], 0.0).float()


@dataclasses.dataclass
class Built:
    """A tiny random model, in eval mode, and inputs that run it: ``model(**inputs)``."""

    entry: Entry
    model: nn.Module
    inputs: dict[str, Any]
    kind: str
    """``vlm``, ``audio-lm``, ``text-lm``, ``encoder-decoder``, ``vision-encoder-decoder`` or
    ``speech-seq2seq``."""
    placeholders: dict[str, int]
    """Placeholder tokens per sample in ``input_ids``, by modality (one item per sample)."""
    profile: str
    """Which shrinking of the config ran (`PROFILES`)."""
    seconds: float


@dataclasses.dataclass
class Skip:
    """An architecture the zoo could not build or run, and why (never faked)."""

    entry: Entry
    reason: str
    seconds: float = 0.0


class ZooTimeout(BaseException):
    """Building (or checking) one architecture took longer than its wall-clock cap; a
    ``BaseException`` so that the ``except Exception`` of model code lets it through."""


# -- config shrinking ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Profile:
    """How far `shrink_config` goes; `build` tries `PROFILES` in order until one runs."""

    name: str
    vocab: bool = True
    """Shrink vocabularies (special token ids are remapped below the new size)."""
    geometry: bool = True
    """Shrink image sizes (a 4 x 4 patch grid) and audio lengths."""


PROFILES = (
    Profile("tiny"),
    Profile("full-vocab", vocab=False),
    Profile("full-geometry", vocab=False, geometry=False),
)

HIDDEN = 64
HEADS = 4
HEAD_DIM = 16
INTERMEDIATE = 64
LAYERS = 2
VOCAB = 512
GRID = 4
"""Patches per side of a shrunk image."""
MAX_POSITIONS = 512
AUDIO_POSITIONS = 32
"""Encoder positions of a shrunk audio encoder (``max_source_positions``)."""

_WIDTH_KEYS = frozenset(
    {
        "hidden_size",
        "d_model",
        "embed_dim",
        "n_embd",
        "dim",
        "width",
        "hidden_dim",
        "encoder_hidden_size",
        "vision_hidden_size",
        "text_hidden_size",
        "projector_hidden_size",
        "projection_dim",
        "qformer_hidden_size",
        "d_kv_model",
        "out_hidden_size",
        "output_dim",
        "out_dim",
        "text_embed_dim",
        "vision_embed_dim",
        "audio_embed_dim",
        "mm_hidden_size",
        "vision_output_dim",
        "projector_input_dim",
        "projector_output_dim",
    }
)
_HEAD_KEYS = frozenset(
    {
        "num_attention_heads",
        "num_heads",
        "n_head",
        "n_heads",
        "encoder_attention_heads",
        "decoder_attention_heads",
        "attention_heads",
    }
)
_KV_HEAD_KEYS = frozenset(
    {"num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num"}
)
_HEAD_DIM_KEYS = frozenset(
    {"head_dim", "d_kv", "kv_channels", "attention_head_dim", "qk_head_dim", "v_head_dim"}
)
_MLA_KEYS = {"kv_lora_rank": 16, "q_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8}
_INTERMEDIATE_KEYS = frozenset(
    {
        "intermediate_size",
        "ffn_dim",
        "encoder_ffn_dim",
        "decoder_ffn_dim",
        "d_ff",
        "n_inner",
        "moe_intermediate_size",
        "shared_expert_intermediate_size",
        "intermediate_size_mlp",
        "mlp_dim",
        "ffn_hidden_size",
        "expert_intermediate_size",
    }
)
_LAYER_KEYS = frozenset(
    {
        "num_hidden_layers",
        "num_layers",
        "n_layer",
        "n_layers",
        "encoder_layers",
        "decoder_layers",
        "num_decoder_layers",
        "num_encoder_layers",
        "depth",
        "num_global_layers",
    }
)
_PER_LAYER_LISTS = ("layers_block_type", "layer_types", "block_types", "hybrid_override_pattern")
"""Per-layer lists that alone set the depth of some configs."""
_SSM_KEYS = {"mamba_num_heads": HEADS, "mamba_head_dim": HEAD_DIM, "ssm_state_size": 16}
_EXPERT_KEYS = frozenset(
    {
        "num_experts",
        "num_local_experts",
        "n_routed_experts",
        "moe_num_experts",
        "num_routed_experts",
    }
)
_TOPK_KEYS = frozenset({"num_experts_per_tok", "moe_k", "moe_topk", "num_selected_experts"})
_POSITION_KEYS = frozenset({"max_position_embeddings", "n_positions", "max_target_positions"})
_VOCAB_KEYS = frozenset({"vocab_size"})


_WIDTH_WORDS = ("embed", "proj", "hidden", "width", "codebook_dim", "d_model", "adapter_")
_NOT_WIDTH_WORDS = (
    "patch",
    "intermediate",
    "image",
    "vocab",
    "kernel",
    "head",
    "window",
    "max",
    "num",
    "chunk",
    "block",
    "sample",
    "per_layer",
    "position",
    "ratio",
    "scale",
    "factor",
    "act",
    "init",
    "layers",
    "eps",
    "index",
    "merge",
    "pool",
    "stride",
    "mel",
    "bins",
    "group",
)


def _is_width_key(key: str) -> bool:
    """A width by its name (``word_embed_proj_dim``, ``vision_embed_dim``, ``codebook_dim``)."""
    return (
        key.endswith(("_dim", "_size", "_dims"))
        and any(w in key for w in _WIDTH_WORDS)
        and not any(w in key for w in _NOT_WIDTH_WORDS)
    )


class _Ids:
    """Special token ids at or above the shrunk vocabulary, remapped to distinct ids below it
    (the same old id maps to the same new id in every sub-config)."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self.mapping: dict[int, int] = {}

    def __call__(self, value: int) -> int:
        if value < self.vocab:
            return value
        if value not in self.mapping:
            self.mapping[value] = self.vocab - 1 - len(self.mapping)
        return self.mapping[value]


def _is_config(value: Any) -> bool:
    from transformers import PretrainedConfig

    return isinstance(value, PretrainedConfig)


def _is_config_dict(key: str, value: Any) -> bool:
    """A sub-config serialised as a dict (``to_dict``)."""
    return isinstance(value, dict) and (key.endswith("config") or "model_type" in value)


def _fields(config: Any) -> dict[str, Any]:
    """The public fields of a config object or a config dict."""
    if isinstance(config, dict):
        return dict(config)
    return {k: v for k, v in vars(config).items() if not k.startswith("_")}


def _set(config: Any, key: str, value: Any) -> None:
    if isinstance(config, dict):
        config[key] = value
    else:
        with contextlib.suppress(AttributeError, TypeError, ValueError):
            setattr(config, key, value)


def _int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _scale_sections(sections: Sequence[int], target: int) -> list[int]:
    """Integer sections proportional to ``sections`` summing to ``target`` (largest remainder);
    every section keeps at least 1 when ``target`` allows it."""
    total = sum(sections)
    raw = [s * target / total for s in sections]
    out = [max(1 if target >= len(sections) else 0, int(r)) for r in raw]
    while sum(out) > target:
        out[out.index(max(out))] -= 1
    order = sorted(range(len(raw)), key=lambda i: raw[i] - int(raw[i]), reverse=True)
    for i in order[: target - sum(out)]:
        out[i] += 1
    return out


def _pick_layers(items: list[Any], n: int) -> list[Any]:
    """``n`` entries of a per-layer list, keeping its variety (the first of each distinct
    value first: a sliding/full pattern keeps one of each)."""
    firsts: list[Any] = []
    for item in items:
        if item not in firsts:
            firsts.append(item)
    picked = firsts[:n]
    return picked + items[len(picked) : len(picked) + n - len(picked)]


def shrink_config(config: Any, profile: Profile = PROFILES[0]) -> Any:
    """Shrink ``config`` and every sub-config in place (and return it): widths to `HIDDEN`,
    heads to `HEADS` (key/value heads to 2 when fewer than the heads, 1 kept), head sizes to
    `HEAD_DIM`, feed-forward sizes to `INTERMEDIATE`, depths to `LAYERS` (per-layer lists and
    layer indices follow), experts to 4 (top-k 2); with ``profile.vocab`` vocabularies to
    `VOCAB` (special token ids remapped below it); with ``profile.geometry`` images to a
    `GRID` x `GRID` patch grid and audio encoders to `AUDIO_POSITIONS` positions. M-RoPE
    sections are rescaled to the new head size."""
    ids = _Ids(VOCAB)
    _shrink(config, profile, ids, set())
    return config


def _shrink(config: Any, profile: Profile, ids: _Ids, seen: set[int]) -> None:
    if id(config) in seen:
        return
    seen.add(id(config))
    fields = _fields(config)
    old_head_dim = _head_dim(fields)
    old_layers = {k: v for k, v in fields.items() if k in _LAYER_KEYS and _int(v)}
    for key, value in fields.items():
        new = _shrink_value(key, value, fields, profile, ids)
        if new is not value:
            _set(config, key, new)
    for old in old_layers.values():
        if old > LAYERS:
            _follow_layers(config, old, profile, ids, seen)
    if not old_layers:  # depth given by a per-layer list alone (hybrid models)
        for name in _PER_LAYER_LISTS:
            value = _fields(config).get(name)
            if isinstance(value, (list, tuple, str)) and len(value) > LAYERS:
                kinds = len(set(value))  # keep one layer of each kind (attention among them)
                picked = _pick_layers(list(value), max(LAYERS, kinds))
                _set(config, name, "".join(picked) if isinstance(value, str) else picked)
    _rescale_rope(config, old_head_dim, _head_dim(_fields(config)))
    # recurse into sub-configs (objects, or dicts named like configs)
    for key, value in _fields(config).items():
        if _is_config(value) or _is_config_dict(key, value):
            _shrink(value, profile, ids, seen)


def _follow_layers(config: Any, old: int, profile: Profile, ids: _Ids, seen: set[int]) -> None:
    """Fields sized by, or indexing into, the ``old`` layers of ``config``, cut to `LAYERS`:
    per-layer lists (``layer_types``), layer index lists (``deepstack_visual_indexes``,
    ``fullatt_block_indexes``, ``vision_feature_layer``), per-layer override dicts."""
    for name, value in _fields(config).items():
        if name in _LAYER_KEYS:
            continue
        if isinstance(value, list) and value:
            index_like = "index" in name or "indices" in name
            if len(value) == old and not index_like:
                _set(config, name, _pick_layers(value, LAYERS))
            elif (
                all(_int(v) for v in value)
                and (index_like or "layer" in name)
                and all(-old - 1 <= v <= old for v in value)
                and max(map(abs, value)) >= LAYERS
            ):
                # hidden-state indices run over LAYERS + 1 states, block indices over LAYERS
                top = LAYERS if "feature" in name or "hidden" in name else LAYERS - 1
                _set(config, name, [max(min(v, top), -LAYERS - 1) for v in value])
        elif (
            isinstance(value, dict)
            and value
            and all(str(k).isdigit() and int(k) < old for k in value)
        ):
            # per-layer overrides ({"05": {...}, "11": {...}}): the first one, moved to the last
            # kept layer (where `_pick_layers` puts the first layer of a second type)
            first = min(value, key=lambda k: int(k))
            index: Any = LAYERS - 1
            if isinstance(first, str):
                index = str(LAYERS - 1).zfill(len(first))
            override = value[first]
            if isinstance(override, dict):
                _shrink(override, profile, ids, seen)
            _set(config, name, {index: override})
        elif name in ("vision_feature_layer", "select_layer", "feature_layer") and _int(value):
            if not -LAYERS - 1 <= value <= LAYERS:
                _set(config, name, max(min(value, LAYERS), -LAYERS - 1))
        elif name == "first_k_dense_replace" and _int(value):
            _set(config, name, min(value, 1))


def config_get(config: Any, key: str, default: Any = None) -> Any:
    """``config.key`` for a config object or dict."""
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def _head_dim(fields: Mapping[str, Any]) -> int | None:
    explicit = fields.get("head_dim")
    if _int(explicit):
        return int(explicit)
    width = next((fields[k] for k in ("hidden_size", "d_model") if _int(fields.get(k))), None)
    heads = next((fields[k] for k in sorted(_HEAD_KEYS) if _int(fields.get(k))), None)
    if width and heads:
        return int(width) // int(heads)
    return None


def _rescale_rope(config: Any, old: int | None, new: int | None) -> None:
    """RoPE parameters that follow the head size: M-RoPE sections (sum = the rotary half of
    the head, `_rotary_half`) and LongRoPE factors (one per rotary pair)."""
    rope = config_get(config, "rope_parameters") if "rope_parameters" in _fields(config) else None
    if not isinstance(rope, dict):
        return
    for name in ("mrope_section", "mrope_sections"):
        sections = rope.get(name)
        if isinstance(sections, (list, tuple)) and sections and all(_int(v) for v in sections):
            target = _rotary_half(config, rope)
            if target:
                rope[name] = _scale_sections(list(sections), max(target, len(sections)))
    if not old or not new or old == new:
        return
    for name in ("short_factor", "long_factor"):
        factors = rope.get(name)
        if isinstance(factors, list) and len(factors) > new // 2:
            rope[name] = factors[: max(1, len(factors) * new // old)]


def _rotary_half(config: Any, rope: Mapping[str, Any]) -> int | None:
    """Half the rotary dimensions of a (shrunk) attention config: ``qk_rope_head_dim / 2``
    for latent attention, else ``head_dim · partial_rotary_factor / 2``."""
    fields = _fields(config)
    rope_dim = fields.get("qk_rope_head_dim")
    if _int(rope_dim):
        return int(rope_dim) // 2
    head_dim = _head_dim(fields)
    if head_dim is None:
        return None
    partial = rope.get("partial_rotary_factor", fields.get("partial_rotary_factor", 1.0))
    return int(head_dim * float(partial or 1.0)) // 2


_MROPE_DEFAULT = re.compile(r"[\"']mrope_sections?[\"']\s*,\s*\[([\d,\s]+)\]")


def _modeling_sources(config: Any, cls: type) -> list[str]:
    """Source files of the model class and of the modeling module of every model type in the
    config tree (a VLM's text model may live in another model's file)."""
    import importlib
    import sys

    from transformers.models.auto.configuration_auto import model_type_to_module_name

    modules = [sys.modules[cls.__module__]]
    types_seen: set[str] = set()

    def walk(c: Any, seen: set[int]) -> None:
        if id(c) in seen:
            return
        seen.add(id(c))
        model_type = getattr(c, "model_type", None)
        if isinstance(model_type, str) and model_type:
            types_seen.add(model_type)
        for key, value in _fields(c).items():
            if _is_config(value) or _is_config_dict(key, value):
                walk(value, seen)

    walk(config, set())
    for model_type in sorted(types_seen):
        name = model_type_to_module_name(model_type)
        with contextlib.suppress(Exception):
            modules.append(importlib.import_module(f"transformers.models.{name}.modeling_{name}"))
    files = []
    for module in modules:
        with contextlib.suppress(TypeError, OSError):
            path = inspect.getsourcefile(module)
            if path and path not in files:
                files.append(path)
    return files


def _fix_mrope(config: Any, cls: type) -> None:
    """M-RoPE sections (in the text config's ``rope_parameters``, or the modeling files'
    default ``rope_parameters.get("mrope_section", [...])``) rescaled to sum to the rotary
    half of the shrunk head size (``qk_rope_head_dim`` for latent attention)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    rope = getattr(text, "rope_parameters", None)
    if not isinstance(rope, dict):
        return
    key = next((k for k in ("mrope_section", "mrope_sections") if k in rope), None)
    sections = rope.get(key) if key else None
    if sections is None:
        for source in _modeling_sources(config, cls):
            with contextlib.suppress(OSError), open(source) as handle:
                match = _MROPE_DEFAULT.search(handle.read())
            if match is not None:
                key = "mrope_section"
                sections = [int(v) for v in match.group(1).replace(" ", "").split(",") if v]
                break
    if not key or not isinstance(sections, (list, tuple)) or not sections:
        return
    target = _rotary_half(text, rope) or HEAD_DIM // 2
    rope[key] = _scale_sections([int(s) for s in sections], max(target, len(sections)))


def _shrink_value(
    key: str, value: Any, fields: Mapping[str, Any], profile: Profile, ids: _Ids
) -> Any:
    """The shrunk value of one config field (``value`` itself when unchanged)."""
    if isinstance(value, list) and value and all(_int(v) for v in value):
        listed = _shrink_list(key, value, fields)
        if listed is value and "token" not in key and "index" not in key:
            # a per-layer list of a scalar field (``intermediate_size=[...]``)
            listed = [_shrink_value(key, v, fields, profile, ids) for v in value]
        return listed
    if key == "projector_patch_to_query_dict" and isinstance(value, dict) and profile.geometry:
        return {GRID * GRID: GRID}  # Aria: learned queries per patch count
    if value is None and key in _TOPK_KEYS and any(_int(fields.get(k)) for k in _EXPERT_KEYS):
        return 2  # declared but left to the checkpoint
    if value is None and key == "head_dim" and any(_int(fields.get(k)) for k in _HEAD_KEYS):
        return HEAD_DIM  # declared but left to the checkpoint
    if not _int(value):
        return value
    if key == "num_kv_shared_layers":
        return 0
    if key in _WIDTH_KEYS or _is_width_key(key):
        return min(value, HIDDEN) if value > 1 else value
    if key in _HEAD_KEYS:
        return HEADS if value >= 2 else value
    if key in _KV_HEAD_KEYS:
        heads = next((fields[k] for k in sorted(_HEAD_KEYS) if _int(fields.get(k))), None)
        if value <= 1:
            return value
        return HEADS if heads is not None and value >= heads else min(value, 2)
    if key == "head_dim" and fields.get("qk_rope_head_dim") == value:
        return min(value, _MLA_KEYS["qk_rope_head_dim"])  # latent attention: the rope part
    if key in _HEAD_DIM_KEYS:
        return min(value, HEAD_DIM)
    if key in _MLA_KEYS:
        return min(value, _MLA_KEYS[key])
    if key in _SSM_KEYS:
        return min(value, _SSM_KEYS[key])
    if key == "n_groups" and any(k in fields for k in _SSM_KEYS):
        return 1
    if key in _INTERMEDIATE_KEYS or ("intermediate" in key and key.endswith(("_size", "_dim"))):
        # keep the ratio to the width (some towers require intermediate == k * hidden)
        width = next(
            (
                fields[k]
                for k in ("hidden_size", "d_model", "embed_dim", "n_embd")
                if _int(fields.get(k))
            ),
            None,
        )
        if width is not None and width <= HIDDEN:  # shrunk already
            return min(value, 8 * HIDDEN)
        if width is not None and value * HIDDEN % width == 0:
            scaled = value * HIDDEN // width
            if scaled % 8:  # grouped expert matmuls want 16-byte aligned rows
                scaled = max(8, round(scaled / 8) * 8)
            return max(8, min(scaled, 8 * HIDDEN))
        return min(value, INTERMEDIATE)
    counts_layers = (
        (key.startswith("num_") or "_num_" in key)
        and key.endswith("_layers")
        and not any(w in key for w in ("conv", "feat"))  # conv stacks are sized by lists
    )
    if key in _LAYER_KEYS or counts_layers:
        return min(value, LAYERS)
    if key.endswith("_channels") and key not in ("num_channels", "in_channels"):
        return min(value, 32)  # conv stage widths (VQ image tokenizers)
    if key in _EXPERT_KEYS:
        return min(value, 4)
    if key in _TOPK_KEYS:
        return min(value, 2)
    if key in ("n_group", "topk_group"):
        return 1
    if key in ("hidden_size_per_layer_input",):
        return min(value, 8)
    if key in _POSITION_KEYS:
        return min(value, MAX_POSITIONS)
    if "feature_layer" in key or key in ("select_layer", "vision_feature_layers"):
        # hidden-state indices into a vision tower of (now) LAYERS layers
        return max(min(value, LAYERS - 1), -LAYERS - 1)
    if key in _VOCAB_KEYS:
        return min(value, VOCAB) if profile.vocab else value
    if "token" in key and key.endswith(("_id", "_index")) and profile.vocab:
        return ids(value)
    if not profile.geometry:
        return value
    if key == "image_size" and _int(fields.get("patch_size")):
        return int(fields["patch_size"]) * GRID
    if key in ("max_source_positions",):
        return min(value, AUDIO_POSITIONS)
    if key in ("mm_tokens_per_image",):
        return min(value, GRID * GRID // 4)
    if key in ("image_seq_length", "num_image_tokens", "latent_query_num"):
        return min(value, GRID * GRID)
    return value


def _shrink_list(key: str, value: list[int], fields: Mapping[str, Any]) -> list[int]:
    """Per-stage lists of hierarchical towers (widths, depths, heads) and token id lists."""
    n = len(value)
    if "feature_layer" in key or key in ("select_layer", "vision_feature_layers"):
        return [max(min(v, LAYERS - 1), -LAYERS - 1) for v in value]
    if key in ("hidden_sizes", "embed_dims", "dims", "widths", "channels", "embed_dim"):
        return [16 * 2**i for i in range(n)]
    if "channels" in key:  # stage widths ending in the next tower's width
        return [max(8, HIDDEN >> (n - 1 - i)) for i in range(n)]
    if key in ("depths", "num_layers_per_stage", "layers"):
        return [1] * n
    if key in ("num_heads", "num_attention_heads", "heads"):
        return [2**i for i in range(n)]
    return value


def _remap_token_lists(config: Any, ids: _Ids, seen: set[int]) -> None:
    """Token id lists (``eos_token_id=[…]``) remapped like the scalar ids."""
    if id(config) in seen:
        return
    seen.add(id(config))
    for key, value in _fields(config).items():
        if (
            "token" in key
            and key.endswith(("_id", "_ids"))
            and isinstance(value, list)
            and all(_int(v) for v in value)
        ):
            _set(config, key, [ids(v) for v in value])
        elif _is_config(value) or _is_config_dict(key, value):
            _remap_token_lists(value, ids, seen)


# -- building ------------------------------------------------------------------------------------
_COMPOSITES: dict[str, tuple[str, str]] = {
    "encoder-decoder": ("bert", "bert"),
    "vision-encoder-decoder": ("vit", "gpt2"),
    "speech-encoder-decoder": ("speech_to_text_encoder", "bert"),
}
"""Composite model types whose default config holds no sub-models: the pair the zoo uses."""


def make_config(
    model_type: str, profile: Profile = PROFILES[0], fill: Sequence[str] = ("vision", "image")
) -> Any:
    """``AutoConfig.for_model(model_type)`` with its optional sub-configs filled in (a VLM
    whose default has no ``vision_config`` gets the default one), shrunk by `shrink_config`
    as a dict and loaded back with ``from_dict`` (the path hub configs take, so fields its
    ``__post_init__`` derives follow the shrunk ones), then shrunk again in place."""
    from transformers import AutoConfig

    if model_type in _COMPOSITES:
        config = _composite_config(model_type)
    else:
        config = AutoConfig.for_model(model_type)
    data = config.to_dict()
    for name in getattr(config, "sub_configs", {}) or {}:
        if data.get(name, 0) is None and any(word in name for word in fill):
            data[name] = {}
    ids = _Ids(VOCAB)
    if profile.vocab:
        _remap_token_lists(data, ids, set())
    _shrink(data, profile, ids, set())
    _merge_into(data, OVERRIDES.get(model_type, {}))
    _complete_rope(data, set())
    config = type(config).from_dict(data)
    _shrink(config, profile, ids, set())
    _set_nested(config, OVERRIDES.get(model_type, {}))
    _assign_placeholder_ids(config, ids if profile.vocab else None)
    pinpoints = getattr(config, "image_grid_pinpoints", None)
    if isinstance(pinpoints, list) and pinpoints and profile.geometry:
        # any-resolution grids: the one the shrunk image fits (base image + one tile)
        config.image_grid_pinpoints = [list(_image_size(_vision_config(config)))]
    return config


OVERRIDES: dict[str, dict[str, Any]] = {
    # fields the default config leaves to a checkpoint (None) or sets inconsistently
    "llama4": {"vision_config": {"intermediate_size": 4 * HIDDEN}},  # = hidden / shuffle ratio²
    "deepseek_ocr2": {"text_config": {"mlp_layer_types": ["dense", "sparse"]}},
    "diffusion_gemma": {
        "text_config": {"num_experts": 4, "top_k_experts": 2, "moe_intermediate_size": 32}
    },
    "step3p7": {"text_config": {"sliding_window": 512}},
    "mllama": {"vision_config": {"vision_output_dim": 6 * HIDDEN}},  # width · (5 taps + 1)
    "muse_glimmer": {"out_hidden_size": 4 * HIDDEN},  # = vision width · merge²
    "muse_spark": {"out_hidden_size": 4 * HIDDEN},
    "hunyuan_vl": {"text_config": {"rope_parameters": {"mrope_section": [2, 2, 2, 2]}}},
    "kyutai_speech_to_text": {"codec_config": {"upsample_groups": HIDDEN}},
    "nemotron_h_omni": {"audio_config": {"projection_hidden_size": HIDDEN}},
    "granite4_vision": {
        "deepstack_layer_map": [[0, 0], [1, 1]],
        "spatial_target_layers": [0, 1, 0, 1],
        "downsample_rate": "2/4",
    },
    # the thinkers' rope index reads a vision start token their config does not declare
    "qwen2_5_omni_thinker": {"vision_start_token_id": 3},
    "qwen3_omni_moe_thinker": {"vision_start_token_id": 3},
    "qwen4_exp": {
        "text_config": {
            "indexer_n_heads": 2,
            "indexer_kv_heads": 1,
            "indexer_head_dim": HEAD_DIM,
            "indexer_budget": 8,
            "indexer_compress_ratio": 4,
        }
    },
}
"""Per-architecture config fields merged in after shrinking (nested like the config dict)."""


def _merge_into(data: dict[str, Any], override: Mapping[str, Any]) -> None:
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(data.get(key), dict):
            _merge_into(data[key], value)
        else:
            data[key] = value


def _set_nested(config: Any, override: Mapping[str, Any]) -> None:
    """`OVERRIDES` set again on the loaded config objects (the in-place pass of
    `shrink_config` must not undo them)."""
    for key, value in override.items():
        current = config_get(config, key)
        if isinstance(value, Mapping) and (_is_config(current) or isinstance(current, dict)):
            _set_nested(current, value)
        else:
            _set(config, key, value)


def _complete_rope(data: dict[str, Any], seen: set[int]) -> None:
    """RoPE parameters keyed by layer type (``{"full_attention": {...}}``) get a default entry
    for each layer type they lack (a default config may leave them empty)."""
    if id(data) in seen:
        return
    seen.add(id(data))
    rope, types_ = data.get("rope_parameters"), data.get("layer_types")
    if isinstance(rope, dict) and "rope_type" not in rope and isinstance(types_, list):
        for layer_type in set(types_):
            rope.setdefault(layer_type, {"rope_type": "default", "rope_theta": 10000.0})
    for key, value in data.items():
        if _is_config_dict(key, value):
            _complete_rope(value, seen)


def _assign_placeholder_ids(config: Any, ids: _Ids | None) -> None:
    """A config that declares an ``image_token_id`` but leaves it None (the processor's
    checkpoint sets it, e.g. BLIP-2) gets a free id at the top of the text vocabulary."""
    for name in (
        "image_token_id",
        "image_token_index",
        "audio_token_id",
        "video_token_id",
        "video_token_index",
    ):
        if name not in _fields(config) or getattr(config, name) is not None:
            continue
        text = config.get_text_config()
        vocab = int(getattr(text, "vocab_size", 0) or 0)
        if ids is not None:
            vocab = min(vocab, ids.vocab)
        used = _special_ids(config)
        free = next(i for i in range(vocab - 1, 0, -1) if i not in used)
        setattr(config, name, free)


def _composite_config(model_type: str) -> Any:
    from transformers import AutoConfig

    encoder_type, decoder_type = _COMPOSITES[model_type]
    if encoder_type == "speech_to_text_encoder":
        encoder_type = "wav2vec2"
    encoder = AutoConfig.for_model(encoder_type)
    decoder = AutoConfig.for_model(decoder_type, is_decoder=True, add_cross_attention=True)
    config_class = type(AutoConfig.for_model(model_type, encoder=encoder, decoder=decoder))
    config = config_class.from_encoder_decoder_configs(encoder, decoder)  # type: ignore[attr-defined]
    return config


def _model_class(entry: Entry) -> type[nn.Module]:
    import transformers

    cls = getattr(transformers, entry.class_name, None)
    if cls is None:
        raise LookupError(f"transformers has no class {entry.class_name}")
    return cls  # type: ignore[no-any-return]


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise `ZooTimeout` after ``seconds`` of wall-clock time (``SIGALRM``: the main thread
    only; elsewhere, or with None, no cap). A model stuck inside one long C call is stopped
    when the call returns."""
    if not seconds or seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: types.FrameType | None) -> None:
        raise ZooTimeout(f"over the {seconds:.0f} s cap")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def first_line(error: BaseException) -> str:
    """``Type: first line of the message`` (with the next line when the first only
    introduces it), at most 240 characters."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    line = lines[0] if lines else ""
    if line.endswith(":") and len(lines) > 1:  # "validation error for 'x':" + the reason
        line = f"{line} {lines[1]}"
    return f"{type(error).__name__}: {line}"[:240]


def build(
    model_type: str,
    task: str | None = None,
    *,
    attn_implementation: str = "eager",
    seed: int = 0,
    timeout: float | None = 60.0,
    profiles: Sequence[Profile] = PROFILES,
) -> Built | Skip:
    """A tiny random ``model_type`` model of the class mapping ``task`` names (see
    `find_entry`), with inputs, once ``model(**inputs)`` runs under eager and sdpa; the
    model is returned in eval mode on ``attn_implementation``. Each profile of ``profiles`` is
    tried in turn; a `Skip` gives the reason of the profile that got furthest (config, model,
    inputs, eager run, sdpa run). ``timeout`` caps the wall-clock time of the whole build
    (None: no cap)."""
    start = time.perf_counter()
    try:
        entry = find_entry(model_type, task)
    except KeyError as error:
        return Skip(Entry(task or "?", model_type, "?"), str(error))
    failures: list[tuple[int, str]] = []  # (stage reached, reason)
    try:
        with deadline(timeout), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for profile in profiles:
                try:
                    built = _build_one(entry, profile, attn_implementation, seed)
                except _StageError as error:
                    failures.append((error.stage, f"[{profile.name}] {error}"))
                    continue
                built.seconds = time.perf_counter() - start
                return built
    except ZooTimeout as error:
        failures.append((-1, f"timeout: {error}"))
    # the reason of the profile that got furthest (the first of those)
    reason = max(failures, key=lambda f: f[0])[1] if failures else "no profile"
    if len(failures) > 1 and failures[-1][0] == -1:
        reason = f"{reason}; {failures[-1][1]}"
    if entry.model_type in HINTS:
        reason = f"{reason} ({HINTS[entry.model_type]})"
    return Skip(entry, reason, time.perf_counter() - start)


HINTS: dict[str, str] = {
    "chameleon": "image tokens come from a VQ vocabulary map only a checkpoint provides",
    "emu3": "image tokens come from a VQ vocabulary map only a checkpoint provides",
    "perception_lm": "the vision tower is a timm model whose model_args only a checkpoint sets",
    "pi0": "a robot policy: its forward takes state, noise and actions",
    "llama4": "its forward reads image_outputs, which its language model does not return",
    "fast_vlm": "the vision tower is a full-size timm model the config cannot shrink",
    "gemma3n": "the vision tower is a full-size timm model the config cannot shrink",
    "dia": "text-to-speech: its decoder ids are audio codebook ids",
    "qwen2_5_omni": "a generation wrapper; its thinker is swept on its own",
    "qwen3_omni_moe": "a generation wrapper; its thinker is swept on its own",
}
"""Why an architecture the zoo knows it cannot build fails: appended to the exception."""


class _StageError(Exception):
    """A failure of one stage of `_build_one` (its index orders the stages)."""

    STAGES = ("config", "model", "inputs", "eager", "sdpa")

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"{stage}: {first_line(error)}")
        self.stage = self.STAGES.index(stage)


def _build_one(entry: Entry, profile: Profile, attn_implementation: str, seed: int) -> Built:
    """One attempt at `build` with one profile; failures raise `_StageError`."""
    audio = "SPEECH" in entry.mapping or "AUDIO" in entry.mapping
    fill = ("audio", "speech") if audio else ("vision", "image")
    try:
        cls = _model_class(entry)
        config = make_config(entry.model_type, profile, fill)
        _fix_mrope(config, cls)
    except Exception as error:
        raise _StageError("config", error) from error
    try:
        torch.manual_seed(seed)
        model = cls._from_config(  # type: ignore[attr-defined]
            config, attn_implementation="eager", dtype=torch.float32
        ).eval()
    except Exception as error:
        raise _StageError("model", error) from error
    try:
        torch.manual_seed(seed + 1)
        inputs, kind, placeholders = _inputs(entry, model)
    except Exception as error:
        raise _StageError("inputs", error) from error
    for implementation in ("eager", "sdpa"):
        try:
            model.set_attn_implementation(implementation)  # type: ignore[operator]
            torch.manual_seed(seed)
            with torch.no_grad():
                model(**inputs)
        except Exception as error:
            raise _StageError(implementation, error) from error
    model.set_attn_implementation(attn_implementation)  # type: ignore[operator]
    return Built(entry, model, inputs, kind, placeholders, profile.name, 0.0)


# -- inputs --------------------------------------------------------------------------------------
_IMAGE_KEYS = ("pixel_values", "image_pixel_values", "flattened_patches", "image_patches")
_AUDIO_KEYS = ("input_features", "input_values", "audio_input_features")


def _params(model: nn.Module) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(inspect.unwrap(type(model).forward)).parameters)


def _sub(config: Any, *names: str) -> Any:
    """The first sub-config of ``config`` among ``names`` (None: none)."""
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def _token_id(config: Any, *names: str) -> int | None:
    """The first integer id among ``names`` on the config or its text config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else None
    for source in (config, text):
        for name in names:
            value = getattr(source, name, None) if source is not None else None
            if _int(value):
                return int(value)
    return None


def _special_ids(config: Any) -> set[int]:
    """Every integer token id named anywhere in the config tree."""
    found: set[int] = set()

    def walk(c: Any, seen: set[int]) -> None:
        if id(c) in seen:
            return
        seen.add(id(c))
        for key, value in _fields(c).items():
            if "token" in key and _int(value):
                found.add(int(value))
            elif "token" in key and isinstance(value, list):
                found.update(int(v) for v in value if _int(v))
            elif _is_config(value) or _is_config_dict(key, value):
                walk(value, seen)

    walk(config, set())
    return found


def _text_vocab(model: nn.Module) -> int:
    with contextlib.suppress(NotImplementedError, AttributeError):
        embeddings = model.get_input_embeddings()  # type: ignore[operator]
        if isinstance(embeddings, nn.Embedding):
            return int(embeddings.num_embeddings)
    config: Any = model.config
    return int(config.get_text_config().vocab_size)


class _Text:
    """Plain text token ids below the vocabulary that are no special token."""

    def __init__(self, model: nn.Module) -> None:
        vocab = _text_vocab(model)
        special = _special_ids(model.config)
        self.pool = [i for i in range(4, min(vocab, 200)) if i not in special]
        self.next = 0

    def take(self, n: int) -> list[int]:
        out = [self.pool[(self.next + i) % len(self.pool)] for i in range(n)]
        self.next += n
        return out


def _inputs(entry: Entry, model: nn.Module) -> tuple[dict[str, Any], str, dict[str, int]]:
    """Inputs for ``model``, its kind and the placeholders per sample (one item per sample).

    Each candidate layout of the modality tensors (`_image_candidates`, `_audio_candidates`)
    is tried in turn until the model runs on it (eager); the first failure is raised."""
    params = _params(model)
    config: Any = model.config
    modality = _modality(entry, params, config)
    if _is_encoder_decoder(config, params):
        kind = {"image": "vision-encoder-decoder", "audio": "speech-seq2seq"}.get(
            modality or "", "encoder-decoder"
        )
    else:
        kind = {"image": "vlm", "audio": "audio-lm"}.get(modality or "", "text-lm")
    if modality == "image":
        candidates = _image_candidates(model, params, config)
    elif modality == "audio":
        candidates = _audio_candidates(params, config)
    else:
        candidates = [{}]
    errors: list[Exception] = []
    for candidate in candidates:
        try:
            inputs, placeholders = _complete(model, params, modality, candidate)
        except Exception as error:
            errors.append(error)
            continue
        return inputs, kind, placeholders
    raise errors[0]


def _complete(
    model: nn.Module, params: Mapping[str, Any], modality: str | None, media: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, int]]:
    """The modality tensors ``media`` completed with token ids, masks and decoder ids, once the
    model runs on them (eager); the placeholders per sample."""
    config: Any = model.config
    inputs = dict(media)
    placeholders: dict[str, int] = {}
    text = _Text(model)
    token = _placeholder_id(config, modality)
    encoder_decoder = _is_encoder_decoder(config, params)
    feature_error: Exception | None = None
    count = 0
    if "image_embeds_position_mask" in params:  # Kosmos-2: any ids, marked by a mask
        token = token if token is not None else text.take(1)[0]
        count = int(getattr(config, "latent_query_num", 0) or 0) or _count_or(model, "image", media)
    elif "cross_attention_mask" in params or "image_attention_mask" in params:
        count = 1 if token is not None else 0  # cross-attention models: one marker per image
    elif token is not None and modality is not None:
        try:
            count = _count_placeholders(model, modality, media)
        except Exception as error:  # count from the model's mismatch error instead
            feature_error, count = error, 2
    wants_ids = "input_ids" in params and not (
        encoder_decoder and modality == "audio" and token is None
    )
    if wants_ids:
        if modality is not None and token is not None:
            placeholders[modality] = count
        ids, mask = _token_sequence(config, text, token, count, _wrapping(config, modality))
        inputs["input_ids"] = ids  # (B, L)
        inputs["attention_mask"] = mask  # (B, L)
        inputs.update(_id_extras(model, params, ids, mask, token, modality))
    if encoder_decoder:
        inputs["decoder_input_ids"] = _decoder_ids(config, text)  # (B, Ld)
    try:
        inputs = _fix_counts(model, inputs, modality, token, placeholders)
    except Exception:
        if feature_error is not None:
            raise feature_error from None
        raise
    return inputs, placeholders


def _is_encoder_decoder(config: Any, params: Mapping[str, Any]) -> bool:
    """Whether the model runs a decoder over its own ids (``decoder_input_ids``) next to an
    encoder; BLIP-2 takes ``decoder_input_ids`` but only uses them with a T5 language model."""
    if "decoder_input_ids" not in params:
        return False
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else None
    return (
        bool(getattr(config, "is_encoder_decoder", False))
        or bool(getattr(text, "is_encoder_decoder", False))
        or not hasattr(config, "get_text_config")
    )


def _count_or(model: nn.Module, modality: str, media: Mapping[str, Any]) -> int:
    try:
        return _count_placeholders(model, modality, media)
    except Exception:
        return 2


def _id_extras(
    model: nn.Module,
    params: Mapping[str, Any],
    ids: Tensor,
    mask: Tensor,
    token: int | None,
    modality: str | None,
) -> dict[str, Tensor]:
    """Per-token tensors some models take next to ``input_ids`` ``[B, L]``."""
    out: dict[str, Tensor] = {}
    placeholder = (ids == token) if token is not None else torch.zeros_like(ids, dtype=torch.bool)
    if "mm_token_type_ids" in params and token is not None:
        code = {"image": 1, "video": 2, "audio": 3}[modality or "image"]
        out["mm_token_type_ids"] = placeholder.long() * code  # (B, L)
    if (
        "token_type_ids" in params
        and token is not None
        and "gemma3" in type(model).__name__.lower()
    ):
        out["token_type_ids"] = placeholder.long()  # (B, L): bidirectional image spans
    if "image_embeds_position_mask" in params:
        out["image_embeds_position_mask"] = placeholder.long()  # (B, L)
    if "image_attention_mask" in params:
        out["image_attention_mask"] = mask[:, :, None].clone()  # (B, L, images=1)
    if "cross_attention_mask" in params:  # Mllama: which (image, tile) each token reads
        tiles = int(getattr(_vision_config(model.config), "max_num_tiles", 1) or 1)
        cross = torch.zeros(*ids.shape, 1, tiles, dtype=torch.long)  # (B, L, images, tiles)
        cross[..., 0, 0] = mask  # the one real tile, from every non-padding token
        out["cross_attention_mask"] = cross
    canvas = getattr(model.config, "canvas_length", None)
    if "decoder_attention_mask" in params and isinstance(canvas, int):
        # a block-diffusion decoder (DiffusionGemma) reads the prompt's cached keys, padding
        # included unless told: its mask covers the prompt, then the canvas
        out["decoder_attention_mask"] = torch.cat([mask, mask.new_ones(len(mask), canvas)], 1)
    if "bbox" in params:  # UDOP: a layout box per token, (x0, y0, x1, y1) in [0, 1]
        corner = torch.rand(*ids.shape, 2) * 0.5  # (B, L, 2)
        out["bbox"] = torch.cat([corner, corner + 0.25], -1)  # (B, L, 4)
    return out


def _wrapping(config: Any, modality: str | None) -> tuple[list[int], list[int]]:
    """Start/end tokens around a modality's placeholders, where the config names them
    (``vision_start_token_id`` …); some rope-index code finds images by them."""
    if modality is None:
        return [], []
    prefixes = {"image": ("vision", "image"), "audio": ("audio",)}.get(modality, ())
    for prefix in prefixes:
        start = _token_id(config, f"{prefix}_start_token_id")
        end = _token_id(config, f"{prefix}_end_token_id")
        if start is not None:
            return [start], [end] if end is not None else []
    return [], []


def _modality(entry: Entry, params: Mapping[str, Any], config: Any) -> str | None:
    """Which modality the inputs carry: image for the image/vision mappings, audio for the
    speech ones, else whichever the forward takes (image first)."""
    has_image = any(k in params for k in _IMAGE_KEYS) and (
        _sub(config, "vision_config", "encoder", "vision_encoder_config") is not None
        or hasattr(config, "patch_size")
    )
    has_audio = any(k in params for k in _AUDIO_KEYS)
    if "SPEECH" in entry.mapping or "AUDIO" in entry.mapping:
        return "audio" if has_audio else ("image" if has_image else None)
    if has_image:
        return "image"
    return "audio" if has_audio else None


def _placeholder_id(config: Any, modality: str | None) -> int | None:
    if modality == "image":
        return _token_id(
            config,
            "image_token_id",
            "image_token_index",
            "image_pad_token_id",
            "video_token_id",  # video-only models (frames as images)
            "video_token_index",
        )
    if modality == "audio":
        return _token_id(config, "audio_token_id", "audio_token_index", "audio_pad_token_id")
    return None


def _token_sequence(
    config: Any,
    text: _Text,
    token: int | None,
    count: int,
    wrap: tuple[list[int], list[int]] = ([], []),
) -> tuple[Tensor, Tensor]:
    """Two prompts with ``count`` placeholders each (inside ``wrap``'s start/end tokens), at
    different positions: ``[pad, pad, bos, t, t, P…, t, t, t]`` and
    ``[bos, t, t, t, t, P…, t, t, t]``; the mask zeroes the padding."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    bos = _token_id(text_config, "bos_token_id")
    pad = _token_id(text_config, "pad_token_id")
    placeholder = [*wrap[0], *[token] * count, *wrap[1]] if token is not None and count else []
    rows = []
    for before, after in ((2, 3), (2 + PAD_LEFT, 3)):
        head = [bos] if bos is not None else text.take(1)
        rows.append([*head, *text.take(before), *placeholder, *text.take(after)])
    pad_id = pad if pad is not None else 0
    rows[0] = [pad_id] * PAD_LEFT + rows[0]
    ids = torch.tensor(rows)  # (B, L)
    mask = torch.ones_like(ids)
    mask[0, :PAD_LEFT] = 0
    return ids, mask


def _decoder_ids(config: Any, text: _Text) -> Tensor:
    decoder = _sub(config, "decoder", "decoder_config", "text_config") or config
    start = _token_id(config, "decoder_start_token_id")
    if start is None:
        start = _token_id(decoder, "decoder_start_token_id", "bos_token_id", "pad_token_id")
    head = [start] if start is not None else text.take(1)
    return torch.tensor([[*head, *text.take(4)] for _ in range(BATCH)])  # (B, Ld)


# image inputs ------------------------------------------------------------------------------------
def _vision_config(config: Any) -> Any:
    """The (first) sub-config with a ``patch_size``, preferring ``vision*`` ones, breadth
    first; the config itself when none has one."""
    queue: list[tuple[str, Any]] = [("", config)]
    found: list[tuple[str, Any]] = []
    seen: set[int] = set()
    while queue:
        name, current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if getattr(current, "patch_size", None) is not None:
            found.append((name, current))
        for key, value in _fields(current).items():
            if _is_config(value):
                queue.append((key, value))
    for name, current in found:
        if "vision" in name:
            return current
    if found:
        return found[0][1]
    return _sub(config, "vision_config", "encoder", "vision_encoder_config") or config


def _pair(value: Any) -> tuple[int, int]:
    if _int(value):
        return (int(value), int(value))
    return (int(value[0]), int(value[1]))


def _patch(vision: Any) -> tuple[int, int]:
    flat = getattr(vision, "patch_embed_hidden_size", None)
    if _int(flat):  # Pix2Struct / Kosmos-2.5: patch rows of C·p·p pixels
        side = math.isqrt(int(flat) // _channels(vision))
        return (side, side)
    patch = getattr(vision, "patch_size", None)
    if patch is None or isinstance(patch, dict):
        return (14, 14)
    return _pair(patch)


def _image_size(vision: Any) -> tuple[int, int]:
    size = getattr(vision, "image_size", None)
    if size is not None and not isinstance(size, dict):
        return _pair(size)
    height, width = _patch(vision)
    return (height * GRID, width * GRID)


def _channels(vision: Any) -> int:
    for name in ("num_channels", "in_channels", "in_chans", "num_input_channels"):
        value = getattr(vision, name, None)
        if _int(value):
            return int(value)
    return 3


def _merge(vision: Any) -> int:
    for name in ("spatial_merge_size", "merge_size", "merge_kernel_size", "downsample_ratio"):
        value = getattr(vision, name, None)
        if _int(value) and value > 1:
            return int(value)
        if isinstance(value, (list, tuple)) and value and _int(value[0]):
            return int(value[0])
    return 2


def _image_extras(params: Mapping[str, Any], config: Any) -> dict[str, Any]:
    """Tensors some image models take next to the pixels of every candidate."""
    out: dict[str, Any] = {}
    if "qformer_input_ids" in params:  # InstructBLIP: the instruction, for the Q-Former
        out["qformer_input_ids"] = torch.tensor([[5, 6, 7, 8]] * BATCH)  # (B, Lq)
        out["qformer_attention_mask"] = torch.ones(BATCH, 4, dtype=torch.long)
    if "high_res_pixel_values" in params:
        high = _sub(config, "high_res_vision_config")
        size = _image_size(high) if high is not None else (64, 64)
        out["high_res_pixel_values"] = torch.randn(BATCH, 3, *size)  # (B, C, H, W)
    return out


def _grid_candidates(params: Mapping[str, Any], vision: Any) -> list[dict[str, Any]]:
    """Qwen-VL style patch lists: ``[N, C·t·p·p]`` rows (and ``[N, C, p, p]``,
    ``[1, N, C, p, p]`` layouts) with ``image_grid_thw = [[1, s, s]] * B``, ``s = 2·merge``."""
    channels, (patch, _) = _channels(vision), _patch(vision)
    merge = _merge(vision)
    side = 2 * merge  # (2 x 2) merged tokens per image
    rows = BATCH * side * side
    declared = getattr(vision, "temporal_patch_size", None)
    temporals = list(dict.fromkeys([int(declared)] if _int(declared) else [1, 2]))
    if 2 not in temporals:
        temporals.append(2)
    out = []
    for temporal in temporals:
        flat = torch.randn(rows, channels * temporal * patch * patch)  # (N, C·t·p·p)
        layouts = [flat]
        if temporal == 1:
            layouts.append(flat.view(rows, channels, patch, patch))  # (N, C, p, p)
            layouts.append(flat.view(1, rows, channels, patch, patch))  # (1, N, C, p, p)
        for pixels in layouts:
            candidate: dict[str, Any] = {"pixel_values": pixels}
            if "image_grid_thw" in params:
                candidate["image_grid_thw"] = torch.tensor([[1, side, side]] * BATCH)  # (N, 3)
            if "image_grid_hw" in params:
                candidate["image_grid_hw"] = torch.tensor([[side, side]] * BATCH)  # (N, 2)
            if "image_merge_sizes" in params:
                candidate["image_merge_sizes"] = torch.tensor([merge] * BATCH)  # (N,)
            out.append(candidate)
    return out


def _image_candidates(
    model: nn.Module, params: Mapping[str, Any], config: Any
) -> list[dict[str, Any]]:
    """Candidate image inputs for a batch of `BATCH` images, most specific first; those the
    model's image feature function rejects are dropped (all kept if none passes)."""
    vision = _vision_config(config)
    channels, (height, width), (patch, _) = _channels(vision), _image_size(vision), _patch(vision)
    key = next(k for k in _IMAGE_KEYS if k in params)
    extras = _image_extras(params, config)
    candidates: list[dict[str, Any]] = []
    if "image_grid_thw" in params or "image_grid_hw" in params:
        candidates += _grid_candidates(params, vision)
    if "spatial_shapes" in params:  # NaViT (SigLIP2): patch rows, a patch mask and the grid
        candidates.append(
            {
                key: torch.randn(BATCH, GRID * GRID, channels * patch * patch),  # (B, N, C·p·p)
                "pixel_attention_mask": torch.ones(BATCH, GRID * GRID, dtype=torch.bool),
                "spatial_shapes": torch.tensor([[GRID, GRID]] * BATCH),  # (B, 2)
            }
        )
    if "image_position_ids" in params:  # patch rows with their (x, y) positions
        for side in (GRID, 6):
            ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
            positions = torch.stack([xs.flatten(), ys.flatten()], -1)  # (N, 2)
            candidates.append(
                {
                    key: torch.rand(BATCH, side * side, channels * patch * patch),  # (B, N, C·p·p)
                    "image_position_ids": positions.expand(BATCH, -1, -1).clone(),  # (B, N, 2)
                }
            )
    if "target_sizes" in params:  # MiniCPM-V: patches side by side, with their grid
        target = torch.tensor([[GRID, GRID]] * BATCH)  # (B, 2)
        packed = torch.randn(1, channels, patch, BATCH * GRID * GRID * patch)  # (1, C, p, N·p)
        candidates.append({key: packed, "target_sizes": target})
        candidates.append(
            {key: torch.randn(BATCH, channels, patch, GRID * GRID * patch), "target_sizes": target}
        )
        candidates.append(
            {key: torch.randn(BATCH, channels, height, width), "target_sizes": target}
        )
    if key == "flattened_patches":  # Pix2Struct: [row, column, pixels…] per patch, 1-based
        rows, cols = torch.meshgrid(
            torch.arange(1, GRID + 1), torch.arange(1, GRID + 1), indexing="ij"
        )
        pixels = torch.randn(BATCH, GRID * GRID, channels * patch * patch)  # (B, N, C·p·p)
        index = torch.stack([rows.flatten(), cols.flatten()], -1).float()  # (N, 2)
        patches = torch.cat([index.expand(BATCH, -1, -1), pixels], -1)  # (B, N, 2 + C·p·p)
        candidates.append({key: patches})
    if "aspect_ratio_ids" in params:  # Mllama: padded tiles per image, their aspect ratio
        tiles = int(getattr(vision, "max_num_tiles", 1) or 1)
        used = torch.zeros(BATCH, 1, tiles, dtype=torch.long)  # (B, images, tiles)
        used[:, :, 0] = 1  # one real tile: aspect ratio (1, 1), id 1
        candidates.append(
            {
                key: torch.randn(
                    BATCH, 1, tiles, channels, height, width
                ),  # (B, images, tiles, C, H, W)
                "aspect_ratio_ids": torch.ones(BATCH, 1, dtype=torch.long),  # (B, images)
                "aspect_ratio_mask": used,
            }
        )
    nchw: dict[str, Any] = {key: torch.randn(BATCH, channels, height, width)}  # (B, C, H, W)
    if "image_sizes" in params:
        nchw["image_sizes"] = torch.tensor([[height, width]] * BATCH)  # (B, 2)
        # any-resolution (LLaVA-NeXT): the base image and one tile of the single grid
        candidates.append(
            {
                key: torch.randn(BATCH, 2, channels, height, width),  # (B, tiles, C, H, W)
                "image_sizes": torch.tensor([[height, width]] * BATCH),
            }
        )
    if "pixel_mask" in params:
        nchw["pixel_mask"] = torch.ones(BATCH, height, width, dtype=torch.long)
    candidates.append(nchw)
    if "image_sizes" in nchw:  # image_sizes is optional for most towers that take it
        candidates.append({k: v for k, v in nchw.items() if k != "image_sizes"})
    five = torch.randn(BATCH, 1, channels, height, width)  # (B, images, C, H, W)
    if "pixel_attention_mask" in params:
        for shape in ((BATCH, 1, height, width), (BATCH, 1)):
            mask = torch.ones(*shape, dtype=torch.bool)
            candidates.append({key: five, "pixel_attention_mask": mask})
    candidates.append({key: five})
    # plain patch rows (Fuyu)
    candidates.append({key: torch.randn(BATCH, GRID * GRID, channels * patch * patch)})
    candidates = [dict(c, **extras) for c in candidates]
    function = _feature_function(model, "image")
    if function is None:
        return candidates
    accepted = []
    for candidate in candidates:
        try:
            with torch.no_grad():
                _call_features(function, candidate)
        except Exception:
            continue
        accepted.append(candidate)
    return accepted or candidates


# audio inputs ------------------------------------------------------------------------------------
def _audio_config(config: Any) -> Any:
    return (
        _sub(config, "audio_config", "encoder_config", "encoder", "audio_encoder_config") or config
    )


_MEL_KEYS = (
    "num_mel_bins",
    "input_feat_per_channel",
    "feature_size",
    "n_mels",
    "input_dim",
    "num_mel_filters",
    "input_size",
    "idim",
    "feature_dim",
    "feat_in",
    "in_channels",
)


_AUDIO_MASKS = (
    "feature_attention_mask",
    "input_features_mask",
    "audio_attention_mask",
    "padding_mask",
)


def _audio_candidates(params: Mapping[str, Any], config: Any) -> list[dict[str, Any]]:
    """Candidate audio inputs: log-mel features ``[B, mels, T]`` or ``[B, T, mels]`` (``T``
    twice the encoder positions, as Whisper-style encoders require), or raw samples ``[B, S]``
    / ``[B, 1, S]``, with all-ones masks where the forward takes one."""
    audio = _audio_config(config)
    out: list[dict[str, Any]] = []
    key = next((k for k in ("input_features", "audio_input_features") if k in params), None)
    if key is not None:
        mels = [int(v) for n in _MEL_KEYS if _int(v := getattr(audio, n, None)) and v > 1]
        positions = getattr(audio, "max_source_positions", None)
        frame_options = [2 * int(positions) if _int(positions) else 64]
        window = getattr(audio, "n_window", None)
        if _int(window):  # chunked encoders (Qwen-Omni audio): whole chunks of 2·n_window
            frame_options.append(2 * int(window))
        for frames, n_mels, time_major in itertools.product(
            dict.fromkeys(frame_options), dict.fromkeys([*mels, 80, 128]), (False, True)
        ):
            shape = (BATCH, frames, n_mels) if time_major else (BATCH, n_mels, frames)
            candidate: dict[str, Any] = {key: torch.randn(*shape)}  # (B, mels, T) / (B, T, mels)
            masks = {
                m: torch.ones(BATCH, frames, dtype=torch.long) for m in _AUDIO_MASKS if m in params
            }
            out.append({**candidate, **masks})  # masks (B, T)
            if masks:  # masks are optional, and some count other frames than T
                out.append(candidate)
    if "input_values" in params:
        samples = 16000
        for channel in ((), (1,)):
            size = (BATCH, *channel, samples)
            candidate = {"input_values": torch.randn(*size)}  # (B, S) / (B, 1, S)
            if "padding_mask" in params:
                candidate["padding_mask"] = torch.ones(*size, dtype=torch.long)
            out.append(candidate)
    return out or [{}]


# placeholder counting ----------------------------------------------------------------------------
def _feature_function(model: nn.Module, modality: str) -> Callable[..., Any] | None:
    names = {
        "image": ("get_image_features",),
        "audio": ("get_audio_features", "get_audio_embeds"),
        "video": ("get_video_features",),
    }[modality]
    for owner in (model, getattr(model, "model", None)):
        for name in names:
            function = getattr(owner, name, None)
            if callable(function):
                return function  # type: ignore[no-any-return]
    return None


def _call_features(function: Callable[..., Any], kwargs: Mapping[str, Any]) -> Any:
    """Call a feature function with the kwargs its signature names (all of them when it takes
    ``**kwargs``, if it accepts them)."""
    signature = inspect.signature(function).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values())
    named = {k: v for k, v in kwargs.items() if k in signature}
    if takes_any and len(named) < len(kwargs):
        try:
            return function(**kwargs)
        except TypeError:
            if not named:
                raise
    return function(**named)


def _rows(output: Any, width: int) -> int:
    """Feature rows of width ``width`` in a feature function's output."""
    if isinstance(output, Tensor):
        if output.shape[-1] != width:
            raise ValueError(f"feature width {output.shape[-1]} is not the text width {width}")
        return output.numel() // width
    if isinstance(output, (list, tuple)):
        return sum(_rows(o, width) for o in output if isinstance(o, (Tensor, list, tuple)))
    pooled = getattr(output, "pooler_output", None)
    if pooled is not None:
        return _rows(pooled, width)
    hidden = getattr(output, "last_hidden_state", None)
    if isinstance(hidden, Tensor):
        return _rows(hidden, width)
    raise TypeError(f"cannot count features in {type(output).__name__}")


def _count_placeholders(model: nn.Module, modality: str, kwargs: Mapping[str, Any]) -> int:
    """Placeholder tokens per item: the rows of the model's own feature function over the
    batch of `BATCH` items, divided evenly (2 when it has none: `_fix_counts` then reads the
    count off the model's mismatch error)."""
    function = _feature_function(model, modality)
    if function is None:
        return 2
    config: Any = model.config
    width = int(config.get_text_config().hidden_size)
    with torch.no_grad():
        rows = _rows(_call_features(function, kwargs), width)
    if rows % BATCH:
        raise ValueError(f"{rows} {modality} feature rows for {BATCH} items")
    return rows // BATCH


_MISMATCH = re.compile(r"tokens:?\s*(\d+).*?features:?\s*(\d+)", re.IGNORECASE | re.DOTALL)


def _fix_counts(
    model: nn.Module,
    inputs: dict[str, Any],
    modality: str | None,
    token: int | None,
    placeholders: dict[str, int],
) -> dict[str, Any]:
    """Run once (eager); when the model reports a placeholder/feature mismatch (``tokens: X,
    features: Y``), rebuild the ids with ``Y / B`` placeholders per sample and run again."""
    try:
        with torch.no_grad():
            model(**inputs)
        return inputs
    except Exception as error:
        match = _MISMATCH.search(str(error))
        if match is None or token is None or "input_ids" not in inputs:
            raise
        if int(match.group(2)) % BATCH:
            raise
        count = int(match.group(2)) // BATCH
    ids = inputs["input_ids"]
    old = placeholders.get(modality or "", 0)
    rows = []
    for row in ids.tolist():
        start = row.index(token) if old else len(row) - 3
        rows.append(row[:start] + [token] * count + row[start + old :])
    new_ids = torch.tensor(rows)  # (B, L')
    mask = torch.ones_like(new_ids)
    mask[0, :PAD_LEFT] = 0
    fixed = dict(inputs, input_ids=new_ids, attention_mask=mask)
    params = _params(model)
    fixed.update(_id_extras(model, params, new_ids, mask, token, modality))
    placeholders[modality or ""] = count
    with torch.no_grad():
        model(**fixed)
    return fixed


# -- the eager reference -------------------------------------------------------------------------
def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def is_hf_attention(module: nn.Module) -> bool:
    """Whether ``module``'s class ``forward`` dispatches through ``ALL_ATTENTION_FUNCTIONS``."""
    forward = inspect.unwrap(type(module).forward)
    code = getattr(forward, "__code__", None)
    return isinstance(code, types.CodeType) and "ALL_ATTENTION_FUNCTIONS" in _code_names(code)


def is_hand_attention(module: nn.Module) -> bool:
    """Whether ``module`` is an HF attention module that computes its weights by hand (a
    ``softmax`` in its class ``forward``, no ``ALL_ATTENTION_FUNCTIONS``): the weights it
    returns with ``output_attentions=True`` are the reference."""
    forward = inspect.unwrap(type(module).forward)
    code = getattr(forward, "__code__", None)
    return (
        "Attention" in type(module).__name__
        and type(module).__module__.startswith("transformers.")
        and isinstance(code, types.CodeType)
        and any(name.lower() == "softmax" for name in _code_names(code))
        and not is_hf_attention(module)
    )


@dataclasses.dataclass
class Call:
    """One eager attention kernel call of an attention module."""

    path: str
    weights: Tensor | None
    """Post-softmax weights ``[B, H, Lq, Lk]`` (None: none could be read)."""
    cross: bool
    """Keys from another sequence (``key_value_states`` / ``encoder_hidden_states`` /
    ``cross_attention_states`` passed, or query and key lengths differ)."""
    kernel: int = 0
    """Index of the kernel call within one call of the module (most modules make one)."""

    @property
    def site(self) -> str:
        """The name attnprobe gives this call site: ``path``, then ``path:call1``, …"""
        return self.path if self.kernel == 0 else f"{self.path}:call{self.kernel}"


_CROSS_KWARGS = (
    "key_value_states",
    "encoder_hidden_states",
    "cross_attention_states",
    "encoder_outputs",
    "image_hidden_states",
    "context",
)


@contextlib.contextmanager
def _eager(model: nn.Module) -> Iterator[None]:
    config: Any = model.config
    before = config._attn_implementation
    model.set_attn_implementation("eager")  # type: ignore[operator]
    try:
        yield
    finally:
        model.set_attn_implementation(before)  # type: ignore[operator]


@contextlib.contextmanager
def _recording_eager_functions(
    modules: Sequence[nn.Module], record: Callable[[nn.Module, Tensor], None]
) -> Iterator[None]:
    """Wrap the eager attention functions the modules' modeling files call
    (``eager_attention_forward`` and the like, looked up in each ``forward``'s globals) so
    that every call reports its post-softmax weights (its second output) with its module."""
    patched: list[tuple[dict[str, Any], str, Any]] = []
    done: set[tuple[int, str]] = set()

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def recording(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
            out = original(module, *args, **kwargs)
            if isinstance(out, tuple) and len(out) > 1 and isinstance(out[1], Tensor):
                record(module, out[1].detach())
            return out

        return recording

    try:
        for module in modules:
            forward = inspect.unwrap(type(module).forward)
            namespace: dict[str, Any] = getattr(forward, "__globals__", {})
            code = getattr(forward, "__code__", None)
            if not isinstance(code, types.CodeType):
                continue
            for name in _code_names(code):
                if "eager" not in name or "attention" not in name or (id(namespace), name) in done:
                    continue
                original = namespace.get(name)
                if inspect.isfunction(original):
                    done.add((id(namespace), name))
                    patched.append((namespace, name, original))
                    namespace[name] = wrap(original)
        yield
    finally:
        for namespace, name, original in reversed(patched):
            namespace[name] = original


def _heads(module: nn.Module) -> int:
    """The module's head count as hand-written HF modules keep it (0: none found)."""
    for name in ("num_heads", "num_attention_heads", "num_attn_heads", "n_heads"):
        value = getattr(module, name, None)
        if isinstance(value, int):
            return value
    return 0


def _probabilities(weights: Tensor) -> Tensor:
    """The weights a module returned, as post-softmax weights: ProphetNet's encoder attention
    returns its scores before the softmax (transformers 5.x), which the reference then
    normalises the way the module does (``softmax`` over the keys)."""
    sums = weights.double().sum(-1)  # (B, H, Lq)
    finite = sums.isfinite()
    if finite.any() and torch.allclose(sums[finite], torch.ones_like(sums[finite]), atol=1e-4):
        return weights
    return torch.softmax(weights.float(), dim=-1).to(weights.dtype)


def eager_calls(model: nn.Module, inputs: Mapping[str, Any], seed: int = 0) -> list[Call]:
    """Every attention kernel call of every HF attention module in one eager forward (seeded
    with ``seed``: some models draw noise inside ``forward``), in call order: the weights its
    eager attention function returned (the module's second output when no such function
    ran, as for modules that compute attention by hand, `is_hand_attention`)."""
    calls: list[Call] = []
    handles = []
    kernels: dict[int, list[Tensor]] = {}
    torch.manual_seed(seed)
    crossing: dict[int, bool] = {}
    modules = [
        (path, m)
        for path, m in model.named_modules()
        if is_hf_attention(m) or is_hand_attention(m) or isinstance(m, nn.MultiheadAttention)
    ]
    hand = any(is_hand_attention(m) for _, m in modules)
    for path, module in modules:

        def pre(
            mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
            kernels[id(mod)] = []
            if is_banded_attention(mod):
                kernels[id(mod)] = [longformer_weights(mod, *args, **kwargs)]
            crossing[id(mod)] = any(kwargs.get(k) is not None for k in _CROSS_KWARGS)
            if isinstance(mod, nn.MultiheadAttention):  # a pooling head: its weights per head
                crossing[id(mod)] = args[0] is not args[1] if len(args) > 1 else False
                return args, {**kwargs, "need_weights": True, "average_attn_weights": False}
            return None

        def post(mod: nn.Module, args: Any, out: Any, path: str = path) -> None:
            found: list[Tensor | None] = list(kernels.pop(id(mod), []))
            second = out[1] if isinstance(out, tuple) and len(out) > 1 else None
            if isinstance(second, Tensor) and second.dim() == 3 and _heads(mod):
                # [B·H, Lq, Lk] as a hand-written module keeps them
                second = second.view(-1, _heads(mod), *second.shape[1:])  # (B, H, Lq, Lk)
            if not found and isinstance(second, Tensor) and second.dim() == 4:
                found = [_probabilities(second.detach())]  # no eager function: its own output
            flagged = crossing.pop(id(mod), False)
            for i, weights in enumerate(found or [None]):
                cross = flagged or (weights is not None and weights.shape[-2] != weights.shape[-1])
                calls.append(Call(path, weights, cross, i))

        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(module.register_forward_hook(post))

    def record(module: nn.Module, weights: Tensor) -> None:
        if id(module) in kernels and weights.dim() == 4:
            kernels[id(module)].append(weights)  # (B, H, Lq, Lk)

    try:
        with (
            _eager(model),
            _recording_eager_functions([m for _, m in modules], record),
            torch.no_grad(),
        ):
            # modules written by hand return their weights only when asked to
            model(**inputs, **({"output_attentions": True} if hand else {}))
    finally:
        for handle in handles:
            handle.remove()
    return calls


def eager_weights(model: nn.Module, inputs: Mapping[str, Any]) -> dict[str, Tensor]:
    """Post-softmax weights ``[B, H, Lq, Lk]`` of every HF attention call site under eager,
    keyed like attnprobe's layer names (`Call.site`); a site called again in the same forward
    (a module shared across steps) has its later calls under ``site#1``, ``site#2``, ….
    Calls whose weights could not be read are left out."""
    out: dict[str, Tensor] = {}
    seen: dict[str, int] = {}
    for call in eager_calls(model, inputs):
        n = seen.get(call.site, 0)
        seen[call.site] = n + 1
        if call.weights is not None:
            out[call.site if n == 0 else f"{call.site}#{n}"] = call.weights
    return out


def names_by_kind(model: nn.Module, inputs: Mapping[str, Any] | None = None) -> dict[str, str]:
    """``path -> "self" | "cross"`` for every HF attention module: from an eager call on
    ``inputs`` (a module never called is left out), or, without inputs, from the module
    (``is_cross_attention``, a ``Cross`` class name, an ``encoder_attn``/``cross`` path)."""
    if inputs is not None:
        kinds: dict[str, str] = {}
        for call in eager_calls(model, inputs):
            if kinds.get(call.path) != "cross":
                kinds[call.path] = "cross" if call.cross else "self"
        return kinds
    out = {}
    for path, module in model.named_modules():
        if not is_hf_attention(module):
            continue
        cross = (
            bool(getattr(module, "is_cross_attention", False))
            or "Cross" in type(module).__name__
            or re.search(r"(encoder_attn|cross|encdec)", path.rsplit(".", 1)[-1], re.I) is not None
        )
        out[path] = "cross" if cross else "self"
    return out


def describe(built: Built) -> str:
    """One line: the model, its kind and the shapes of its inputs."""
    shapes = ", ".join(
        f"{k}={tuple(v.shape)}" for k, v in built.inputs.items() if isinstance(v, Tensor)
    )
    params = sum(p.numel() for p in built.model.parameters())
    return (
        f"{built.entry.model_type} ({built.entry.class_name}, {built.kind}, "
        f"{params / 1e6:.2f}M params, {built.profile}): {shapes}"
    )
