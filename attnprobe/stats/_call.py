"""`Call`: one captured attention call as the statistics see it.

The tensors several statistics share — the kept query rows, the group masses, the one-hot
indicators, the key and query moments — are computed on first use and then reused, so each is
computed once per call whatever the statistics asked for. Everything is read without gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import torch
from torch import Tensor

from attnprobe import functional
from attnprobe.labels import CallLabels
from attnprobe.stats._contract import Dims

__all__ = ["Call"]


class Call:
    """One attention kernel call: its inputs, labels and the tensors derived from them.

    Shapes: ``B`` batch, ``H`` query heads, ``Hk`` key heads, ``Lk`` keys, ``R`` kept query
    rows, ``D`` head size, ``Gq``/``Gk`` query/key groups.

    Args:
        query: ``[B, H, Lq, D]`` as the kernel received it.
        key: ``[B, Hk, Lk, D]``.
        attn_mask: the kernel's mask (bool, True = attend; or additive float).
        is_causal: the kernel's causal flag.
        scale: the kernel's scale (None = ``1/sqrt(D)``).
        enable_gqa: whether the kernel repeats key heads (``Hk < H``).
        kernel: the attention function (SDPA signature); None = SDPA.
        labels: the call's `CallLabels`.
        dims: the call site's sizes.
        needs: the union of the statistics' `Statistic.needs`.
        fused_mass: ``[B, H, Lq, Gk]`` masses the fused kernel call already returned
            (detached).
        weights: ``[B, H, Lq, Lk]`` post-softmax weights the module computed itself (attention
            written by hand); masses and maps are read from them, not from a kernel call.
    """

    def __init__(
        self,
        *,
        query: Tensor,
        key: Tensor,
        attn_mask: Tensor | None,
        is_causal: bool,
        scale: float | None,
        enable_gqa: bool,
        kernel: Callable[..., Tensor] | None,
        labels: CallLabels,
        dims: Dims,
        needs: frozenset[str] = frozenset(),
        fused_mass: Tensor | None = None,
        weights: Tensor | None = None,
    ) -> None:
        self._query = query  # (B, H, Lq, D) as received: read under torch.no_grad()
        self._key = key  # (B, Hk, Lk, D)
        self.attn_mask = attn_mask
        self.is_causal = is_causal
        self.scale = scale
        self.enable_gqa = enable_gqa
        self.kernel = kernel
        self.labels = labels
        self.dims = dims
        self.needs = needs
        self._fused_mass = fused_mass
        self._weights = None if weights is None else weights.detach()  # (B, H, Lq, Lk)

    @property
    def query_all(self) -> Tensor:
        """``[B, H, Lq, D]`` every query row, as the kernel received it (detached)."""
        return _detached(self._query)

    @property
    def key(self) -> Tensor:
        """``[B, Hk, Lk, D]`` the keys (detached)."""
        return _detached(self._key)

    @property
    def key_labels(self) -> Tensor:
        """``[B, Lk]`` key group labels (``-1`` = none)."""
        return self.labels.keys

    @property
    def query_labels(self) -> Tensor:
        """``[B, R]`` query-group labels of the kept rows (``-1`` = ignored)."""
        return self.labels.queries

    @cached_property
    def _rows(self) -> tuple[Tensor, Tensor | None, bool]:
        """The kept query rows with their mask rows and causal flag."""
        rows = self.labels.rows
        if rows is None:
            return self._query, self.attn_mask, self.is_causal
        key_len = self._key.shape[2]
        causal = None
        if self.is_causal:  # the mask a causal flag becomes for these rows depends on them only
            causal = self.labels.get(
                ("causal_rows", key_len),
                lambda: functional.causal_rows_mask(rows, key_len),
            )  # (R, Lk)
        return functional.select_query_rows(
            self._query, self.attn_mask, self.is_causal, rows, key_len, causal_mask=causal
        )  # (B, H, R, D)

    @property
    def query(self) -> Tensor:
        """``[B, H, R, D]`` the kept query rows (detached)."""
        return _detached(self._rows[0])

    @property
    def kept_query(self) -> Tensor:
        """``[B, H, R, D]`` the kept query rows as received (not detached: for reading under
        ``torch.no_grad()`` without an operation more)."""
        return self._rows[0]

    @property
    def key_input(self) -> Tensor:
        """``[B, Hk, Lk, D]`` the keys as received (not detached, see `kept_query`)."""
        return self._key

    def attention(self, query: Tensor, rows: Tensor | None = None) -> Tensor:
        """``[B, H, R', Lk]`` post-softmax weights of kept query rows (all, or the ``rows``
        among them) through the call's kernel with ``V = I`` (the module's own weights when it
        computed them by hand; ``query`` is then the kept rows, `query`)."""
        if self._weights is not None:
            kept = self._kept_weights  # (B, H, R, Lk)
            return kept if rows is None else kept.index_select(2, rows)  # (B, H, R', Lk)
        _, mask, causal = self._rows
        if rows is not None:
            query, mask, causal = functional.select_query_rows(
                query, mask, causal, rows, self._key.shape[2]
            )  # (B, H, C, D)
        return functional.attention_maps(
            query,
            self._key,
            attn_mask=mask,
            is_causal=causal,
            scale=self.scale,
            enable_gqa=self.enable_gqa,
            kernel=self.kernel,
        )  # (B, H, R', Lk)

    @cached_property
    def _kept_weights(self) -> Tensor:
        """``[B, H, R, Lk]`` the module's own weights of the kept rows."""
        assert self._weights is not None
        rows = self.labels.rows
        return self._weights if rows is None else self._weights.index_select(2, rows)

    @cached_property
    def maps(self) -> Tensor:
        """``[B, H, R, Lk]`` full attention maps of the kept rows (``O(R·Lk)`` memory)."""
        return self.attention(self.query)

    @cached_property
    def mass(self) -> Tensor:
        """``[B, H, R, Gk]`` attention mass of each kept row on each key group: from the fused
        call, from the maps when a statistic needs them or the module computed its weights by
        hand, else by the indicator pass."""
        groups = len(self.dims.key_groups)
        rows = self.labels.rows
        if self._fused_mass is not None:
            mass = _detached(self._fused_mass)  # (B, H, Lq, Gk)
            return mass if rows is None else mass.index_select(2, rows)  # (B, H, R, Gk)
        if "maps" in self.needs or self._weights is not None:
            maps = self.maps  # (B, H, R, Lk)
            onehot = functional.group_indicator(self.key_labels, groups, maps.dtype)  # (B, Lk, G)
            return torch.einsum("bhqk,bkg->bhqg", maps, onehot)  # (B, H, R, G)
        query, mask, causal = self._rows
        head_dim = query.shape[-1]
        width = head_dim if groups <= head_dim else groups
        key_labels = self.key_labels
        batch, kv_heads, key_len, _ = self._key.shape
        values = self.labels.get(
            ("values", query.dtype, width, kv_heads),
            lambda: functional.indicator_values(key_labels, groups, query.dtype, width).expand(
                batch, kv_heads, key_len, width
            ),
        )  # (B, Hk, Lk, W)
        return functional.group_attention_mass(
            query,
            self._key,
            key_labels,
            groups,
            attn_mask=mask,
            is_causal=causal,
            scale=self.scale,
            enable_gqa=self.enable_gqa,
            kernel=self.kernel,
            values=values,
        )  # (B, H, R, G)

    @cached_property
    def query_onehot(self) -> Tensor:
        """``[B, R, Gq]`` float64 indicator of the kept rows' query groups."""
        labels, groups = self.query_labels, len(self.dims.query_groups)
        return self.labels.get(
            ("query_onehot",),
            lambda: functional.group_indicator(labels, groups, torch.float64),
        )

    @cached_property
    def key_onehot(self) -> Tensor:
        """``[B, Lk, Gk]`` float64 indicator of the key groups."""
        labels, groups = self.key_labels, len(self.dims.key_groups)
        return self.labels.get(
            ("key_onehot",),
            lambda: functional.group_indicator(labels, groups, torch.float64),
        )

    @cached_property
    def mass_sums(self) -> functional.MassSums:
        """`mass` summed over the rows of each query group (and per sample), float64."""
        return functional.reduce_mass(
            self.mass,
            self.query_labels,
            len(self.dims.query_groups),
            onehot=self.query_onehot,
            has_ignored=self.labels.queries_ignored,
        )

    @cached_property
    def key_moments(self) -> functional.GroupMoments:
        """Per key group token counts, ``Σ k``, ``Σ k²`` (and ``Σ k kᵀ`` when a statistic
        needs ``"key_outer"``), pooled and per sample, float64."""
        return functional.group_moments(
            self._key,
            self.key_labels,
            len(self.dims.key_groups),
            second_moment="key_outer" in self.needs,
            has_ignored=self.labels.keys_ignored,
            onehot=self.key_onehot,
        )

    @cached_property
    def query_moments(self) -> functional.GroupMoments:
        """Per query group counts, ``Σ q``, ``Σ q²`` of the kept rows, pooled and per sample."""
        return functional.group_moments(
            self.kept_query,
            self.query_labels,
            len(self.dims.query_groups),
            has_ignored=self.labels.queries_ignored,
            onehot=self.query_onehot,
        )


def _detached(tensor: Tensor) -> Tensor:
    """``tensor`` without its autograd history (itself when it has none: no operation)."""
    return tensor.detach() if tensor.requires_grad else tensor
