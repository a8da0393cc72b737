"""`attnprobe report RUN_DIR` on training-wrapper folders: the tables against the raw
``metrics.csv`` files read independently (pandas, numpy), the figures, and every bad input
giving one line on stderr and exit status 2 (example folders: tests/test_example.py)."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import attnprobe as ap
from attnprobe.app import cli
from attnprobe.app.report import RunReport, report
from attnprobe.models import ConcatFusion, LateFusionTransformer
from attnprobe.training import TrainConfig, Trainer

DIMS = {"audio": 6, "video": 8}
LENGTHS = {"audio": 4, "video": 3}


def _data(n: int = 48) -> list[tuple[tuple[torch.Tensor, torch.Tensor], int]]:
    g = torch.Generator().manual_seed(0)
    return [
        ((torch.randn(4, 6, generator=g), torch.randn(3, 8, generator=g)), i % 3) for i in range(n)
    ]


def _train(out: Path, seed: int, *, rollingq: bool = False, concat: bool = False) -> None:
    torch.manual_seed(seed)
    data = _data()
    config = TrainConfig(epochs=3, batch_size=16, lr=0.05, seed=seed, progress=False)
    if concat:
        model = ConcatFusion(DIMS, LENGTHS, num_classes=3, dim=16, depth=1)
        Trainer(
            model,
            data,
            modalities=None,
            layer=None,
            eval_data=data[:24],
            out_dir=out,
            config=config,
        ).fit()
        return
    model = LateFusionTransformer(DIMS, LENGTHS, num_classes=3, dim=16, depth=1)
    corrector = None
    if rollingq:
        corrector = ap.RollingQ(16, modalities=("audio", "video")).attach(model, "fusion")
    Trainer(
        model,
        data,
        modalities=model.fusion_layout(),
        eval_data=data[:24],
        rollingq=corrector,
        out_dir=out,
        config=config,
    ).fit()


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vanilla and RollingQ over two seeds, and one concat run one level deeper."""
    root = tmp_path_factory.mktemp("runs")
    for seed in range(2):
        _train(root / f"vanilla-seed{seed}", seed)
        _train(root / f"rollingq_seed{seed}", seed, rollingq=True)
    _train(root / "baselines" / "concat", 0, concat=True)
    return root


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG header (checked independently of matplotlib)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


def test_folder_of_runs_tables_match_the_metrics_files(runs_dir: Path, tmp_path: Path) -> None:
    result = report(runs_dir, tmp_path / "out")
    assert isinstance(result, RunReport) and result.kind == "training"
    assert result.out == tmp_path / "out" and not (runs_dir / "summary.md").exists()
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert sorted(runs["run"]) == [
        "baselines/concat",
        "rollingq_seed0",
        "rollingq_seed1",
        "vanilla-seed0",
        "vanilla-seed1",
    ]
    assert set(zip(runs["method"], runs["seed"], strict=True)) == {
        ("vanilla", 0),
        ("vanilla", 1),
        ("rollingq", 0),
        ("rollingq", 1),
        ("baselines/concat", 0),
    }
    for _, row in runs.iterrows():
        raw = pd.read_csv(runs_dir / row["run"] / "metrics.csv")
        assert row["epochs"] == 3
        assert row["eval_accuracy"] == raw["eval_accuracy"].iloc[-1]
        assert row["best_eval_accuracy"] == raw["eval_accuracy"].max()
        assert row["best_epoch"] == raw["epoch"][raw["eval_accuracy"].idxmax()]
        assert row["train_seconds"] == pytest.approx(raw["train_time_s"].sum())
        if "share_audio" in raw:
            assert row["share_audio"] == raw["share_audio"].iloc[-1]
            assert row["air"] == raw["air"].iloc[-1]
        else:
            assert np.isnan(row["share_audio"])
    assert runs.loc[runs["method"] == "rollingq", "rollingq_num_rotations"].tolist() == [1, 1]
    summary = result.to_frame()
    for method in ("vanilla", "rollingq"):
        values = runs.loc[runs["method"] == method, "eval_accuracy"].to_numpy()
        line = summary[(summary["method"] == method) & (summary["metric"] == "eval_accuracy")]
        assert line["mean"].item() == pytest.approx(values.mean())
        assert line["std"].item() == pytest.approx(values.std(ddof=1))
        assert line["num_seeds"].item() == 2
    pd.testing.assert_frame_equal(summary, pd.read_csv(tmp_path / "out" / "summary.csv"))
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert "| metric | baselines/concat | rollingq (2 seeds) | vanilla (2 seeds) |" in markdown
    names = sorted(p.name for p in result.figures)
    assert names == ["accuracy_over_training.png", "air_key_gap.png", "share_over_training.png"]
    for path in result.figures:
        width, height = _png_size(path)
        assert width > 300 and height > 200


def test_single_trainer_out_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _train(tmp_path / "run", 0, rollingq=True)
    assert cli.main(["report", str(tmp_path / "run"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| metric | run |" in printed and "3 figures written" in printed
    assert "training runs: 1 run read" in printed
    assert len(list((tmp_path / "run" / "figures").glob("*.png"))) == 3


def test_concat_only_draws_accuracy(tmp_path: Path) -> None:
    _train(tmp_path / "concat", 0, concat=True)
    result = report(tmp_path / "concat")
    assert [p.name for p in result.figures] == ["accuracy_over_training.png"]


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("attnprobe report: ")
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def _copy_run(runs_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(runs_dir / "vanilla-seed0", folder)
    return folder


def test_bad_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(["report", str(tmp_path / "missing")], capsys, "does not exist", "RunFiles out_dir")
    (tmp_path / "file.txt").write_text("x")
    _fails(["report", str(tmp_path / "file.txt")], capsys, "is not a folder")
    (tmp_path / "empty").mkdir()
    empty = str(tmp_path / "empty")
    _fails(["report", empty], capsys, "holds no run", "metrics.csv", "trainer_state.json")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "EmptyDataError"),
        (zlib.compress(b"not a csv at all" * 50), "cannot read"),
        (b"epoch,share_audio\n0,0.5\n1,0.4,0.3,0.2\n", "ParserError"),
        (b"epoch,share_audio\n0,0.5\n1,oops\n", "column 'share_audio' holds 'oops'"),
        (b"step,loss\n1,0.5\n", "expected a header with an 'epoch' column"),
        (b"epoch,share_audio\n", "found no rows"),
    ],
    ids=["empty", "binary", "ragged", "text-in-numbers", "no-epoch", "header-only"],
)
def test_corrupt_metrics_file(
    runs_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes,
    expected: str,
) -> None:
    folder = _copy_run(runs_dir, tmp_path)
    (folder / "metrics.csv").write_bytes(content)
    line = _fails(["report", str(folder)], capsys, expected, "metrics.csv")
    assert not (folder / "summary.md").exists(), line


def test_one_corrupt_run_among_many_is_named(
    runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "many"
    shutil.copytree(runs_dir, root)
    with (root / "rollingq_seed1" / "metrics.csv").open("a") as f:
        f.write("3,4,5\n9\n\x00\x01,,,\n")
    _fails(["report", str(root)], capsys, "rollingq_seed1")


def test_exit_status_of_the_installed_command(tmp_path: Path) -> None:
    """The real process: status 2 and one line on stderr, nothing on stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "attnprobe", "report", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_help_text_in_the_docs_is_the_real_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/cli.md shows `attnprobe [COMMAND] --help` verbatim (at 100 columns)."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    blocks = dict(re.findall(r"```text\n\$ attnprobe ?(\w*) --help\n(.*?)```", text, re.DOTALL))
    assert sorted(blocks) == ["", "demo", "example", "report"]
    monkeypatch.setenv("COLUMNS", "100")
    for command, shown in blocks.items():
        with pytest.raises(SystemExit) as exit_:
            cli.main([command, "--help"] if command else ["--help"])
        assert exit_.value.code == 0
        assert capsys.readouterr().out == shown, f"docs/cli.md: `attnprobe {command} --help`"


def test_error_line_in_the_docs_is_the_real_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    shown = re.search(r"\$ attnprobe report runs/typo\n(.*)\n", text)
    assert shown is not None
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", "runs/typo"]) == 2
    assert capsys.readouterr().err.strip() == shown.group(1)
