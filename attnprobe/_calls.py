"""Calling a model (or an `InputLayout`) with one batch given as a mapping, a tuple or a single
tensor."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["call_model"]


def call_model(model: Callable[..., Any], inputs: Any) -> Any:
    """``model(**inputs)`` for a mapping, ``model(*inputs)`` for a tuple, else ``model(inputs)``."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)
