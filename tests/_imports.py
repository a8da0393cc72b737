"""Which attnprobe modules a module loads when it is imported, read from the source with ``ast``
(no import runs, so the answer does not depend on what the interpreter already loaded)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "attnprobe"


def module_path(name: str) -> Path | None:
    """The source file of module ``name`` (``attnprobe.x.y``), or None if it is not one."""
    base = PACKAGE.parent.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements that run at import: the module body, into ``if``/``try`` blocks, but not
    into functions, classes or ``if TYPE_CHECKING:`` blocks."""
    out: list[ast.stmt] = []
    for stmt in body:
        out.append(stmt)
        if isinstance(stmt, ast.If) and not _is_type_checking(stmt.test):
            out += _statements(stmt.body) + _statements(stmt.orelse)
        elif isinstance(stmt, ast.Try):
            for block in (stmt.body, stmt.orelse, stmt.finalbody):
                out += _statements(block)
            for handler in stmt.handlers:
                out += _statements(handler.body)
    return out


def direct_imports(name: str) -> set[str]:
    """The attnprobe modules that importing ``name`` imports itself (module level)."""
    path = module_path(name)
    if path is None:
        return set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for stmt in _statements(ast.parse(path.read_text(encoding="utf-8")).body):
        if isinstance(stmt, ast.Import):
            found |= {a.name for a in stmt.names if a.name.startswith("attnprobe")}
        elif isinstance(stmt, ast.ImportFrom):
            module = stmt.module or ""
            if stmt.level:
                parts = package.split(".")
                parts = parts[: len(parts) - stmt.level + 1]
                module = ".".join([*parts, module] if module else parts)
            if not module.startswith("attnprobe"):
                continue
            found.add(module)
            for alias in stmt.names:  # `from attnprobe.analysis import _distances`
                if module_path(f"{module}.{alias.name}") is not None:
                    found.add(f"{module}.{alias.name}")
    # importing a.b.c first imports the packages a.b and a (the root package aside: it is the
    # public API, which imports everything)
    for module in list(found):
        parts = module.split(".")
        found |= {".".join(parts[:i]) for i in range(2, len(parts))}
    return found - {"attnprobe"}


def loaded_by(name: str) -> set[str]:
    """Every attnprobe module importing ``name`` loads (itself included), the root package's
    ``__init__`` aside."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += sorted(direct_imports(module) - seen)
    return seen
