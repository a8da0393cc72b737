"""The notebooks as files: outputs stripped in git, each one on the docs site and in the
README. (`make notebooks` executes them with nbmake, and the docs build executes them again
to render them.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_five_notebooks_exist() -> None:
    assert [p.name for p in NOTEBOOKS] == [
        "01_probe_a_model.ipynb",
        "02_key_distributions_and_air.ipynb",
        "03_rollingq_example.ipynb",
        "04_hf_vision_language.ipynb",
        "05_lightning_rollingq.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_are_stripped(path: Path) -> None:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"{path.name} cell {index} has outputs"
            assert cell["execution_count"] is None, f"{path.name} cell {index} was executed"
        assert "attachments" not in cell, f"{path.name} cell {index} has attachments"
    assert set(notebook["metadata"]) <= {"kernelspec", "language_info"}, notebook["metadata"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_notebook_is_in_the_docs_and_the_readme(path: Path) -> None:
    assert f"notebooks/{path.name}" in (ROOT / "mkdocs.yml").read_text()
    assert f"notebooks/{path.name}" in (ROOT / "README.md").read_text()
    assert f"notebooks/{path.name}" in (ROOT / "docs" / "index.md").read_text()
