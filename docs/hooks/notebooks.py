"""MkDocs hook: the notebooks in ``notebooks/`` become pages of the site under ``notebooks/``.

They stay where users and the test suite find them (``notebooks/``, outputs stripped) and are
added to the site's files before mkdocs-jupyter converts ``.ipynb`` files, which executes them
at build time so that the pages show their outputs and figures.

The HTML that nbconvert writes for a notebook also loads MathJax 2 (from the URL of
mkdocs-jupyter's ``custom_mathjax_url`` option, empty by default: a ``<script src="">``) and,
on pages with Mermaid diagrams, Mermaid from a CDN. The site typesets formulas with its own
MathJax 3 (``docs/hooks/mathjax.py``) and the notebooks have no Mermaid diagram, so both loaders
are taken out of the notebook pages: nothing is fetched from elsewhere when a page is read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]

# nbconvert's base/mathjax.html.j2 macro: the MathJax 2 script and its configuration
MATHJAX2 = re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S)
# nbconvert's lab/mermaidjs.html.j2 macro: imports Mermaid from a CDN when a diagram is present
DIAGRAM = re.compile(r'class="[^"]*\bjp-Mermaid\b')
MERMAID = re.compile(
    r'<script type="module">\s*document\.addEventListener\("DOMContentLoaded".*?</script>', re.S
)


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


def on_page_content(html: str, page: Any, **kwargs: Any) -> str:
    if not page.file.src_uri.endswith(".ipynb"):
        return html
    html = MATHJAX2.sub("", html)
    if not DIAGRAM.search(html):
        html = MERMAID.sub("", html)
    return html
