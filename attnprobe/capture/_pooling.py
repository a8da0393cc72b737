"""Attention-pooling heads: a learned query (or a few) that reads a tower's tokens.

SigLIP's ``SiglipMultiheadAttentionPoolingHead`` (a ``probe`` parameter as the query of an
``nn.MultiheadAttention``), AIMv2's pooling head (a ``cls_token`` query into
``F.scaled_dot_product_attention``) and timm's ``AttentionPoolLatent`` (``latent``) attend from
their learned queries to the patches. `pooling_layouts` gives such a head's attention module a
query group of its own (``pool``) and the tower's layout as its keys.
"""

from __future__ import annotations

from torch import nn

from attnprobe.capture._base import adapter_for
from attnprobe.labels import InputLayout, LayerLayouts, ModalityLayout

__all__ = ["pooling_heads", "pooling_layouts"]

_QUERY_PARAMETERS = ("probe", "latent", "cls_token")
"""Names of the learned-query parameters ``[1, n, d]`` of known pooling heads."""


def pooling_heads(model: nn.Module, prefix: str | None = None) -> list[tuple[str, int]]:
    """``(path of the attention module, number of learned queries)`` of each pooling head under
    ``prefix``: a module with a ``[1, n, d]`` learned-query parameter whose only attention
    module is itself or one of its children."""
    heads = []
    for path, module in model.named_modules():
        if prefix and not (path == prefix or path.startswith(prefix + ".")):
            continue
        query = next(
            (
                p
                for name, p in module.named_parameters(recurse=False)
                if name in _QUERY_PARAMETERS and p.dim() == 3 and p.shape[0] == 1
            ),
            None,
        )
        if query is None:
            continue
        inner = [
            (n, m) for n, m in module.named_modules() if adapter_for(m) is not None
        ]  # the head itself ("") or its attention child
        if len(inner) != 1 or inner[0][0].count(".") > 0:
            continue
        name = inner[0][0]
        heads.append((f"{path}.{name}" if name and path else name or path, int(query.shape[1])))
    return heads


def pooling_layouts(
    model: nn.Module, tower: InputLayout, keys: InputLayout | None = None
) -> InputLayout | LayerLayouts:
    """``tower`` for the tower's own layers and, for each pooling head found under its prefix,
    a ``pool`` query group over the tower's tokens (``keys``, when the head reads only some of
    them, e.g. the patches without the prefix tokens); ``tower`` alone when there is none."""
    heads = pooling_heads(model, tower.prefix)
    if not heads:
        return tower
    read = tower if keys is None else keys
    queries: dict[object, object] = {path: ModalityLayout({"pool": n}) for path, n in heads}
    key_layouts: dict[object, object] = {path: read for path, _ in heads}
    queries[tower.layers] = tower
    return LayerLayouts(queries, key_layouts)
