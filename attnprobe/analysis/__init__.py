"""Analyzers: modality bias, key-distribution gap, dynamic adaptability, history over training.

Pure functions of a `ProbeResult` (and, for adaptability, of a model run under a probe);
formulas in ``shared/design/METRICS.md``.
"""

from attnprobe.analysis.adaptability import NoiseSweep, corrupt, noise_sweep
from attnprobe.analysis.bias import BIAS_COLUMNS, LayerBias, ModalityBias, modality_bias
from attnprobe.analysis.gap import GAP_METRICS, KeyGap, key_gap
from attnprobe.analysis.history import History

__all__ = [
    "BIAS_COLUMNS",
    "GAP_METRICS",
    "History",
    "KeyGap",
    "LayerBias",
    "ModalityBias",
    "NoiseSweep",
    "corrupt",
    "key_gap",
    "modality_bias",
    "noise_sweep",
]
