"""Package surface: light import, public names, CLI, the deprecated module paths."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys

import pytest

import attnprobe as ap
from attnprobe.app.cli import main


def test_import_is_light() -> None:
    code = (
        "import sys, attnprobe; "
        "heavy = ('pandas', 'matplotlib', 'seaborn', 'scipy', 'transformers', 'timm', "
        "'lightning', 'accelerate'); "
        "heavy = [m for m in heavy if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_api() -> None:
    assert set(ap.__all__) >= {
        "probe",
        "ModalityLayout",
        "ProbeResult",
        "AttnProbeError",
        "register_adapter",
    }
    for name in ap.__all__:
        assert hasattr(ap, name), name
    assert issubclass(ap.errors.ModalityLayoutError, ap.AttnProbeError)
    assert issubclass(ap.errors.ModalityLayoutError, ValueError)
    assert issubclass(ap.errors.CaptureError, RuntimeError)


def test_cli_demo(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["demo", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "outputs with and without the probe identical: True" in out
    assert "query_modality" in out


def test_cli_without_command_prints_help(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main([]) == 2
    assert "usage: attnprobe" in capsys.readouterr().out


def test_examples_run(capsys) -> None:  # type: ignore[no-untyped-def]
    import runpy
    from pathlib import Path

    for script in sorted((Path(__file__).parents[1] / "examples").glob("*.py")):
        runpy.run_path(str(script), run_name="__main__")
    assert "epoch 2: CLS attention mass" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("old", "new", "names"),
    [
        ("attnprobe.example", "attnprobe.app.example", ["run", "report", "ExampleConfig"]),
        ("attnprobe.report", "attnprobe.app.report", ["report", "RunReport"]),
        ("attnprobe.cli", "attnprobe.app.cli", ["main"]),
    ],
)
def test_deprecated_modules_warn_and_reexport(old: str, new: str, names: list[str]) -> None:
    """The old module paths still work: importing one warns, naming the new module, and it
    holds the new module's objects."""
    target = importlib.import_module(new)
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated; use {new}"):
        shim = importlib.import_module(old)
    assert set(shim.__all__) == set(target.__all__)
    for name in {*names, *target.__all__}:
        assert getattr(shim, name) is getattr(target, name), name


def test_top_level_is_small_and_moved_names_warn() -> None:
    import importlib

    assert len(ap.__all__) <= 20
    assert ap.__all__ == sorted(ap.__all__, key=str.lower) or ap.__all__ == sorted(ap.__all__)
    for name, home in ap._MOVED.items():
        with pytest.warns(DeprecationWarning, match=rf"use {home}\.{name}"):
            old = getattr(ap, name)
        assert old is getattr(importlib.import_module(home), name)


def test_probe_is_the_function_and_no_module_shadows_it() -> None:
    # `attnprobe.probe` used to be both a submodule and the function it defines; the module is
    # private now, so the dotted import cannot hand back something else than the docs say.
    assert callable(ap.probe) and ap.probe.__module__ == "attnprobe._probe"
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("attnprobe.probe")
    assert ap.__version__ == importlib.metadata.version("attnprobe")
