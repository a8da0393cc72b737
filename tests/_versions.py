"""Check that this environment holds the versions a make target asked for.

``python tests/_versions.py torch==2.5.1 torchvision==0.20.1 transformers==4.57.6`` exits 1 with
a message naming each package whose installed version differs (a local build tag such as
``+cpu`` is ignored), so that a version target cannot pass on a venv made with other pins.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version


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
