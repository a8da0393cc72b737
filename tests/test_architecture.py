"""The rules of the package's layout, checked on its source (``docs/architecture.md``).

- Model families are known only in ``attnprobe/capture/``: no other module names the
  internals of transformers, timm or the model families they hold.
- Private names (a leading underscore) are not imported across modules, except between
  modules of one subpackage.
- Dependencies point one way: the library never imports the application (``attnprobe.app``),
  and the low layers (labels, functional, stats, capture) never import the probe, results,
  analysis or anything above them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "attnprobe"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)

FAMILY_NAMES = {
    "transformers",
    "timm",
    "_attn_implementation",
    "_attn_implementation_internal",
    "set_attn_implementation",
    "fused_attn",
    "attn_drop",
    "patch_embed",
    "num_prefix_tokens",
    "num_reg_tokens",
    "AttentionInterface",
    "AttentionMaskInterface",
    "ALL_ATTENTION_FUNCTIONS",
    "vision_config",
    "text_config",
    "supports_query_rotation",
}
"""Identifiers that only code knowing a model family uses."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


PACKAGES = {_module_name(p) for p in MODULES if p.name == "__init__.py"}


def _subpackage(module: str) -> str | None:
    """``attnprobe.capture._hf`` and ``attnprobe.capture`` → ``attnprobe.capture``; root
    modules (``attnprobe._probe``) have none."""
    parts = module.split(".")
    if len(parts) >= 3:
        return ".".join(parts[:2])
    if len(parts) == 2 and module in PACKAGES:
        return module
    return None


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (of modules, classes, functions and
    attributes)."""
    ids = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for stmt in body:
            if (
                isinstance(stmt, ast.Expr)
                and isinstance(stmt.value, ast.Constant)
                and isinstance(stmt.value.value, str)
            ):
                ids.add(id(stmt.value))
    return ids


def _family_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.keyword) and node.arg:
            names = [node.arg]
        elif isinstance(node, ast.alias):
            names = node.name.split(".")
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = node.module.split(".")
        elif (
            isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
        ):
            names = [w.strip("'\"`()[],.:;=") for w in node.value.split()]
        found += [f"{path.name}:{node.lineno}: {n}" for n in names if n in FAMILY_NAMES]
    return found


@pytest.mark.parametrize(
    "path",
    # integrations/ knows training frameworks (transformers.Trainer), not model families
    [p for p in MODULES if not {"capture", "integrations"} & set(p.relative_to(PACKAGE).parts)],
    ids=lambda p: p.relative_to(PACKAGE).as_posix(),
)
def test_model_families_are_known_only_in_capture(path: Path) -> None:
    assert _family_uses(path) == []


def test_the_family_check_finds_family_code() -> None:
    """The check above is not vacuous: it flags the adapters' own code."""
    flagged = [u for p in (PACKAGE / "capture").glob("*.py") for u in _family_uses(p)]
    assert any("fused_attn" in u for u in flagged)
    assert any("_attn_implementation" in u for u in flagged)
    assert any("patch_embed" in u for u in flagged)


def _imports(path: Path) -> list[tuple[str, str, int]]:
    """``(module imported from, name, line)`` for every name imported from, or read as an
    attribute of, an attnprobe module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _module_name(path)
    aliases: dict[str, str] = {}  # local name -> attnprobe module
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = node.module
            if node.level:  # relative import
                base = here.split(".")
                module = ".".join([*base[: len(base) - node.level + 1], node.module])
            if not module.startswith("attnprobe"):
                continue
            for alias in node.names:
                out.append((module, alias.name, node.lineno))
                aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("attnprobe") and alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            out.append((aliases[node.value.id], node.attr, node.lineno))
    return out


def _crossing(path: Path) -> list[str]:
    here = _module_name(path)
    bad = []
    for module, name, line in _imports(path):
        private = name.startswith("_") and not name.startswith("__")
        if not private:
            continue
        target = f"{module}.{name}"
        same = _subpackage(here) is not None and (
            _subpackage(here) == _subpackage(module) or _subpackage(target) == _subpackage(here)
        )
        if not same:
            bad.append(f"{path.relative_to(PACKAGE)}:{line}: {module}.{name}")
    return bad


def test_no_private_name_crosses_modules_outside_a_subpackage() -> None:
    bad = [b for p in MODULES for b in _crossing(p)]
    assert bad == []


def test_the_private_name_check_sees_an_import(tmp_path: Path) -> None:
    """The check above is not vacuous."""
    fake = PACKAGE / "_architecture_probe_tmp.py"
    try:
        fake.write_text(
            "from attnprobe.labels._layout import check_names\n"
            "from attnprobe.stats._builtin import ENTROPY_CHUNK_ELEMENTS\n"
            "from attnprobe.rollingq import _hidden\n"
            "from attnprobe import functional as f\n"
            "x = f._call_kernel\n"
        )
        found = _crossing(fake)
    finally:
        fake.unlink()
    assert [f.split(": ")[1] for f in found] == [
        "attnprobe.rollingq._hidden",
        "attnprobe.functional._call_kernel",
    ]


LOW_LAYERS = ("attnprobe.labels", "attnprobe.functional", "attnprobe.stats", "attnprobe.capture")
HIGH_LAYERS = (
    "attnprobe._probe",
    "attnprobe.results",
    "attnprobe.analysis",
    "attnprobe.rollingq",
    "attnprobe.callbacks",
    "attnprobe.integrations",
    "attnprobe.training",
    "attnprobe.plot",
    "attnprobe.app",
)


APP_ENTRY_POINTS = {"attnprobe.__main__", "attnprobe.cli", "attnprobe.example", "attnprobe.report"}
"""``python -m attnprobe`` and the deprecated aliases of the application's old modules."""


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_dependencies_point_one_way(path: Path) -> None:
    here = _module_name(path)
    imported = {module for module, _, _ in _imports(path)}
    imported |= {f"{m}.{n}" for m, n, _ in _imports(path)}
    if not here.startswith("attnprobe.app") and here not in APP_ENTRY_POINTS:
        assert not [m for m in imported if m.startswith("attnprobe.app")], here
    if here.startswith(LOW_LAYERS):
        high = [m for m in imported if m.startswith(HIGH_LAYERS)]
        assert high == [], here
