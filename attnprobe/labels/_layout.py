"""Modality layouts: which group (modality) every token position belongs to.

A layout assigns each position of a sequence one group index ``0..G-1`` (a modality name, or a
special group such as ``cls``) or ``-1`` (ignored, e.g. padding). It is either the same for every
sample (contiguous spans from lengths, or slices) or given per sample as a ``[B, L]`` integer
tensor (``docs/concepts/layouts.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from attnprobe.errors import ModalityLayoutError

__all__ = ["IGNORE", "ModalityLayout", "as_layout", "check_label_tensor", "check_names"]

IGNORE = -1
"""Label of a position that belongs to no group (padding); its query rows are dropped."""


def check_names(names: Sequence[object], where: str) -> tuple[str, ...]:
    """Validate group names: at least one, non-empty strings, unique; ``where`` names the caller
    in the error message."""
    if len(names) == 0:
        raise ModalityLayoutError(
            f"{where}: expected at least one modality name, received none. "
            'Pass e.g. {"cls": 1, "audio": 64, "video": 196}.'
        )
    for name in names:
        if not isinstance(name, str) or not name:
            raise ModalityLayoutError(
                f"{where}: expected non-empty string modality names, received {name!r}."
            )
    if len(set(names)) != len(names):
        dupes = sorted({str(n) for n in names if list(names).count(n) > 1})
        raise ModalityLayoutError(
            f"{where}: modality names must be unique, received duplicates {dupes}."
        )
    return tuple(names)  # type: ignore[arg-type]


class ModalityLayout:
    """Which modality each token position belongs to.

    Build it from ordered lengths (contiguous spans, the common case), from slices
    (`from_spans`) or from a per-sample ``[B, L]`` label tensor (`from_labels`).
    Special groups such as a CLS token are ordinary groups.

    Args:
        lengths: ordered mapping ``name -> number of tokens``; the spans are laid out one after
            the other, in mapping order, starting at position 0.

    Raises:
        ModalityLayoutError: empty or duplicate names, or a negative or non-integer length.

    Examples:
        >>> import attnprobe as ap
        >>> layout = ap.ModalityLayout({"cls": 1, "audio": 3, "video": 2})
        >>> layout
        ModalityLayout(cls=1, audio=3, video=2; length=6)
        >>> layout.labels(batch_size=1, length=6).tolist()
        [[0, 1, 1, 1, 2, 2]]
    """

    names: tuple[str, ...]
    """Group names; the group index of a name is its position in this tuple."""

    def __init__(self, lengths: Mapping[str, int]) -> None:
        if not isinstance(lengths, Mapping):
            raise ModalityLayoutError(
                "ModalityLayout: expected a mapping of modality name -> token count, received "
                f"{type(lengths).__name__}. Use ModalityLayout.from_spans for slices or "
                "ModalityLayout.from_labels for a [B, L] label tensor."
            )
        names = check_names(list(lengths), "ModalityLayout")
        pieces = []
        for index, (name, count) in enumerate(lengths.items()):
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ModalityLayoutError(
                    f"ModalityLayout: expected a non-negative int token count for {name!r}, "
                    f"received {count!r}."
                )
            pieces.append(torch.full((count,), index, dtype=torch.long))
        self.names = names
        self._static: Tensor | None = torch.cat(pieces)  # (L,)
        self._per_sample: Tensor | None = None
        self._description = ", ".join(f"{n}={c}" for n, c in lengths.items())

    @classmethod
    def from_spans(cls, spans: Mapping[str, slice], length: int) -> ModalityLayout:
        """A layout from one slice per modality over a sequence of ``length`` tokens.

        Positions not covered by any slice are ignored (label ``-1``). Slices may not overlap,
        must have step 1 and must lie inside ``[0, length)``.

        Examples:
            >>> import attnprobe as ap
            >>> lay = ap.ModalityLayout.from_spans({"text": slice(0, 2), "image": slice(3, 5)}, 5)
            >>> lay.labels(1, 5).tolist()
            [[0, 0, -1, 1, 1]]
        """
        names = check_names(list(spans), "ModalityLayout.from_spans")
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise ModalityLayoutError(
                f"ModalityLayout.from_spans: expected a non-negative int length, received "
                f"{length!r}."
            )
        labels = torch.full((length,), IGNORE, dtype=torch.long)  # (L,)
        owner: dict[int, str] = {}
        for index, (name, span) in enumerate(spans.items()):
            if not isinstance(span, slice):
                raise ModalityLayoutError(
                    f"ModalityLayout.from_spans: expected a slice for {name!r}, received {span!r}."
                )
            if span.step not in (None, 1):
                raise ModalityLayoutError(
                    f"ModalityLayout.from_spans: span {name!r} must have step 1, received "
                    f"step {span.step}."
                )
            start = 0 if span.start is None else span.start
            stop = length if span.stop is None else span.stop
            if not (0 <= start <= stop <= length):
                raise ModalityLayoutError(
                    f"ModalityLayout.from_spans: span {name!r} = [{start}, {stop}) is out of "
                    f"range for a sequence of length {length}; expected 0 <= start <= stop <= "
                    f"{length} (negative indices are not accepted)."
                )
            for pos in range(start, stop):
                if pos in owner:
                    raise ModalityLayoutError(
                        f"ModalityLayout.from_spans: spans {owner[pos]!r} and {name!r} overlap "
                        f"at position {pos}; each position may belong to one modality only."
                    )
                owner[pos] = name
            labels[start:stop] = index
        layout = cls.__new__(cls)
        layout.names = names
        layout._static = labels
        layout._per_sample = None
        layout._description = ", ".join(
            f"{n}=[{s.start or 0}:{length if s.stop is None else s.stop}]" for n, s in spans.items()
        )
        return layout

    @classmethod
    def from_labels(cls, labels: Tensor, names: Sequence[str]) -> ModalityLayout:
        """A per-sample layout from a ``[B, L]`` integer tensor of group indices.

        ``labels[b, j]`` is the index into ``names`` of token ``j`` of sample ``b``, or ``-1``
        to ignore it (padding).

        Examples:
            >>> import torch, attnprobe as ap
            >>> labels = torch.tensor([[0, 1, 1, 2], [0, 1, 2, -1]])
            >>> ap.ModalityLayout.from_labels(labels, ["cls", "audio", "video"])
            ModalityLayout(per-sample labels [2, 4]; groups=cls, audio, video)
        """
        names_t = check_names(list(names), "ModalityLayout.from_labels")
        checked = check_label_tensor(labels, len(names_t), "ModalityLayout.from_labels")
        layout = cls.__new__(cls)
        layout.names = names_t
        layout._static = None
        layout._per_sample = checked.detach().to("cpu", torch.long)  # (B, L)
        layout._description = ""
        return layout

    @classmethod
    def uniform(cls, name: str) -> ModalityLayout:
        """A layout whose every token, whatever the sequence length, belongs to one group
        (an encoder's audio frames or image patches, seen as keys by a decoder).

        Examples:
            >>> import attnprobe as ap
            >>> layout = ap.ModalityLayout.uniform("audio")
            >>> layout, layout.labels(1, 3).tolist()
            (ModalityLayout(audio=every token), [[0, 0, 0]])
        """
        layout = cls.__new__(cls)
        layout.names = check_names([name], "ModalityLayout.uniform")
        layout._static = None
        layout._per_sample = None
        layout._description = f"{name}=every token"
        return layout

    @property
    def is_uniform(self) -> bool:
        """True when every token belongs to the one group, at any length (`uniform`)."""
        return self._static is None and self._per_sample is None

    @property
    def num_groups(self) -> int:
        """Number of groups ``G``."""
        return len(self.names)

    @property
    def length(self) -> int:
        """Sequence length ``L`` the layout describes (0 for a `uniform` layout: any)."""
        if self.is_uniform:
            return 0
        if self._static is not None:
            return int(self._static.numel())
        assert self._per_sample is not None
        return int(self._per_sample.shape[1])

    @property
    def is_per_sample(self) -> bool:
        """True when the labels differ per sample (built by `from_labels`)."""
        return self._per_sample is not None

    @property
    def counts(self) -> dict[str, int]:
        """Tokens per group (for per-sample layouts: summed over the batch)."""
        labels = self._static if self._static is not None else self._per_sample
        if labels is None:  # uniform: any number of tokens
            return {self.names[0]: 0}
        return {name: int((labels == i).sum()) for i, name in enumerate(self.names)}

    def index(self, name: str) -> int:
        """The group index of ``name``; raises `ModalityLayoutError` if unknown."""
        try:
            return self.names.index(name)
        except ValueError:
            raise ModalityLayoutError(
                f"unknown modality {name!r}; expected one of {list(self.names)}."
            ) from None

    def labels(
        self, batch_size: int, length: int, device: torch.device | str | None = None
    ) -> Tensor:
        """The ``[batch_size, length]`` label tensor for a batch (``-1`` = ignored).

        Raises:
            ModalityLayoutError: if the layout does not describe ``length`` tokens, or (per-sample
                layouts) was built for another batch size.
        """
        if self.is_uniform:
            return torch.zeros(batch_size, length, dtype=torch.long, device=device)  # (B, L)
        if self._static is not None:
            if self._static.numel() != length:
                raise ModalityLayoutError(
                    f"the modality layout covers {self._static.numel()} tokens "
                    f"({self._description}) but the sequence has {length} tokens; make the "
                    "lengths add up to the sequence length the attention layer sees (count "
                    "special tokens such as CLS too)."
                )
            return self._static.to(device).expand(batch_size, length)  # (B, L)
        assert self._per_sample is not None
        if tuple(self._per_sample.shape) != (batch_size, length):
            raise ModalityLayoutError(
                f"the per-sample labels have shape {list(self._per_sample.shape)} but the batch "
                f"has shape [batch={batch_size}, length={length}]; pass labels for this batch "
                "with probe.set_labels(labels)."
            )
        return self._per_sample.to(device)  # (B, L)

    def __repr__(self) -> str:
        if self.is_uniform:
            return f"ModalityLayout({self._description})"
        if self._per_sample is not None:
            shape = list(self._per_sample.shape)
            return (
                f"ModalityLayout(per-sample labels [{shape[0]}, {shape[1]}]; "
                f"groups={', '.join(self.names)})"
            )
        return f"ModalityLayout({self._description}; length={self.length})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModalityLayout):
            return NotImplemented
        if self.names != other.names:
            return False
        if self.is_uniform or other.is_uniform:
            return self.is_uniform and other.is_uniform
        mine = self._static if self._static is not None else self._per_sample
        theirs = other._static if other._static is not None else other._per_sample
        assert mine is not None and theirs is not None
        return mine.shape == theirs.shape and bool(torch.equal(mine, theirs))

    __hash__ = None  # type: ignore[assignment]


def as_layout(modalities: ModalityLayout | Mapping[str, int]) -> ModalityLayout:
    """``modalities`` as a `ModalityLayout` (a mapping ``name -> token count`` is built into one).

    Examples:
        >>> as_layout({"cls": 1, "audio": 3}) == as_layout(ModalityLayout({"cls": 1, "audio": 3}))
        True
    """
    return modalities if isinstance(modalities, ModalityLayout) else ModalityLayout(modalities)


def check_label_tensor(labels: object, num_groups: int, where: str) -> Tensor:
    """Validate a ``[B, L]`` integer label tensor with values in ``[-1, num_groups)``."""
    if not isinstance(labels, Tensor):
        raise ModalityLayoutError(
            f"{where}: expected labels as a torch.Tensor of shape [B, L], received "
            f"{type(labels).__name__}."
        )
    if labels.dim() != 2:
        raise ModalityLayoutError(
            f"{where}: expected labels of shape [B, L] (2 dimensions), received shape "
            f"{list(labels.shape)}."
        )
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ModalityLayoutError(
            f"{where}: expected an integer label tensor (e.g. torch.long), received dtype "
            f"{labels.dtype}; convert with labels.long()."
        )
    if labels.numel() > 0:
        low, high = int(labels.min()), int(labels.max())
        if low < IGNORE or high >= num_groups:
            raise ModalityLayoutError(
                f"{where}: expected label values in [-1, {num_groups - 1}] (-1 = ignore, else an "
                f"index into the {num_groups} modality names), received values in "
                f"[{low}, {high}]."
            )
    return labels
