"""attnprobe — which modality does a multimodal Transformer listen to?

Probes capture per-modality attention mass and key/query statistics from any PyTorch
Transformer on its own attention kernel, in bounded memory, without changing its outputs.

Example:
    >>> import torch, attnprobe as ap
    >>> from attnprobe.models import LateFusionTransformer
    >>> model = LateFusionTransformer({"audio": 6, "video": 8}, {"audio": 4, "video": 3}, 5)
    >>> with ap.probe(model, modalities=model.fusion_layout(), layers="fusion") as p:
    ...     _ = model(torch.randn(2, 4, 6), torch.randn(2, 3, 8))
    >>> p.result().to_frame().shape
    (9, 6)
"""

from attnprobe._errors import (
    AnalysisError,
    AttnProbeError,
    AttnProbeWarning,
    CaptureError,
    ModalityLayoutError,
    ProbeConfigError,
)
from attnprobe.analysis import History, KeyGap, ModalityBias, NoiseSweep, key_gap, modality_bias
from attnprobe.capture import Adapter, AttentionInputs, auto_layout, register_adapter
from attnprobe.check import SelfCheck, self_check
from attnprobe.corruption import corrupt
from attnprobe.labels import InputLayout, ModalityLayout, TokenLayout, VisionLayout
from attnprobe.probe import Probe, probe
from attnprobe.results import LayerResult, ProbeResult
from attnprobe.rollingq import RollingQ
from attnprobe.sweep import noise_sweep

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``attnprobe.plot`` and ``attnprobe.training`` load on first use, so that
    ``import attnprobe`` does not import matplotlib, seaborn or tqdm."""
    if name in ("plot", "training"):
        import importlib

        return importlib.import_module(f"attnprobe.{name}")
    raise AttributeError(f"module 'attnprobe' has no attribute {name!r}")


__all__ = [
    "Adapter",
    "AnalysisError",
    "AttentionInputs",
    "AttnProbeError",
    "AttnProbeWarning",
    "CaptureError",
    "History",
    "InputLayout",
    "KeyGap",
    "LayerResult",
    "ModalityBias",
    "ModalityLayout",
    "ModalityLayoutError",
    "NoiseSweep",
    "Probe",
    "ProbeConfigError",
    "ProbeResult",
    "RollingQ",
    "SelfCheck",
    "TokenLayout",
    "VisionLayout",
    "__version__",
    "auto_layout",
    "corrupt",
    "key_gap",
    "modality_bias",
    "noise_sweep",
    "probe",
    "register_adapter",
    "self_check",
]
