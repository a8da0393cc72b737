"""Analyzers: modality bias, key-distribution gap, dynamic adaptability, history over training.

Pure functions of a `ProbeResult` with frozen result classes: results in, results out, no model
run here (the formulas: ``docs/concepts/attention-mass.md``, ``docs/concepts/key-gap.md``,
``docs/concepts/adaptability.md``; the per-layer numbers come from `attnprobe.metrics`).
``noise_sweep``, which runs a model, lives in `attnprobe.sweep`; importing it from here still
works and loads it on first use.
"""

from typing import TYPE_CHECKING, Any

from attnprobe.analysis.adaptability import NoiseSweep
from attnprobe.analysis.bias import BIAS_COLUMNS, LayerBias, ModalityBias, modality_bias
from attnprobe.analysis.gap import GAP_METRICS, KeyGap, key_gap
from attnprobe.analysis.history import History
from attnprobe.corruption import corrupt

if TYPE_CHECKING:  # the old import path of noise_sweep, for type checkers and the API docs
    from attnprobe.sweep import noise_sweep

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


def __getattr__(name: str) -> Any:
    """``attnprobe.analysis.noise_sweep`` loads `attnprobe.sweep` on first use, so that
    importing the analyzers does not import the probe."""
    if name == "noise_sweep":
        from attnprobe.sweep import noise_sweep

        return noise_sweep
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
