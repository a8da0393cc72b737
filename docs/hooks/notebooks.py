"""MkDocs hook: the notebooks in ``notebooks/`` become pages of the site under ``notebooks/``.

They stay where users and the test suite find them (``notebooks/``, outputs stripped) and are
added to the site's files before mkdocs-jupyter converts ``.ipynb`` files, which executes them
at build time so that the pages show their outputs and figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]


@event_priority(100)  # before mkdocs-jupyter (default priority 0) picks up .ipynb files
def on_files(files: Files, config: Any) -> Files:
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        files.append(
            File(
                f"notebooks/{path.name}",
                src_dir=str(ROOT),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
