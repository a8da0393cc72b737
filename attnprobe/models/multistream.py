"""Two multi-stream fusion Transformers: cross-modal attention (MulT) and attention bottlenecks
(MBT), each declaring the layouts of all its attention layers (`attnprobe.labels.LayerLayouts`).

- `CrossModalTransformer`: Tsai et al., *Multimodal Transformer for Unaligned Multimodal
  Language Sequences*, ACL 2019, arXiv 1906.00295. Every ordered pair of modalities has a stack
  of cross-modal layers whose queries come from the target stream and whose keys and values
  come from the source stream; a self-attention layer per target then fuses what it gathered.
- `BottleneckTransformer`: Nagrani et al., *Attention Bottlenecks for Multimodal Fusion*,
  NeurIPS 2021, arXiv 2107.00135. One Transformer per modality; from ``fusion_layer`` on, each
  also attends over a few shared bottleneck tokens, which are averaged across the modalities
  after every layer: the only path between the streams.

Both are small and configurable, built for probing: every attention module is an
``nn.MultiheadAttention`` at a predictable path, and ``layer_layouts()`` names the token groups
of its queries (and, for cross-attention, of its keys).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from attnprobe.labels import LayerLayouts
from attnprobe.models.fusion import modality_names

__all__ = ["BottleneckTransformer", "CrossModalLayer", "CrossModalTransformer"]


def _encoder_layer(dim: int, heads: int, dropout: float) -> nn.TransformerEncoderLayer:
    """A pre-norm self-attention layer (MHA at ``self_attn``), batch first."""
    return nn.TransformerEncoderLayer(
        dim,
        heads,
        dim_feedforward=2 * dim,
        dropout=dropout,
        batch_first=True,
        norm_first=True,
    )


class CrossModalLayer(nn.Module):
    """One pre-norm cross-modal attention layer: the target attends to the source.

    ``x_t + attn(query=norm(x_t), key=norm(x_s), value=norm(x_s))``, then a pre-norm
    feed-forward block with its residual (MulT's crossmodal transformer layer; one LayerNorm
    normalises both streams, as in the reference code).

    Args:
        dim: model width ``d``.
        heads: attention heads.
        dropout: dropout on the attention map, after the attention and in the feed-forward block.

    Shapes: ``target`` ``[B, L_t, d]`` and ``source`` ``[B, L_s, d]`` → ``[B, L_t, d]``.

    Examples:
        >>> import torch
        >>> layer = CrossModalLayer(dim=8, heads=2)
        >>> layer(torch.randn(3, 5, 8), torch.randn(3, 7, 8)).shape
        torch.Size([3, 5, 8])
    """

    def __init__(self, dim: int, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, 2 * dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(2 * dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, target: Tensor, source: Tensor) -> Tensor:
        query, memory = self.norm(target), self.norm(source)  # (B, L_t, d), (B, L_s, d)
        attended, _ = self.attn(query=query, key=memory, value=memory, need_weights=False)
        x = target + self.drop(attended)  # (B, L_t, d)
        out: Tensor = x + self.ff(self.norm_ff(x))  # (B, L_t, d)
        return out


class CrossModalTransformer(nn.Module):
    """A MulT-style model: pairwise cross-modal attention, per-target fusion, a linear classifier.

    Each modality is projected to ``d`` and gets a learned positional embedding (no CLS token).
    For every ordered pair ``s → t`` (``s != t``) a stack of ``depth`` `CrossModalLayer` lets
    the target ``t`` attend to the source ``s`` (queries from ``t``, keys and values from the
    projected source, the same for every layer of the stack, as in MulT). Per target, one
    pre-norm self-attention layer runs over the *sequence* concatenation of its stacks' outputs,
    one span of ``L_t`` tokens per source in the order of ``input_dims`` (MulT concatenates
    along the features instead; spans keep the sources apart for probing). The classifier reads
    the concatenated mean-pooled target streams. Call it with one tensor per modality, in the
    order of ``input_dims``.

    Attention modules (all ``nn.MultiheadAttention``): ``cross.{s}_to_{t}.{i}.attn`` and
    ``fuse.{t}.self_attn``; `layer_layouts` declares their layouts.

    Args:
        input_dims: ``modality -> token feature size``, in order (two or more modalities).
        lengths: ``modality -> number of tokens``.
        num_classes: classifier outputs.
        dim: model width ``d``.
        depth: cross-modal layers per ordered pair.
        heads: heads of every attention layer.
        dropout: dropout inside every layer.

    Examples:
        >>> import torch
        >>> model = CrossModalTransformer({"audio": 6, "video": 8}, {"audio": 4, "video": 3}, 5)
        >>> model(torch.randn(2, 4, 6), torch.randn(2, 3, 8)).shape
        torch.Size([2, 5])
        >>> layouts = model.layer_layouts()
        >>> layouts.query_layout("cross.audio_to_video.1.attn", model)
        ModalityLayout(video=3; length=3)
        >>> layouts.key_layout("cross.audio_to_video.1.attn", model)
        ModalityLayout(audio=4; length=4)
        >>> layouts.query_layout("fuse.video.self_attn", model)
        ModalityLayout(video_from_audio=3; length=3)
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        lengths: Mapping[str, int],
        num_classes: int,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.modalities = modality_names(type(self).__name__, input_dims, lengths, 2)
        self.lengths = dict(lengths)
        self.pairs = tuple((s, t) for t in self.modalities for s in self.modalities if s != t)
        """``(source, target)`` of every cross-modal stack, grouped by target."""
        self.embed = nn.ModuleDict({m: nn.Linear(input_dims[m], dim) for m in self.modalities})
        self.pos = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(1, lengths[m], dim)) for m in self.modalities}
        )
        for pos in self.pos.values():
            nn.init.trunc_normal_(pos, std=0.02)
        self.cross = nn.ModuleDict(
            {
                f"{s}_to_{t}": nn.ModuleList(
                    CrossModalLayer(dim, heads, dropout) for _ in range(depth)
                )
                for s, t in self.pairs
            }
        )
        self.fuse = nn.ModuleDict({t: _encoder_layer(dim, heads, dropout) for t in self.modalities})
        self.norm = nn.ModuleDict({t: nn.LayerNorm(dim) for t in self.modalities})
        self.head = nn.Linear(dim * len(self.modalities), num_classes)

    def layer_layouts(self) -> LayerLayouts:
        """The layouts of every attention layer's queries, and of the cross layers' keys.

        ``cross.{s}_to_{t}.*``: queries ``{t: L_t}``, keys ``{s: L_s}``. ``fuse.{t}.*``: queries
        (and keys) ``{"{t}_from_{s}": L_t, ...}``, one span per source ``s != t`` in the order
        of ``input_dims`` (two modalities: a single group).
        """
        queries: dict[str, dict[str, int]] = {}
        keys: dict[str, dict[str, int]] = {}
        for s, t in self.pairs:
            queries[f"cross.{s}_to_{t}.*"] = {t: self.lengths[t]}
            keys[f"cross.{s}_to_{t}.*"] = {s: self.lengths[s]}
        for t in self.modalities:
            queries[f"fuse.{t}.*"] = {
                f"{t}_from_{s}": self.lengths[t] for s in self.modalities if s != t
            }
        return LayerLayouts(queries, keys)

    def forward(self, *inputs: Tensor) -> Tensor:
        if len(inputs) != len(self.modalities):
            raise ValueError(
                f"{type(self).__name__}: expected {len(self.modalities)} inputs "
                f"({', '.join(self.modalities)}), received {len(inputs)}."
            )
        x = {
            m: self.embed[m](t) + self.pos[m]  # (B, L_m, d)
            for m, t in zip(self.modalities, inputs, strict=True)
        }
        pooled = []
        for t in self.modalities:
            spans = []
            for s in self.modalities:
                if s == t:
                    continue
                h = x[t]  # (B, L_t, d)
                for layer in self.cross[f"{s}_to_{t}"].children():
                    h = layer(h, x[s])  # (B, L_t, d)
                spans.append(h)
            fused = self.fuse[t](torch.cat(spans, dim=1))  # (B, (M-1)·L_t, d)
            pooled.append(self.norm[t](fused).mean(dim=1))  # (B, d)
        logits: Tensor = self.head(torch.cat(pooled, dim=-1))  # (B, classes)
        return logits


class BottleneckTransformer(nn.Module):
    """An MBT-style model: one Transformer per modality, fused through shared bottleneck tokens.

    Each modality is projected to ``d``, gets its own CLS token and a learned positional
    embedding, and runs through ``depth`` pre-norm self-attention layers. Layers before
    ``fusion_layer`` are unimodal (sequence ``[cls, tokens]``); from ``fusion_layer`` on each
    sees ``[cls, tokens, bottleneck]``, and after every such layer the bottleneck outputs are
    averaged across the modalities (the initial ``bottleneck`` tokens are one learned parameter
    shared by all). The logits are the mean of per-modality linear heads on the normalised CLS
    outputs. Call it with one tensor per modality, in the order of ``input_dims``.

    Attention modules (all ``nn.MultiheadAttention``): ``streams.{m}.{i}.self_attn``;
    `layer_layouts` declares their layouts.

    Args:
        input_dims: ``modality -> token feature size``, in order.
        lengths: ``modality -> number of tokens``.
        num_classes: classifier outputs.
        dim: model width ``d``.
        depth: layers per modality.
        fusion_layer: index of the first layer that attends over the bottleneck (``depth``: no
            fusion).
        bottleneck: number of bottleneck tokens ``B``.
        heads: heads per layer.
        dropout: dropout inside every layer.

    Examples:
        >>> import torch
        >>> model = BottleneckTransformer({"audio": 6, "video": 8}, {"audio": 4, "video": 3}, 5)
        >>> model(torch.randn(2, 4, 6), torch.randn(2, 3, 8)).shape
        torch.Size([2, 5])
        >>> layouts = model.layer_layouts()
        >>> layouts.query_layout("streams.audio.1.self_attn", model)
        ModalityLayout(cls=1, audio=4; length=5)
        >>> layouts.query_layout("streams.video.2.self_attn", model)
        ModalityLayout(cls=1, video=3, bottleneck=4; length=8)
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        lengths: Mapping[str, int],
        num_classes: int,
        dim: int = 64,
        depth: int = 4,
        fusion_layer: int = 2,
        bottleneck: int = 4,
        heads: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.modalities = modality_names(name, input_dims, lengths)
        if {"cls", "bottleneck"} & set(self.modalities):
            raise ValueError(
                f"{name}: 'cls' and 'bottleneck' name token groups of every stream; rename the "
                f"modalities {list(self.modalities)}."
            )
        if not 0 <= fusion_layer <= depth or bottleneck < 1:
            raise ValueError(
                f"{name}: expected 0 <= fusion_layer <= depth and bottleneck >= 1, received "
                f"fusion_layer={fusion_layer}, depth={depth}, bottleneck={bottleneck}."
            )
        self.lengths = dict(lengths)
        self.depth, self.fusion_layer, self.num_bottleneck = depth, fusion_layer, bottleneck
        self.embed = nn.ModuleDict({m: nn.Linear(input_dims[m], dim) for m in self.modalities})
        self.cls = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(1, 1, dim)) for m in self.modalities}
        )
        self.pos = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(1, 1 + lengths[m], dim)) for m in self.modalities}
        )
        self.bottleneck = nn.Parameter(torch.zeros(1, bottleneck, dim))
        for param in (*self.cls.values(), *self.pos.values(), self.bottleneck):
            nn.init.trunc_normal_(param, std=0.02)
        self.streams = nn.ModuleDict(
            {
                m: nn.ModuleList(_encoder_layer(dim, heads, dropout) for _ in range(depth))
                for m in self.modalities
            }
        )
        self.norm = nn.ModuleDict({m: nn.LayerNorm(dim) for m in self.modalities})
        self.head = nn.ModuleDict({m: nn.Linear(dim, num_classes) for m in self.modalities})

    def layer_layouts(self) -> LayerLayouts:
        """The layouts of every layer's queries (and keys: all self-attention), one pattern
        ``streams.{m}.{i}.*`` per layer: ``{"cls": 1, m: L_m}`` for ``i < fusion_layer``,
        ``{"cls": 1, m: L_m, "bottleneck": B}`` from ``fusion_layer`` on."""
        queries: dict[str, dict[str, int]] = {}
        for m in self.modalities:
            for i in range(self.depth):
                layout = {"cls": 1, m: self.lengths[m]}
                if i >= self.fusion_layer:
                    layout["bottleneck"] = self.num_bottleneck
                queries[f"streams.{m}.{i}.*"] = layout
        return LayerLayouts(queries)

    def forward(self, *inputs: Tensor) -> Tensor:
        if len(inputs) != len(self.modalities):
            raise ValueError(
                f"{type(self).__name__}: expected {len(self.modalities)} inputs "
                f"({', '.join(self.modalities)}), received {len(inputs)}."
            )
        batch = inputs[0].shape[0]
        x = {}
        for m, t in zip(self.modalities, inputs, strict=True):
            cls = self.cls[m].expand(batch, 1, -1)  # (B, 1, d)
            x[m] = torch.cat([cls, self.embed[m](t)], dim=1) + self.pos[m]  # (B, 1+L_m, d)
        shared = self.bottleneck.expand(batch, -1, -1)  # (B, n_b, d)
        layers = {m: list(self.streams[m].children()) for m in self.modalities}
        for i in range(self.depth):
            if i < self.fusion_layer:
                x = {m: layers[m][i](x[m]) for m in self.modalities}  # (B, 1+L_m, d)
                continue
            updates = []
            for m in self.modalities:
                out = layers[m][i](torch.cat([x[m], shared], dim=1))  # (B, 1+L_m+n_b, d)
                x[m] = out[:, : 1 + self.lengths[m]]  # (B, 1+L_m, d)
                updates.append(out[:, 1 + self.lengths[m] :])  # (B, n_b, d)
            shared = torch.stack(updates).mean(dim=0)  # (B, n_b, d)
        logits = torch.stack(
            [self.head[m](self.norm[m](x[m][:, 0])) for m in self.modalities]
        )  # (M, B, classes)
        result: Tensor = logits.mean(dim=0)  # (B, classes)
        return result
