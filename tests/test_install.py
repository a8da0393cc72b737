"""The package as a user installs it: build the sdist and the wheel, install the wheel into a
fresh virtual environment beside a torch, and run the README's example outside the checkout.

It takes a minute or two and installs torch, so it runs where it is asked for:
``make wheel-test`` (part of ``make test``) sets ``ATTNPROBE_INSTALL_TEST=1`` and passes the
Makefile's ``TORCH_SPEC`` and ``TORCH_INDEX``; elsewhere it is skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import attnprobe

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    os.environ.get("ATTNPROBE_INSTALL_TEST") != "1",
    reason="installs torch into a fresh venv: run by `make wheel-test` (ATTNPROBE_INSTALL_TEST=1)",
)


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def readme_example() -> str:
    """The Python block under the README's ``## Example`` heading."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Example\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "expected one python block in the README's Example section"
    return blocks[0]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    # `python -m build` makes the sdist, then the wheel from the unpacked sdist: a file the
    # sdist leaves out breaks the wheel too
    _run(sys.executable, "-m", "build", "--outdir", out, ROOT, cwd=ROOT)
    (wheel,) = out.glob("attnprobe-*.whl")
    (sdist,) = out.glob("attnprobe-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def test_wheel_and_sdist_carry_what_users_need(dist: dict[str, Path]) -> None:
    version = attnprobe.__version__
    assert dist["wheel"].name == f"attnprobe-{version}-py3-none-any.whl"
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read(f"attnprobe-{version}.dist-info/METADATA").decode()
        entry_points = wheel.read(f"attnprobe-{version}.dist-info/entry_points.txt").decode()
    for needed in (
        "attnprobe/py.typed",
        "attnprobe/datasets/data/mfeat.npz",
        "attnprobe/datasets/data/README.md",
        f"attnprobe-{version}.dist-info/licenses/LICENSE",
    ):
        assert needed in names, needed
    assert not any(n.startswith(("tests/", "docs/", "benchmarks/")) for n in names)
    assert f"Version: {version}" in metadata
    assert "License-Expression: MIT" in metadata
    for extra in ("hf", "timm", "lightning", "tensorboard", "docs", "dev"):
        assert f"Provides-Extra: {extra}" in metadata, extra
    assert re.search(r"Requires-Dist: torch>=[\d.]+", metadata)
    assert re.search(r'Requires-Dist: transformers>=[\d.]+; extra == "hf"', metadata)
    assert "attnprobe = attnprobe.app.cli:main" in entry_points

    with tarfile.open(dist["sdist"]) as sdist:
        members = {m.split("/", 1)[1] for m in sdist.getnames() if "/" in m}
    for needed in (
        "CHANGELOG.md",
        "LICENSE",
        "README.md",
        "Makefile",
        "mkdocs.yml",
        "docs/index.md",
        "tests/test_install.py",
        "notebooks",
        "examples",
    ):
        assert needed in members, needed
    assert not any(m.startswith((".venv", "dist/")) or "__pycache__" in m for m in members)


def test_wheel_installs_in_a_fresh_venv_and_runs_the_readme_example(
    dist: dict[str, Path], tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    pip = [python, "-m", "pip", "--disable-pip-version-check", "-q", "install"]
    torch_spec = os.environ.get("TORCH_SPEC", "torch").split()
    index = os.environ.get("TORCH_INDEX", "")
    _run(*pip, *(["--extra-index-url", index] if index else []), *torch_spec, cwd=tmp_path)
    _run(*pip, dist["wheel"], cwd=tmp_path)

    # outside the checkout, with nothing of it on the path
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    work = tmp_path / "user"
    work.mkdir()
    where = _run(python, "-c", "import attnprobe; print(attnprobe.__file__)", cwd=work, env=env)
    assert Path(where.strip()).is_relative_to(venv), where
    (work / "example.py").write_text(readme_example())
    table = _run(python, "example.py", cwd=work, env=env)
    rows = [line.split()[0] for line in table.splitlines()[2:]]
    assert rows == ["cls", "audio", "video"], table  # the layout's order, as the README says
    masses = [[float(v) for v in line.split()[1:]] for line in table.splitlines()[2:]]
    assert all(abs(sum(row) - 1) < 1e-4 for row in masses), table  # each query row's shares

    version = _run(venv / "bin" / "attnprobe", "--version", cwd=work, env=env)
    assert version.strip() == f"attnprobe {attnprobe.__version__}"
    demo = _run(venv / "bin" / "attnprobe", "demo", "--batch", "4", cwd=work, env=env)
    assert "outputs with and without the probe identical: True" in demo
    # the bundled data ships in the wheel and loads from it
    code = "import attnprobe.datasets as ds; print(len(ds.mfeat('train')))"
    assert int(_run(python, "-c", code, cwd=work, env=env)) > 0
