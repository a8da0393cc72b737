"""MkDocs hook: MathJax 3 is served by the site itself, so formulas render offline.

The formulas of the pages are written in TeX between ``\\( … \\)`` (inline) and ``\\[ … \\]``
(display); ``pymdownx.arithmatex`` (generic mode) wraps them in ``arithmatex`` elements, and
MathJax, configured by ``docs/javascripts/mathjax-config.js``, typesets those elements in the
reader's browser. Nothing is fetched from a CDN, neither at build time nor when a page is read.

MathJax comes from the PyPI package ``django-static-mathjax`` (MathJax 3.2.2 as files under its
top-level package ``mathjax/static/mathjax/``; it does not need Django). This hook finds the
installed package and adds to the site, under ``javascripts/mathjax/``:

- ``tex-svg-full.js``: MathJax with the TeX input (every TeX extension built in, so no extension
  is loaded at view time) and the SVG output (self-contained, no font files);
- ``LICENSE``: MathJax's Apache-2.0 license.

``mkdocs.yml`` references the script in ``extra_javascript`` after the configuration script. The
build fails with a message naming the package when it is not installed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.plugins import get_plugin_logger
from mkdocs.structure.files import File, Files

log = get_plugin_logger(__name__)

DISTRIBUTION = "django-static-mathjax"
PIN = f"{DISTRIBUTION}==3.2.2.1"
PACKAGE = "mathjax"  # the import name of django-static-mathjax
COMPONENT = "es5/tex-svg-full.js"
SITE_DIR = "javascripts/mathjax"
SCRIPT = f"{SITE_DIR}/tex-svg-full.js"
CONFIG_SCRIPT = "javascripts/mathjax-config.js"

INSTALL_HINT = (
    f"MathJax for the docs comes from the PyPI package {DISTRIBUTION!r} (import name "
    f"{PACKAGE!r}); install it with `pip install {PIN}` (it is part of the `docs` extra: "
    '`pip install -e ".[docs]"`).'
)


def mathjax_root() -> Path:
    """The folder of the installed MathJax distribution (``.../mathjax/static/mathjax``)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PluginError(f"MathJax not found: no package {PACKAGE!r}. {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        root = Path(location) / "static" / "mathjax"
        if (root / COMPONENT).is_file():
            break
    else:
        raise PluginError(
            f"the package {PACKAGE!r} at {list(spec.submodule_search_locations)} has no "
            f"static/mathjax/{COMPONENT}: it is not {DISTRIBUTION}. {INSTALL_HINT}"
        )
    version = json.loads((root / "package.json").read_text(encoding="utf-8")).get("version", "")
    if not version.startswith("3."):
        raise PluginError(
            f"{DISTRIBUTION} ships MathJax {version or '(unknown version)'}; the docs' "
            f"configuration ({CONFIG_SCRIPT}) is for MathJax 3. {INSTALL_HINT}"
        )
    return root


def _scripts(config: Any) -> list[str]:
    return [str(getattr(script, "path", script)) for script in config["extra_javascript"]]


def on_config(config: Any) -> Any:
    # fail before anything is built (the notebooks take minutes to execute)
    mathjax_root()
    scripts = _scripts(config)
    if SCRIPT not in scripts or CONFIG_SCRIPT not in scripts:
        raise PluginError(
            f"extra_javascript must list {CONFIG_SCRIPT} and then {SCRIPT}; it lists {scripts}"
        )
    if scripts.index(CONFIG_SCRIPT) > scripts.index(SCRIPT):
        raise PluginError(f"extra_javascript must list {CONFIG_SCRIPT} before {SCRIPT}")
    return config


def on_files(files: Files, config: Any) -> Files:
    root = mathjax_root()
    for source, dest in ((COMPONENT, SCRIPT), ("LICENSE", f"{SITE_DIR}/LICENSE")):
        files.append(File.generated(config, dest, abs_src_path=str(root / source)))
    log.debug("MathJax from %s", root)
    return files
