"""attnprobe — which modality does a multimodal Transformer listen to?

Probes capture per-modality attention mass and key/query statistics from any PyTorch
Transformer on its own attention kernel, in bounded memory, without changing its outputs.

Examples:
    >>> import torch, attnprobe as ap
    >>> from attnprobe.models import LateFusionTransformer
    >>> model = LateFusionTransformer({"audio": 6, "video": 8}, {"audio": 4, "video": 3}, 5)
    >>> with ap.probe(model, modalities=model.fusion_layout(), layers="fusion") as p:
    ...     _ = model(torch.randn(2, 4, 6), torch.randn(2, 3, 8))
    >>> p.result().to_frame().shape
    (9, 6)
"""

from attnprobe._probe import Probe, probe
from attnprobe.analysis import History, key_gap, modality_bias
from attnprobe.capture import Adapter, AttentionInputs, auto_layout, register_adapter
from attnprobe.check import self_check
from attnprobe.errors import AttnProbeError, AttnProbeWarning
from attnprobe.labels import InputLayout, ModalityLayout
from attnprobe.results import ProbeResult
from attnprobe.rollingq import RollingQ
from attnprobe.sweep import noise_sweep

__version__ = "0.2.0"

_MOVED = {
    "AnalysisError": "attnprobe.errors",
    "CaptureError": "attnprobe.errors",
    "ModalityLayoutError": "attnprobe.errors",
    "ProbeConfigError": "attnprobe.errors",
    "KeyGap": "attnprobe.analysis",
    "ModalityBias": "attnprobe.analysis",
    "NoiseSweep": "attnprobe.analysis",
    "LayerResult": "attnprobe.results",
    "SelfCheck": "attnprobe.check",
    "TokenLayout": "attnprobe.labels",
    "VisionLayout": "attnprobe.labels",
    "corrupt": "attnprobe.corruption",
}
"""Names the top level exported before 0.2, and the module that holds each now."""


def __getattr__(name: str) -> object:
    """``attnprobe.plot``, ``attnprobe.training`` and ``attnprobe.callbacks`` load on first
    use, so that ``import attnprobe`` does not import matplotlib, seaborn or tqdm; the names
    that moved off the top level (`_MOVED`) still resolve, with a ``DeprecationWarning`` naming
    their home."""
    import importlib

    if name in ("plot", "training", "callbacks"):
        return importlib.import_module(f"attnprobe.{name}")
    if name in _MOVED:
        import warnings

        home = _MOVED[name]
        warnings.warn(
            f"attnprobe.{name} is deprecated; use {home}.{name}.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(home), name)
    raise AttributeError(f"module 'attnprobe' has no attribute {name!r}")


__all__ = [
    "Adapter",
    "AttentionInputs",
    "AttnProbeError",
    "AttnProbeWarning",
    "History",
    "InputLayout",
    "ModalityLayout",
    "Probe",
    "ProbeResult",
    "RollingQ",
    "__version__",
    "auto_layout",
    "key_gap",
    "modality_bias",
    "noise_sweep",
    "probe",
    "register_adapter",
    "self_check",
]
