"""``python -m attnprobe``: the ``attnprobe`` command (`attnprobe.app.cli.main`)."""

import sys

from attnprobe.app.cli import main

sys.exit(main())
