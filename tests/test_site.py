"""The built documentation site reads like a reference, offline.

Checks the HTML of a site built by ``mkdocs build`` (``make docs`` builds it into
``.venv/site`` and runs this file with ``ATTNPROBE_SITE_DIR=.venv/site``): formulas are TeX for
the site's own MathJax, nothing is loaded from another host, the API reference documents public
modules only, helper scripts are not published, and search works from the file system. Without
``ATTNPROBE_SITE_DIR`` every test is skipped. Standard library only.
"""

from __future__ import annotations

import json
import os
import re
from functools import cache
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import pytest

SITE_VARIABLE = "ATTNPROBE_SITE_DIR"
pytestmark = pytest.mark.skipif(
    not os.environ.get(SITE_VARIABLE),
    reason=f"no built site: set {SITE_VARIABLE} to the output of `mkdocs build` (`make docs` does)",
)

MATHJAX = "javascripts/mathjax/tex-svg-full.js"
MATHJAX_CONFIG = "javascripts/mathjax-config.js"
# the pages whose formulas are typeset, with the least number of formulas each has
FORMULA_PAGES = {
    "concepts/attention-mass": 20,
    "concepts/statistics": 20,
    "concepts/key-gap": 15,
    "concepts/adaptability": 20,
    "concepts/rollingq": 30,
    "concepts/layouts": 5,
    "glossary": 2,
}
# a dotted attnprobe path with a private component: attnprobe.analysis._distances
PRIVATE = re.compile(r"\battnprobe(?:\.\w+)*\._\w+")
# what a formula typed as text or code looks like: sums, norms, bars, transposes, Greek letters
FORMULA_CHARACTERS = re.compile(r"[Σ√‖²≥≤≈∈ᵀΔλμρασβθφ]|q̄|k̄|x̃")
DOLLAR_MATH = re.compile(r"\$\$|\$[^\s$][^$]*?[^\s$\\]\$|\$[^\s$]\$")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)
# elements whose text is not prose, and elements without an end tag
SKIPPED = frozenset({"script", "style", "code", "pre", "svg", "math"})
VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)


class Page(HTMLParser):
    """What the tests read of one HTML page."""

    def __init__(self, path: Path) -> None:
        super().__init__(convert_charrefs=True)
        self.path = path
        self.scripts: list[str | None] = []  # src of every <script> (None: inline)
        self.links: list[str] = []  # href of every <link>
        self.ids: list[str] = []
        self.anchors: list[str] = []  # fragments of links
        self.titles: list[str] = []  # title attributes (hover text)
        self.headings: list[str] = []
        self.formulas: list[tuple[str, str]] = []  # (tag, TeX) of arithmatex elements
        self.inline_code: list[str] = []  # <code> outside <pre>
        self.prose: list[str] = []  # text outside code, scripts, styles and formulas
        self._stack: list[tuple[str, str]] = []  # (tag, role)
        self._buffer: list[str] = []
        self.feed(path.read_text(encoding="utf-8"))
        self.close()

    def _roles(self) -> set[str]:
        return {role for _, role in self._stack}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "script":
            self.scripts.append(attributes.get("src") if "src" in attributes else None)
        if tag == "link":
            self.links.append(attributes.get("href", ""))
        if "id" in attributes:
            self.ids.append(attributes["id"])
        if "title" in attributes:
            self.titles.append(attributes["title"])
        if tag == "a" and "#" in attributes.get("href", ""):
            self.anchors.append(attributes["href"].split("#", 1)[1])
        if tag in VOID:
            return
        role = ""
        classes = attributes.get("class", "").split()
        roles = self._roles()
        if "formula" not in roles and "arithmatex" in classes:
            role = "formula"
            self._buffer = []
        elif tag in {"h1", "h2", "h3", "h4", "h5", "h6"}:
            role = "heading"
            self._buffer = []
        elif tag == "code" and "pre" not in {t for t, _ in self._stack}:
            role = "code"
            self._buffer = []
        self._stack.append((tag, role))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        while self._stack:
            open_tag, role = self._stack.pop()
            if role == "formula":
                self.formulas.append((open_tag, "".join(self._buffer).strip()))
            elif role == "heading":
                self.headings.append("".join(self._buffer).strip())
            elif role == "code":
                self.inline_code.append("".join(self._buffer))
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        roles = self._roles()
        if roles & {"formula", "heading", "code"}:
            self._buffer.append(data)
        if "formula" not in roles and not {t for t, _ in self._stack} & SKIPPED:
            self.prose.append(data)


@cache
def site() -> Path:
    path = Path(os.environ[SITE_VARIABLE]).resolve()
    assert (path / "index.html").is_file(), f"{SITE_VARIABLE}={path} holds no built site"
    return path


def page_file(name: str) -> Path:
    """The HTML file of a page, with or without directory URLs."""
    for candidate in (site() / f"{name}.html", site() / name / "index.html"):
        if candidate.is_file():
            return candidate
    raise AssertionError(f"the site has no page {name!r}")


@cache
def parse(path: Path) -> Page:
    """A page parsed once per test process, whichever test reads it first."""
    return Page(path)


def page(name: str) -> Page:
    return parse(page_file(name))


def html_files() -> list[Path]:
    return sorted(site().rglob("*.html"))


def resolve(page_path: Path, url: str) -> Path:
    """The file a relative URL of a page points to."""
    target = PurePosixPath(unquote(urlsplit(url).path))
    return (page_path.parent / target).resolve()


@pytest.mark.parametrize("name", sorted(FORMULA_PAGES))
def test_formulas_are_tex_for_mathjax(name: str) -> None:
    parsed = page(name)
    formulas = parsed.formulas
    assert len(formulas) >= FORMULA_PAGES[name], f"{name}: {len(formulas)} formulas"
    for tag, tex in formulas:
        if tag == "span":
            assert tex.startswith("\\(") and tex.endswith("\\)"), (name, tex)
        else:
            assert tex.startswith("\\[") and tex.endswith("\\]"), (name, tex)
    prose = "".join(parsed.prose)
    # no formula left for another renderer, or half-processed
    assert not DOLLAR_MATH.search(prose), DOLLAR_MATH.search(prose)
    assert "\\(" not in prose and "\\[" not in prose
    # and no formula typed as code: the symbols of the formulas are in TeX only
    as_code = [code for code in parsed.inline_code if FORMULA_CHARACTERS.search(code)]
    assert as_code == [], f"{name}: formulas set as code: {as_code[:5]}"


def test_the_air_formula_is_display_math() -> None:
    tex = [tex for tag, tex in page("concepts/rollingq").formulas if tag == "div"]
    assert any("\\mathrm{AIR}" in t and "\\mathbb{E}_i" in t and "\\bar k^a_i" in t for t in tex)


@pytest.mark.parametrize("name", sorted(FORMULA_PAGES))
def test_mathjax_comes_from_the_site(name: str) -> None:
    parsed = page(name)
    sources = [src for src in parsed.scripts if src]
    mathjax = [src for src in sources if src.endswith(MATHJAX)]
    config = [src for src in sources if src.endswith(MATHJAX_CONFIG)]
    assert len(mathjax) == 1 and len(config) == 1, sources
    # the configuration is read by MathJax when it loads: it comes first
    assert sources.index(config[0]) < sources.index(mathjax[0])
    for src in (*mathjax, *config):
        assert not EXTERNAL.match(src) and not src.startswith("/"), src
        assert resolve(parsed.path, src).is_file(), src
    assert (site() / "javascripts/mathjax/LICENSE").is_file()


def test_nothing_is_loaded_from_another_host() -> None:
    """No CDN, no web font: every script and linked file (stylesheets, icons) is the site's."""
    found = []
    for path in html_files():
        parsed = parse(path)
        for url in [*(src for src in parsed.scripts if src), *parsed.links]:
            if EXTERNAL.match(url.strip()):
                found.append(f"{path.relative_to(site())}: {url}")
    assert found == [], found[:10]
    for css in site().rglob("*.css"):
        text = css.read_text(encoding="utf-8")
        assert not re.search(r"@import|url\(\s*['\"]?(?:https?:)?//", text), css


def test_no_empty_script_source() -> None:
    empty = [
        str(path.relative_to(site()))
        for path in html_files()
        if any(src is not None and not src.strip() for src in parse(path).scripts)
    ]
    assert empty == []


def reference_pages() -> list[Path]:
    return [path for path in html_files() if "reference" in path.relative_to(site()).parts]


def test_no_reference_page_for_a_private_module() -> None:
    pages = [path.relative_to(site()).as_posix() for path in reference_pages()]
    assert len(pages) >= 15, pages
    assert [p for p in pages if any(part.startswith("_") for part in p.split("/"))] == []


def test_reference_pages_name_public_objects_only() -> None:
    found = {}
    for path in reference_pages():
        parsed = parse(path)
        names = [*parsed.ids, *parsed.anchors, *parsed.headings, *parsed.titles]
        private = sorted({match for name in names for match in PRIVATE.findall(name)})
        if private:
            found[path.relative_to(site()).as_posix()] = private
    assert found == {}


@pytest.mark.parametrize(
    ("name", "module", "objects"),
    [
        ("reference/plot", "attnprobe.plot", ["attention_share", "key_distribution"]),
        ("reference/training", "attnprobe.training", ["Trainer", "TrainConfig"]),
        (
            "reference/integrations",
            "attnprobe.integrations",
            ["lightning.AttnProbeCallback", "transformers.AttnProbeCallback"],
        ),
    ],
)
def test_reference_pages_document_their_modules(name: str, module: str, objects: list[str]) -> None:
    parsed = page(name)
    assert parsed.headings and parsed.headings[0].startswith(module), parsed.headings[:1]
    documented = {i for i in parsed.ids if i.startswith(f"{module}.")}
    assert len(documented) >= 4, documented
    for name_ in objects:
        assert f"{module}.{name_}" in documented, (name_, sorted(documented)[:20])
    # signatures and docstrings, not just headings
    text = page_file(name).read_text(encoding="utf-8")
    assert text.count("doc-signature") >= 2 and text.count("doc-contents") >= 4


def test_helper_files_are_not_published() -> None:
    assert not (site() / "hooks").exists()
    assert not (site() / "scripts").exists()
    assert [p.relative_to(site()).as_posix() for p in site().rglob("*.py")] == []


def test_search_works_from_the_file_system() -> None:
    index_file = site() / "search/search_index.json"
    index = json.loads(index_file.read_text(encoding="utf-8"))
    locations = {entry["location"].split("#")[0] for entry in index["docs"]}
    assert any(location.startswith("concepts/rollingq") for location in locations)
    assert any(location.startswith("reference/plot") for location in locations)
    # opened from file://, the theme reads the index from this script instead of fetching it
    script = (site() / "search/search_index.js").read_text(encoding="utf-8")
    assert script.startswith("var __index = ")
    assert json.loads(script.removeprefix("var __index = ")) == index
    # and runs its search worker through this shim (browsers refuse workers on file://)
    parsed = page("index")
    shim = [src for src in parsed.scripts if src and src.endswith("iframe-worker/shim.js")]
    assert len(shim) == 1 and resolve(parsed.path, shim[0]).is_file(), parsed.scripts
    # links between pages name their files: no server needed to turn directories into pages
    assert (site() / "concepts/rollingq.html").is_file()
