"""Deprecated: the run report moved to `attnprobe.app.report`.

Importing this module warns (`DeprecationWarning`) and re-exports the public names of
`attnprobe.app.report`; import that module instead.
"""

import warnings

from attnprobe.app import report as _new
from attnprobe.app.report import *  # noqa: F403 (the names of __all__)

__all__ = list(_new.__all__)

warnings.warn(
    "attnprobe.report is deprecated; use attnprobe.app.report", DeprecationWarning, stacklevel=2
)
