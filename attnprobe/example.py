"""Deprecated: the RollingQ example moved to `attnprobe.app.example`.

Importing this module warns (`DeprecationWarning`) and re-exports the public names of
`attnprobe.app.example`; import that module instead.
"""

import warnings

from attnprobe.app import example as _new
from attnprobe.app.example import *  # noqa: F403 (the names of __all__)

__all__ = list(_new.__all__)

warnings.warn(
    "attnprobe.example is deprecated; use attnprobe.app.example", DeprecationWarning, stacklevel=2
)
