"""Reference models: the fusion layer and late-fusion Transformer of the RollingQ paper, and two
multi-stream fusion Transformers whose attention layers see different token sequences.

- `LateFusionTransformer`, `ConcatFusion`, `FusionAttention`, `ModalityEncoder`: Ni et al.,
  *RollingQ: Reviving the Cooperation Dynamics in Multimodal Transformer*, ICML 2025,
  arXiv 2506.11465 ("Vanilla MT"); see ``docs/concepts/rollingq.md``.
- `CrossModalTransformer` (with `CrossModalLayer`): MulT-style pairwise cross-modal attention,
  Tsai et al., ACL 2019, arXiv 1906.00295.
- `BottleneckTransformer`: MBT-style fusion through shared bottleneck tokens, Nagrani et al.,
  NeurIPS 2021, arXiv 2107.00135.

The multi-stream models declare the layouts of all their attention layers with
``layer_layouts()`` (an `attnprobe.labels.LayerLayouts`).
"""

from attnprobe.models.fusion import (
    ConcatFusion,
    FusionAttention,
    FusionOutput,
    LateFusionTransformer,
    ModalityEncoder,
)
from attnprobe.models.multistream import (
    BottleneckTransformer,
    CrossModalLayer,
    CrossModalTransformer,
)

__all__ = [
    "BottleneckTransformer",
    "ConcatFusion",
    "CrossModalLayer",
    "CrossModalTransformer",
    "FusionAttention",
    "FusionOutput",
    "LateFusionTransformer",
    "ModalityEncoder",
]
