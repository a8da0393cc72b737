"""Layouts per layer: which layout the queries and the keys of each attention layer have.

A model with several token sequences (per-modality encoders and a joint layer, cross-modal
attention, an encoder–decoder, a pooling head whose learned query reads the patches) needs one
layout per sequence. `LayerLayouts` maps module-path patterns to layouts, first match wins:
``queries`` gives the layout of each layer's queries (and of its keys in self-attention calls),
``keys`` the layout of its keys in cross-attention calls (queries from one sequence, keys from
another). ``probe(model, modalities={...}, key_modalities={...})`` builds one from mappings;
`attnprobe.auto_layout` returns one for encoder–decoders and pooling heads.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Mapping
from typing import Union

from torch import nn

from attnprobe.errors import ProbeConfigError
from attnprobe.labels._inputs import InputLayout
from attnprobe.labels._layout import ModalityLayout

__all__ = ["LayerLayouts", "Layout", "LayoutLike", "MergedKeys", "Selector", "as_layout"]

Layout = Union[ModalityLayout, InputLayout]  # noqa: UP007 (a runtime alias)
"""A layout of one token sequence: fixed (`ModalityLayout`) or read from the inputs
(`InputLayout`)."""

LayoutLike = Union[ModalityLayout, InputLayout, Mapping[str, int]]  # noqa: UP007
"""What ``probe(modalities=...)`` accepts for one sequence: a layout or ``name -> length``."""

Selector = Union[str, Callable[[str, nn.Module], bool]]  # noqa: UP007
"""Which layers a layout covers: a glob on ``named_modules()`` paths or a predicate."""


def as_layout(value: object, argument: str) -> Layout:
    """One sequence's layout from what a user passed (``argument`` names it in errors)."""
    if isinstance(value, (ModalityLayout, InputLayout)):
        return value
    if isinstance(value, Mapping) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value.values()
    ):
        return ModalityLayout(value)
    raise ProbeConfigError(
        f"probe: expected {argument} as an attnprobe.ModalityLayout, an attnprobe.InputLayout "
        f"or a mapping of name -> length, received {_describe(value)}."
    )


class MergedKeys:
    """Keys that are the layer's own tokens followed by another sequence's, in one attention
    call: a decoder whose self- and cross-attention are merged (T5Gemma2), whose keys are
    ``cat([own keys, encoder keys])``. Give it as a layer's key layout (``keys=`` of
    `LayerLayouts`, or ``key_modalities={pattern: MergedKeys(...)}``).

    The first part of the keys is labelled like the layer's queries (its query layout, the
    whole sequence so far when it follows a KV cache), the rest by ``layout``; the key groups
    are the query layout's followed by ``layout``'s (a name in both is one group).

    Args:
        layout: the layout of the other sequence (a layout or ``name -> length``).
        own: ``"last"`` where the other sequence's keys come first and the layer's own last
            (Kosmos-2's latent queries over ``cat([image features, latents])``).

    Examples:
        >>> import torch, attnprobe as ap
        >>> from torch import nn
        >>> mha = nn.MultiheadAttention(8, 2, batch_first=True)
        >>> text, image = torch.randn(1, 3, 8), torch.randn(1, 4, 8)
        >>> keys = torch.cat([text, image], dim=1)  # (B, 3 + 4, D)
        >>> layouts = ap.labels.LayerLayouts(
        ...     {"text": 3}, keys=ap.labels.MergedKeys({"image": 4}))
        >>> with ap.probe(mha, modalities=layouts, layers=[""]) as p:
        ...     _ = mha(text, keys, keys)
        >>> p.result().layers[0].key_groups
        ('text', 'image')
    """

    def __init__(self, layout: object, *, own: str = "first") -> None:
        if isinstance(layout, MergedKeys):
            raise ProbeConfigError(
                "MergedKeys: expected the layout of the other sequence, received a MergedKeys; "
                "pass the layout it wraps."
            )
        if own not in ("first", "last"):
            raise ProbeConfigError(
                f"MergedKeys: expected own='first' (the layer's own tokens, then the other "
                f"sequence's) or own='last' (the other sequence's, then its own), received "
                f"{own!r}."
            )
        self.layout: Layout = as_layout(layout, "MergedKeys(layout)")
        """The layout of the other sequence's keys."""
        self.own = own
        """Where the layer's own tokens are among the keys: ``"first"`` or ``"last"``."""

    @property
    def names(self) -> tuple[str, ...]:
        """The other sequence's groups (the layer's own come first among the key groups)."""
        return self.layout.names

    def __repr__(self) -> str:
        own = "" if self.own == "first" else ", own='last'"
        return f"MergedKeys({self.layout!r}{own})"


Entry = Union[ModalityLayout, InputLayout, MergedKeys]  # noqa: UP007 (a runtime alias)
"""A layer's layout entry: a layout, or (keys only) `MergedKeys`."""


def _show(entry: Entry) -> str:
    """``[a, b]``, ``own + [a, b]`` or ``[a, b] + own`` (merged keys)."""
    groups = f"[{', '.join(entry.names)}]"
    if not isinstance(entry, MergedKeys):
        return groups
    return f"own + {groups}" if entry.own == "first" else f"{groups} + own"


def _describe(value: object) -> str:
    if isinstance(value, Mapping):
        kinds = sorted({type(v).__name__ for v in value.values()})
        return f"a mapping with {'/'.join(kinds) or 'no'} values"
    return type(value).__name__


def _is_layout_like(value: object) -> bool:
    return isinstance(value, (ModalityLayout, InputLayout, MergedKeys, Mapping))


def _as_entry(value: object, argument: str) -> Layout | MergedKeys:
    """`as_layout`, and `MergedKeys` as they are where keys are described."""
    if isinstance(value, MergedKeys):
        if argument.startswith("key_modalities"):
            return value
        raise ProbeConfigError(
            f"probe: expected {argument} as a layout, received MergedKeys, which describes "
            "keys; give it as the layer's key layout (key_modalities or LayerLayouts(keys=))."
        )
    return as_layout(value, argument)


def _entries(value: object, argument: str) -> tuple[tuple[Selector, Entry], ...]:
    """``(selector, layout)`` pairs from one layout (covering every layer) or a mapping
    ``pattern -> layout``."""
    if isinstance(value, InputLayout):
        return ((value.layers, value),)
    if isinstance(value, ModalityLayout):
        return (("*", value),)
    if isinstance(value, MergedKeys):
        return (("*", _as_entry(value, argument)),)
    if isinstance(value, Mapping) and value:
        values = list(value.values())
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return (("*", ModalityLayout(value)),)
        if all(_is_layout_like(v) for v in values):
            out: list[tuple[Selector, Entry]] = []
            for pattern, layout in value.items():
                if callable(pattern):  # a predicate (name, module) -> bool
                    out.append((pattern, _as_entry(layout, f"{argument}[{_label(pattern)}]")))
                    continue
                if not isinstance(pattern, str) or not pattern:
                    raise ProbeConfigError(
                        f"probe: expected the keys of a per-layer {argument} mapping to be "
                        "module-path patterns (strings, e.g. 'encoder.layers.*', or predicates "
                        f"(name, module) -> bool), received {pattern!r}."
                    )
                out.append((pattern, _as_entry(layout, f"{argument}[{pattern!r}]")))
            return tuple(out)
    raise ProbeConfigError(
        f"probe: expected {argument} as a layout (an attnprobe.ModalityLayout, an "
        "attnprobe.InputLayout, or a mapping of name -> length such as {'audio': 4, "
        "'video': 6}) or as a mapping of layer pattern -> layout (e.g. {'a_enc.*': "
        f"{{'audio': 4}}, 'joint.*': {{'audio': 4, 'video': 6}}}}), received {_describe(value)}."
    )


def _matches(selector: Selector, name: str, module: nn.Module) -> bool:
    if isinstance(selector, str):
        return fnmatch.fnmatchcase(name, selector)
    return bool(selector(name, module))


def _label(selector: Selector) -> str:
    return (
        repr(selector)
        if isinstance(selector, str)
        else getattr(selector, "__qualname__", repr(selector))
    )


class LayerLayouts:
    """The layouts of a model's token sequences, per attention layer.

    Args:
        queries: the layout of the layers' queries (and of their keys when a call is
            self-attention): one layout for every layer, or a mapping from a module-path glob
            (as in ``probe(layers=...)``) to a layout; the first pattern that matches a layer
            wins.
        keys: the layout of the keys of cross-attention calls (queries from one sequence, keys
            from another), in the same forms; None when no layer attends across sequences.

    A layer's layout pair is fixed when the probe is created; whether a call is
    cross-attention is decided per call (a HuggingFace module called with
    ``key_value_states``, ``nn.MultiheadAttention`` called with a query that is not its key,
    or, for other modules, a layer that has a key layout).

    Examples:
        A two-stream model: an audio encoder, a video encoder, a joint layer over both, and
        cross-modal attention both ways:

        >>> import attnprobe as ap
        >>> layouts = ap.labels.LayerLayouts(
        ...     {"a_enc.*": {"audio": 4}, "v_enc.*": {"video": 6},
        ...      "a2v": {"audio": 4}, "v2a": {"video": 6},
        ...      "joint": {"audio": 4, "video": 6}},
        ...     keys={"a2v": {"video": 6}, "v2a": {"audio": 4}},
        ... )
        >>> layouts
        LayerLayouts(queries={'a_enc.*': [audio], 'v_enc.*': [video], 'a2v': [audio], 'v2a': [video], 'joint': [audio, video]}, keys={'a2v': [video], 'v2a': [audio]})
    """  # noqa: E501

    def __init__(self, queries: object, keys: object = None) -> None:
        if isinstance(queries, LayerLayouts):
            raise ProbeConfigError(
                "LayerLayouts: expected layouts as queries, received a LayerLayouts; pass it to "
                "probe(modalities=...) as it is."
            )
        self.queries: tuple[tuple[Selector, Layout], ...] = tuple(
            (sel, lay)
            for sel, lay in _entries(queries, "modalities")
            if not isinstance(lay, MergedKeys)  # refused by _entries
        )
        """``(pattern, layout)`` of the queries, in the order they are tried."""
        self.keys: tuple[tuple[Selector, Entry], ...] = (
            () if keys is None else _entries(keys, "key_modalities")
        )
        """``(pattern, layout)`` of the keys of cross-attention calls, in order (a
        `MergedKeys` where the layer's own keys come first)."""
        # equal fixed layouts describe one sequence (e.g. {"audio": 4} for the audio encoder
        # and as the keys of video-to-audio attention): share one object, so one set_labels
        # reaches every layer that sees it
        shared: list[ModalityLayout] = []

        def one(layout: Layout) -> Layout:
            if not isinstance(layout, ModalityLayout):
                return layout
            same = next((s for s in shared if s == layout), None)
            if same is None:
                shared.append(layout)
                return layout
            return same

        def one_entry(entry: Entry) -> Entry:
            if isinstance(entry, MergedKeys):
                entry.layout = one(entry.layout)
                return entry
            return one(entry)

        self.queries = tuple((sel, one(lay)) for sel, lay in self.queries)
        self.keys = tuple((sel, one_entry(lay)) for sel, lay in self.keys)

    @classmethod
    def from_options(cls, modalities: object, key_modalities: object = None) -> LayerLayouts:
        """What ``probe(modalities=..., key_modalities=...)`` describe."""
        if isinstance(modalities, LayerLayouts):
            if key_modalities is not None:
                raise ProbeConfigError(
                    "probe: modalities is a LayerLayouts, which holds the key layouts too; "
                    "received key_modalities as well. Put the key layouts into the "
                    "LayerLayouts (keys=...) and drop key_modalities."
                )
            return modalities
        return cls(modalities, key_modalities)

    @property
    def is_per_layer(self) -> bool:
        """Whether some layout covers only some layers (a pattern other than ``"*"``)."""
        return any(
            not (isinstance(selector, str) and selector == "*")
            and not (index == 0 and len(entries) == 1 and not isinstance(selector, str))
            for entries in (self.queries, self.keys)
            for index, (selector, _) in enumerate(entries)
        )

    def layouts(self) -> Iterator[Layout]:
        """Every distinct layout object, queries first (each once)."""
        seen: set[int] = set()
        for _, entry in (*self.queries, *self.keys):
            layout = entry.layout if isinstance(entry, MergedKeys) else entry
            if id(layout) not in seen:
                seen.add(id(layout))
                yield layout

    def query_layout(self, name: str, module: nn.Module) -> Layout | None:
        """The layout of the queries of layer ``name`` (the first matching pattern), or None."""
        return next((lay for sel, lay in self.queries if _matches(sel, name, module)), None)

    def key_layout(self, name: str, module: nn.Module) -> Layout | None:
        """The layout of the keys of layer ``name`` in cross-attention calls (of the keys after
        its own for `MergedKeys`), or None."""
        entry = self._key_entry(name, module)
        return entry.layout if isinstance(entry, MergedKeys) else entry

    def merged_keys(self, name: str, module: nn.Module) -> MergedKeys | None:
        """The `MergedKeys` of layer ``name`` when its cross-attention calls attend to its own
        tokens and the key layout's in one call, else None."""
        entry = self._key_entry(name, module)
        return entry if isinstance(entry, MergedKeys) else None

    def _key_entry(self, name: str, module: nn.Module) -> Entry | None:
        return next((lay for sel, lay in self.keys if _matches(sel, name, module)), None)

    def check_patterns(self, modules: list[tuple[str, nn.Module]]) -> None:
        """Every pattern must give some attention module its layout.

        Raises:
            ProbeConfigError: a pattern matches no attention module, or every module it matches
                already has a layout from an earlier pattern (two layouts for one layer).
        """
        names = [n for n, _ in modules]
        hint = ", ".join(repr(n) for n in names[:8]) + (" …" if len(names) > 8 else "")
        for argument, entries in (("modalities", self.queries), ("key_modalities", self.keys)):
            if len(entries) < 2 and not (entries and isinstance(entries[0][0], str)):
                continue  # one layout for every layer: nothing to check
            for index, (selector, _) in enumerate(entries):
                if not isinstance(selector, str):
                    continue
                matched = [(n, m) for n, m in modules if _matches(selector, n, m)]
                if not matched:
                    if len(entries) == 1 and selector == "*":
                        continue
                    raise ProbeConfigError(
                        f"probe: the {argument} pattern {selector!r} matches no attention "
                        f"module; attention modules: {hint or 'none found'}. Patterns are "
                        "globs on module paths, as in layers=..."
                    )
                earlier = entries[:index]
                shadowed = [
                    (n, next(s for s, _ in earlier if _matches(s, n, m)))
                    for n, m in matched
                    if any(_matches(s, n, m) for s, _ in earlier)
                ]
                if len(shadowed) == len(matched):
                    layer, first = shadowed[0]
                    raise ProbeConfigError(
                        f"probe: two {argument} layouts for layer {layer!r}: the pattern "
                        f"{_label(first)} comes first and wins, so {selector!r} gives no layer "
                        "its layout. Remove one, or put the more specific pattern first "
                        "(the first matching pattern wins)."
                    )

    def __repr__(self) -> str:
        def show(entries: tuple[tuple[Selector, Entry], ...]) -> str:
            return ", ".join(f"{_label(sel)}: {_show(lay)}" for sel, lay in entries)

        keys = f", keys={{{show(self.keys)}}}" if self.keys else ""
        return f"LayerLayouts(queries={{{show(self.queries)}}}{keys})"
