"""``python -m attnprobe``: the ``attnprobe`` command."""

import sys

from attnprobe.cli import main

sys.exit(main())
