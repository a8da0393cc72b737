"""Deprecated: the ``attnprobe`` command moved to `attnprobe.app.cli`.

Importing this module warns (`DeprecationWarning`) and re-exports `attnprobe.app.cli.main`;
import that module instead (the ``attnprobe`` command and ``python -m attnprobe`` already do).
"""

import warnings

from attnprobe.app import cli as _new
from attnprobe.app.cli import *  # noqa: F403 (the names of __all__)

__all__ = list(_new.__all__)

warnings.warn(
    "attnprobe.cli is deprecated; use attnprobe.app.cli", DeprecationWarning, stacklevel=2
)
