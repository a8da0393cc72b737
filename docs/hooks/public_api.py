"""MkDocs hook: the API reference documents the public API only.

attnprobe's implementation lives in private modules (``attnprobe.stats._contract``,
``attnprobe.capture._base``, …) and is re-exported by the public packages; the reference pages
(``docs/reference/``) document the public names. This hook

- fails the build (a warning, which ``mkdocs build --strict`` turns into an error) when a
  reference page asks mkdocstrings for a private object (``::: attnprobe.x._y``) or when a
  heading, an ``id`` or a link anchor of a reference page names one;
- rewrites the hover titles that autorefs gives cross-references from the objects' canonical
  (private) paths: a link's title becomes the public name it points to, and an unresolved name
  (a private type alias such as ``attnprobe._batches.Data``) loses its title.

Text pages (architecture, concepts) may still name private module files for contributors.
"""

from __future__ import annotations

import re
from typing import Any

from mkdocs.plugins import get_plugin_logger

log = get_plugin_logger(__name__)

# a dotted attnprobe path with a private component: attnprobe._io, attnprobe.stats._fused.PARTS
PRIVATE = re.compile(r"\battnprobe(?:\.\w+)*\._\w+")
DIRECTIVE = re.compile(r"^:::[ \t]+(\S+)", re.MULTILINE)
TITLED = re.compile(r'<(a|span)\b([^>]*?)\stitle="([^"]*)"([^>]*)>')
ANCHOR = re.compile(r'href="[^"#]*#([^"]+)"')
# what a reader or a link sees of the page's structure: ids, anchors of links, headings
STRUCTURE = re.compile(
    r'\bid="([^"]*)"|\bhref="[^"#]*#([^"]*)"|<h[1-6]\b[^>]*>(.*?)</h[1-6]>', re.S
)


def _is_reference(page: Any) -> bool:
    return page.file.src_uri.startswith("reference/")


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if _is_reference(page):
        for identifier in DIRECTIVE.findall(markdown):
            if any(part.startswith("_") for part in identifier.split(".")):
                log.warning(
                    f"{page.file.src_uri} documents the private object {identifier}: document "
                    "the public name it is exported as"
                )
    return markdown


def _public_title(match: re.Match[str]) -> str:
    tag, before, title, after = match.groups()
    if not PRIVATE.search(title):
        return match.group(0)
    anchor = ANCHOR.search(before + after)
    if tag == "a" and anchor and not PRIVATE.search(anchor.group(1)):
        return f'<{tag}{before} title="{anchor.group(1)}"{after}>'
    return f"<{tag}{before}{after}>"


def on_post_page(output: str, page: Any, **kwargs: Any) -> str:
    # autorefs has resolved the cross-references by now (on_env), titles included
    output = TITLED.sub(_public_title, output)
    if _is_reference(page):
        found = sorted(
            {
                name
                for groups in STRUCTURE.findall(output)
                for name in PRIVATE.findall(" ".join(groups))
            }
        )
        if found:
            log.warning(
                f"{page.file.src_uri}: private names in headings, ids or anchors: "
                f"{', '.join(found)}; document the public names instead"
            )
    return output
