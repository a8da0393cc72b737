"""The code in the documentation runs: every ```python block of README.md and docs/*.md.

The blocks of one file run in order in one namespace, as a reader pastes them one after the
other; each file starts from a fresh namespace. Warnings are errors here as in the rest of the
suite, so a page whose code warns fails too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from attnprobe.capture import adapters

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
DOC_FILES = sorted(
    path
    for path in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    if path.is_file() and FENCE.search(path.read_text(encoding="utf-8"))
)


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """The ```python blocks of a Markdown file as (first line number, code)."""
    text = path.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, match.start(1)) + 1, match.group(1)) for match in FENCE.finditer(text)
    ]


def test_the_quick_start_pages_have_code() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in DOC_FILES}
    assert {"README.md", "docs/quickstart.md"} <= names


def test_no_python_block_is_indented() -> None:
    """Indented fences (inside lists or admonitions) would escape the test below."""
    for path in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"^[ \t]+```py", text, re.MULTILINE), path


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_code_blocks_run(path: Path) -> None:
    registered = adapters()
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for line, code in python_blocks(path):
        # pad with newlines so that a traceback names the line of the Markdown file
        source = "\n" * (line - 1) + code
        # dont_inherit: the code runs as pasted, without this file's `from __future__` imports
        exec(
            compile(source, path.relative_to(ROOT).as_posix(), "exec", dont_inherit=True), namespace
        )
    assert adapters() == registered, f"{path.name} left an adapter registered"


def test_the_figure_script_draws_every_figure_the_pages_show(tmp_path: Path) -> None:
    """docs/scripts/make_figures.py still runs and draws each docs/figures/ image (outside
    the results, which `attnprobe example rollingq` draws) that a page links to."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(ROOT / "docs/scripts/make_figures.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    linked = set()
    for page in (ROOT / "docs").rglob("*.md"):
        for target in re.findall(r"\]\(([^)]*figures/[^)]+\.png)\)", page.read_text("utf-8")):
            path = (page.parent / target).resolve().relative_to(ROOT / "docs" / "figures")
            if path.parts[0] != "results":
                linked.add(path.as_posix())
    assert "concepts/key-gap.png" in linked
    drawn = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")}
    assert linked <= drawn, linked - drawn


def test_nothing_points_to_files_outside_the_repository() -> None:
    """Docstrings, pages and scripts send readers to docs/, not to design notes that are not in
    the repository."""
    notes = ["OVERVIEW", "CAPTURE", "METRICS", "ROLLINGQ", "DATA"]
    pattern = re.compile(r"shared/" + r"design|\b(" + "|".join(notes) + r")\.md\b")
    roots = ["attnprobe", "docs", "tests", "benchmarks", "examples", "notebooks"]
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "mkdocs.yml"]
    for root in roots:
        files += [p for p in (ROOT / root).rglob("*") if p.suffix in {".py", ".md", ".ipynb"}]
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in files
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []
