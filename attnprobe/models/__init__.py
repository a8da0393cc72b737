"""Reference models: the fusion layer and late-fusion Transformer of the RollingQ paper.

Ni et al., *RollingQ: Reviving the Cooperation Dynamics in Multimodal Transformer*, ICML 2025,
arXiv 2506.11465 ("Vanilla MT"); see ``docs/concepts/rollingq.md``.
"""

from attnprobe.models.fusion import (
    ConcatFusion,
    FusionAttention,
    FusionOutput,
    LateFusionTransformer,
    ModalityEncoder,
)

__all__ = [
    "ConcatFusion",
    "FusionAttention",
    "FusionOutput",
    "LateFusionTransformer",
    "ModalityEncoder",
]
