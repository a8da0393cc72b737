"""Bundled data for the RollingQ example (``docs/guides/datasets.md``): a seeded synthetic
multimodal benchmark with known per-sample quality, and UCI Multiple Features (handwritten
digits, six views), shipped inside the package.

Both return a `MultimodalDataset`, whose items ``((x_1, ..., x_M), y)`` feed
`attnprobe.training.Trainer` or a ``DataLoader`` directly.

Examples:
    >>> import attnprobe.datasets as ds
    >>> from attnprobe.models import LateFusionTransformer
    >>> train = ds.synthetic("train", num_samples=32)
    >>> model = LateFusionTransformer(train.input_dims, train.lengths, train.num_classes, dim=16)
    >>> inputs, targets = next(train.batches(8))
    >>> model(*inputs).shape
    torch.Size([8, 8])
"""

from attnprobe.datasets._base import MultimodalDataset
from attnprobe.datasets._mfeat import MFEAT_VIEWS, mfeat, mfeat_arrays
from attnprobe.datasets._synthetic import SPLITS, SyntheticConfig, synthetic

__all__ = [
    "MFEAT_VIEWS",
    "SPLITS",
    "MultimodalDataset",
    "SyntheticConfig",
    "mfeat",
    "mfeat_arrays",
    "synthetic",
]
