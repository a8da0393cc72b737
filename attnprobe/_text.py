"""Small text helpers for reprs and messages."""

from __future__ import annotations

__all__ = ["count"]


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, in the plural unless ``n`` is 1.

    Examples:
        >>> count(1, "layer"), count(3, "layer"), count(0, "class", "classes")
        ('1 layer', '3 layers', '0 classes')
    """
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
