"""The library's error and warning classes.

One base class, `AttnProbeError`; each subclass also inherits the matching built-in
exception so that ``except ValueError`` keeps working for callers who do not know attnprobe.
Messages follow one pattern: what was expected, what was received, how to fix it.
"""

from __future__ import annotations

__all__ = [
    "AnalysisError",
    "AttnProbeError",
    "AttnProbeWarning",
    "CaptureError",
    "ModalityLayoutError",
    "ProbeConfigError",
]


class AttnProbeError(Exception):
    """Base class of every error raised by attnprobe."""


class ModalityLayoutError(AttnProbeError, ValueError):
    """A modality layout is invalid or does not fit the sequence it is applied to."""


class ProbeConfigError(AttnProbeError, ValueError):
    """A probe was configured with arguments that cannot work (bad selection, bad model)."""


class AnalysisError(AttnProbeError, ValueError):
    """An analyzer received data it cannot work with (too few samples, bad shapes, NaN)."""


class CaptureError(AttnProbeError, RuntimeError):
    """Capture failed while the model ran (a selected layer produced nothing, bad shapes)."""


class AttnProbeWarning(UserWarning):
    """The one warning category of attnprobe (numerics changed, option ignored, ...)."""
