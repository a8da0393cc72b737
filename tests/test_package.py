"""Package surface: light import, public names, CLI."""

from __future__ import annotations

import subprocess
import sys

import attnprobe as ap
from attnprobe.cli import main


def test_import_is_light() -> None:
    code = (
        "import sys, attnprobe; "
        "heavy = ('matplotlib', 'seaborn', 'scipy', 'transformers', 'timm'); "
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
    assert issubclass(ap.ModalityLayoutError, ap.AttnProbeError)
    assert issubclass(ap.ModalityLayoutError, ValueError)
    assert issubclass(ap.CaptureError, RuntimeError)


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
