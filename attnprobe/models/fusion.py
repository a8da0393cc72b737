"""The "Vanilla MT" fusion layer and a small late-fusion Transformer around it.

Fusion layer (RollingQ paper, arXiv 2506.11465, §3 and the reference code's fusion block, as
see ``docs/concepts/rollingq.md``): a learned fusion-CLS token is prepended to all
tokens of all modalities; one attention layer (1 head by default) with separate Q/K/V/output
projections with bias, temperature √d_head, dropout on the attention map and after the output
projection, and **no residual, no norm, no MLP**. A linear classifier reads the CLS output.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnprobe.labels import ModalityLayout

__all__ = [
    "ConcatFusion",
    "FusionAttention",
    "FusionOutput",
    "LateFusionTransformer",
    "ModalityEncoder",
]


def modality_names(
    owner: str, input_dims: Mapping[str, int], lengths: Mapping[str, int], minimum: int = 1
) -> tuple[str, ...]:
    """The modality names, in order, after checking that ``input_dims`` and ``lengths`` name
    the same ``minimum`` or more modalities in the same order (``owner`` names the model in the
    error)."""
    if list(input_dims) != list(lengths) or len(input_dims) < minimum:
        count = "" if minimum == 1 else f"{minimum} or more "
        raise ValueError(
            f"{owner}: input_dims and lengths must name the same {count}modalities in the "
            f"same order, received {list(input_dims)} and {list(lengths)}."
        )
    return tuple(input_dims)


@dataclass(frozen=True)
class FusionOutput:
    """What a fusion model returns when it has unimodal probe heads."""

    logits: Tensor
    """``[B, classes]`` the fused classifier's logits."""
    unimodal_logits: dict[str, Tensor]
    """Per modality, ``[B, classes]`` logits of a linear probe head on that encoder's *detached*
    CLS feature: it measures what the encoder alone knows and never trains the encoder."""


class FusionAttention(nn.Module):
    """Fusion attention with a learned CLS token (no residual, no norm, no MLP).

    Args:
        dim: model width ``d``.
        num_heads: attention heads (the paper uses 1).
        dropout: dropout on the attention map and after the output projection (paper: 0.2).

    Shapes: ``tokens`` ``[B, L, d]`` → output ``[B, 1 + L, d]``; row 0 is the fusion CLS.

    RollingQ (`attnprobe.RollingQ`) attaches as to any module that calls
    ``F.scaled_dot_product_attention``: ``RollingQ(...).attach(model, path)`` makes it the
    submodule ``rollingq``, and its rotation of the CLS query row reaches the attention kernel
    (keys, values and the other tokens' queries untouched).

    Examples:
        >>> import torch
        >>> layer = FusionAttention(dim=8, num_heads=2)
        >>> layer(torch.randn(3, 5, 8)).shape
        torch.Size([3, 6, 8])
    """

    def __init__(self, dim: int, num_heads: int = 1, dropout: float = 0.2) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"FusionAttention: dim ({dim}) must be divisible by num_heads ({num_heads})."
            )
        self.dim, self.num_heads, self.dropout = dim, num_heads, dropout
        self.head_dim = dim // num_heads
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.cls, std=0.02)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.out_drop = nn.Dropout(dropout)
        self.rollingq: nn.Module | None = None
        """The `attnprobe.RollingQ` corrector `RollingQ.attach` puts here (None: none)."""

    def forward(self, tokens: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """Attend over ``[CLS, tokens]``; ``key_padding_mask`` ``[B, L]`` is True at padding."""
        batch, length, _ = tokens.shape
        x = torch.cat([self.cls.expand(batch, 1, self.dim), tokens], dim=1)  # (B, 1+L, d)
        heads, head_dim = self.num_heads, self.head_dim

        def split(t: Tensor) -> Tensor:
            return t.view(batch, length + 1, heads, head_dim).transpose(1, 2)  # (B, H, 1+L, dh)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        mask = None
        if key_padding_mask is not None:
            keep = ~key_padding_mask.bool()  # (B, L)
            keep = torch.cat([keep.new_ones(batch, 1), keep], dim=1)  # (B, 1+L)
            mask = keep.view(batch, 1, 1, length + 1)  # (B, 1, 1, 1+L)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, 1+L, dh)
        out = out.transpose(1, 2).reshape(batch, length + 1, self.dim)  # (B, 1+L, d)
        result: Tensor = self.out_drop(self.out_proj(out))  # (B, 1+L, d)
        return result


class ModalityEncoder(nn.Module):
    """A per-modality pre-norm Transformer encoder with its own CLS token.

    Shapes: ``[B, L, d_in]`` → ``[B, 1 + L, d]`` (row 0 is the modality's CLS output).

    Examples:
        >>> import torch
        >>> ModalityEncoder(in_dim=5, length=4, dim=16)(torch.randn(2, 4, 5)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(
        self,
        in_dim: int,
        length: int,
        dim: int,
        depth: int = 2,
        heads: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, length + 1, dim))
        nn.init.trunc_normal_(self.cls, std=0.02)
        nn.init.trunc_normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            dim_feedforward=2 * dim,
            dropout=dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x)  # (B, L, d)
        cls = self.cls.expand(x.shape[0], 1, -1)  # (B, 1, d)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos  # (B, 1+L, d)
        out: Tensor = self.norm(self.encoder(tokens))  # (B, 1+L, d)
        return out


class _LateFusion(nn.Module):
    """What the late-fusion models share: one `ModalityEncoder` per modality and optional
    detached unimodal probe heads."""

    def __init__(
        self,
        input_dims: Mapping[str, int],
        lengths: Mapping[str, int],
        num_classes: int,
        dim: int,
        depth: int,
        heads: int,
        encoder_dropout: float,
        unimodal_heads: bool,
    ) -> None:
        super().__init__()
        self.modalities = modality_names(type(self).__name__, input_dims, lengths)
        self.lengths = dict(lengths)
        self.encoders = nn.ModuleDict(
            {
                m: ModalityEncoder(input_dims[m], lengths[m], dim, depth, heads, encoder_dropout)
                for m in self.modalities
            }
        )
        self.unimodal = (
            nn.ModuleDict({m: nn.Linear(dim, num_classes) for m in self.modalities})
            if unimodal_heads
            else None
        )

    def _encode(self, inputs: tuple[Tensor, ...]) -> list[Tensor]:
        """Each modality's encoder output ``[B, 1 + L_m, d]`` (row 0: its CLS)."""
        if len(inputs) != len(self.modalities):
            raise ValueError(
                f"{type(self).__name__}: expected {len(self.modalities)} inputs "
                f"({', '.join(self.modalities)}), received {len(inputs)}."
            )
        return [self.encoders[m](x) for m, x in zip(self.modalities, inputs, strict=True)]

    def _output(self, logits: Tensor, tokens: list[Tensor]) -> Tensor | FusionOutput:
        if self.unimodal is None:
            return logits
        unimodal = {
            m: self.unimodal[m](t[:, 0].detach())  # (B, classes), no gradient into the encoder
            for m, t in zip(self.modalities, tokens, strict=True)
        }
        return FusionOutput(logits, unimodal)


class LateFusionTransformer(_LateFusion):
    """Per-modality encoders, the fusion attention layer and a linear classifier.

    The model of the RollingQ paper at configurable size ("Vanilla MT"): the fusion layer sees
    ``[fusion CLS, encoder-A tokens (CLS included), encoder-B tokens, ...]``; the classifier reads
    the fusion CLS output. Call it with one tensor per modality, in the order of ``input_dims``.

    Args:
        input_dims: ``modality -> token feature size``, in order.
        lengths: ``modality -> number of tokens``.
        num_classes: classifier outputs.
        dim: encoder and fusion width ``d``.
        depth: layers per modality encoder.
        heads: heads per encoder layer.
        fusion_heads: heads of the fusion layer (paper: 1).
        dropout: fusion dropout (paper: 0.2).
        encoder_dropout: dropout inside the modality encoders.
        unimodal_heads: add a linear probe head per modality on the encoder's detached CLS
            output; the model then returns a `FusionOutput` instead of the logits tensor.

    Examples:
        >>> import torch
        >>> model = LateFusionTransformer({"audio": 6, "video": 8}, {"audio": 4, "video": 3}, 5)
        >>> model(torch.randn(2, 4, 6), torch.randn(2, 3, 8)).shape
        torch.Size([2, 5])
        >>> model.fusion_layout()
        ModalityLayout(cls=1, audio=5, video=4; length=10)
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        lengths: Mapping[str, int],
        num_classes: int,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        fusion_heads: int = 1,
        dropout: float = 0.2,
        encoder_dropout: float = 0.1,
        unimodal_heads: bool = False,
    ) -> None:
        super().__init__(
            input_dims, lengths, num_classes, dim, depth, heads, encoder_dropout, unimodal_heads
        )
        self.fusion = FusionAttention(dim, fusion_heads, dropout)
        self.head = nn.Linear(dim, num_classes)

    def fusion_layout(self) -> ModalityLayout:
        """The token layout the fusion layer sees: ``cls`` then each modality (+ its CLS)."""
        return ModalityLayout({"cls": 1, **{m: self.lengths[m] + 1 for m in self.modalities}})

    def forward(self, *inputs: Tensor) -> Tensor | FusionOutput:
        tokens = self._encode(inputs)  # per modality (B, 1+L_m, d)
        fused = self.fusion(torch.cat(tokens, dim=1))  # (B, 1 + Σ(1+L_m), d)
        logits: Tensor = self.head(fused[:, 0])  # (B, classes)
        return self._output(logits, tokens)


class ConcatFusion(_LateFusion):
    """The static late-fusion baseline: the same encoders as `LateFusionTransformer`, their CLS
    outputs concatenated, dropout, and a linear classifier ("Concat" in the RollingQ paper's
    tables).

    Examples:
        >>> import torch
        >>> model = ConcatFusion({"audio": 6, "video": 8}, {"audio": 4, "video": 3}, 5)
        >>> model(torch.randn(2, 4, 6), torch.randn(2, 3, 8)).shape
        torch.Size([2, 5])
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        lengths: Mapping[str, int],
        num_classes: int,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        dropout: float = 0.2,
        encoder_dropout: float = 0.1,
        unimodal_heads: bool = False,
    ) -> None:
        super().__init__(
            input_dims, lengths, num_classes, dim, depth, heads, encoder_dropout, unimodal_heads
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim * len(self.modalities), num_classes)

    def forward(self, *inputs: Tensor) -> Tensor | FusionOutput:
        tokens = self._encode(inputs)  # per modality (B, 1+L_m, d)
        features = torch.cat([t[:, 0] for t in tokens], dim=-1)  # (B, M·d)
        logits: Tensor = self.head(self.drop(features))  # (B, classes)
        return self._output(logits, tokens)
