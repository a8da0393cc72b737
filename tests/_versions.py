"""Installed versions, for the supported-range make targets and the tests that depend on one.

``python tests/_versions.py torch==2.7.1 torchvision==0.22.1 transformers==5.23.0`` exits 1 with
a message naming each package whose installed version differs (a local build tag such as
``+cpu`` is ignored), so that a version target cannot pass on a venv made with other pins.
`older_than` is what a test asks before it skips on an older torch or transformers.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version


def older_than(package: str, major: int, minor: int) -> bool:
    """Whether the installed ``package`` is older than ``major.minor`` (e.g. 2.14.1 is not
    older than 2.14; a local tag such as ``+cpu`` and any later part are ignored)."""
    installed = version(package).split("+")[0].split(".")
    return (int(installed[0]), int(installed[1])) < (major, minor)


def main(specs: list[str]) -> int:
    wrong = []
    for spec in specs:
        name, _, wanted = spec.partition("==")
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "not installed"
        if installed.split("+")[0] != wanted:
            wrong.append(f"{name}: expected {wanted}, installed {installed}")
        else:
            print(f"{name} {installed}")
    if wrong:
        print(
            "this venv holds other versions than the target asks for: "
            + "; ".join(wrong)
            + ". Remove the venv (make clean) and run the target again.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
