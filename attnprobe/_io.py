"""Safe loading of attnprobe's ``torch.save`` files (checkpoints, saved results)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from attnprobe.errors import AttnProbeError

__all__ = ["load_tagged"]


def load_tagged(
    path: str | Path, fmt: str | tuple[str, ...], what: str, fix: str
) -> dict[str, Any]:
    """The dict saved at ``path`` with ``"format": fmt`` (or one of the formats ``fmt``), read with
    ``torch.load(weights_only=True)`` (no arbitrary unpickling); a corrupt or foreign file
    raises `AttnProbeError` naming ``what`` it should have been and how to ``fix`` it."""
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols, then fails
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # garbage bytes fail in many ways (struct.error, EOFError, ...)
        raise AttnProbeError(
            f"{path} is not {what} attnprobe can load safely ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); {fix}."
        ) from None
    formats = (fmt,) if isinstance(fmt, str) else fmt
    if not isinstance(state, dict) or state.get("format") not in formats:
        expected = repr(formats[0]) if len(formats) == 1 else f"one of {list(formats)}"
        raise AttnProbeError(f"{path} is not {what} (expected format {expected}); {fix}.")
    return state
