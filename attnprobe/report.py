"""Rebuild the figures and summary tables of a run folder from its files alone
(``attnprobe report RUN_DIR``).

Two kinds of folder are understood:

- an **example folder**, written by ``attnprobe example rollingq`` (`attnprobe.example.run`):
  the example's own report (`attnprobe.example.report`: per-run table, mean ± std per method,
  paired tests, six figures);
- **training runs**: the ``out_dir`` of one `attnprobe.training.Trainer` (it holds
  ``metrics.csv``), or a folder whose sub-folders (one or two levels down) are such runs. Each
  run is named by its path below ``RUN_DIR``; a name ending in ``-seed<k>`` or ``_seed<k>``
  groups the runs of one method over seeds (``vanilla-seed0``, ``vanilla-seed1``, …), which
  the tables and figures then show as mean ± std.

For training runs the report writes, into ``RUN_DIR`` (or ``out``):

- ``runs.csv``: one row per run: the last epoch's metrics (the last evaluated value for
  evaluation columns), the best validation accuracy and its epoch, the training time;
- ``summary.csv``: one row per (method, metric): mean, std and number of seeds;
- ``summary.md``: the same as a Markdown table;
- ``figures/``: ``share_over_training.png`` and ``air_key_gap.png`` (runs with a fusion
  attention layer), ``accuracy_over_training.png`` (runs with evaluation data).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from attnprobe._errors import AttnProbeError
from attnprobe._runs import read_metrics, summarise

__all__ = ["RunReport", "report"]

_METRICS = "metrics.csv"
_SEED = re.compile(r"^(?P<method>.+?)[-_]seed[-_]?(?P<seed>\d+)$")
_FIXED = ("train_loss", "train_accuracy", "eval_accuracy", "rollingq_num_rotations")
_PREFIXES = ("eval_accuracy_", "share_", "air", "key_gap", "delta_share_")


@dataclass(frozen=True, eq=False)
class RunReport:
    """What `report` rebuilt.

    Attributes:
        kind: ``"example"`` (an ``attnprobe example rollingq`` folder) or ``"training"``
            (training-wrapper runs).
        run_dir: the folder read.
        out: the folder written (``run_dir`` unless ``out`` was given).
        runs: one row per run (``method``, ``seed``, then the run's final numbers).
        summary: one row per (method, metric): ``mean``, ``std``, ``num_seeds``.
        figures: the figures written, in ``out/figures``.
    """

    kind: Literal["example", "training"]
    run_dir: Path
    out: Path
    runs: pd.DataFrame
    summary: pd.DataFrame
    figures: tuple[Path, ...]

    def to_frame(self) -> pd.DataFrame:
        """The summary: columns ``method, metric, mean, std, num_seeds``."""
        return self.summary.copy()

    def __repr__(self) -> str:
        methods = list(dict.fromkeys(self.runs["method"])) if "method" in self.runs else []
        return (
            f"RunReport({self.kind}, {_count(len(self.runs), 'run')}, methods={methods}, "
            f"{len(self.figures)} figures in {self.out / 'figures'})"
        )


def report(
    run_dir: str | Path, out: str | Path | None = None, *, progress: bool = False
) -> RunReport:
    """Rebuild the tables and figures of a run folder from its files.

    Args:
        run_dir: an example folder (``attnprobe example rollingq``), the ``out_dir`` of a
            `attnprobe.training.Trainer`, or a folder of such ``out_dir``s.
        out: where the tables and ``figures/`` go (default: ``run_dir``).
        progress: a progress bar over the figures (on a terminal).

    Returns:
        A `RunReport`.

    Raises:
        AttnProbeError: ``run_dir`` is missing or holds no run, or a run file is corrupt.

    Example:
        >>> import tempfile, torch
        >>> from attnprobe.models import LateFusionTransformer
        >>> from attnprobe.report import report
        >>> from attnprobe.training import TrainConfig, Trainer
        >>> data = [((torch.randn(4, 6), torch.randn(3, 8)), i % 5) for i in range(32)]
        >>> folder = tempfile.mkdtemp()
        >>> for seed in range(2):
        ...     _ = torch.manual_seed(seed)
        ...     model = LateFusionTransformer({"audio": 6, "video": 8}, {"audio": 4, "video": 3}, 5)
        ...     config = TrainConfig(epochs=2, batch_size=16, seed=seed, progress=False)
        ...     _ = Trainer(model, data, modalities=model.fusion_layout(), eval_data=data,
        ...                 out_dir=f"{folder}/vanilla-seed{seed}", config=config).fit()
        >>> result = report(folder)
        >>> result
        RunReport(training, 2 runs, methods=['vanilla'], 3 figures in .../figures)
        >>> sorted(result.to_frame().query("metric == 'eval_accuracy'").columns)
        ['mean', 'method', 'metric', 'num_seeds', 'std']
    """
    from attnprobe import _run_figures, example

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is not a folder" if run_dir.exists() else "does not exist"
        raise AttnProbeError(
            f"{run_dir} {what}; expected a run folder: one written by `attnprobe example "
            "rollingq`, a Trainer out_dir (with metrics.csv), or a folder of Trainer out_dirs."
        )
    target = run_dir if out is None else Path(out)
    if example._is_example_folder(run_dir):
        summary, runs, figures = example._report(run_dir, target, progress=progress)
        return RunReport("example", run_dir, target, runs, summary, tuple(figures))
    found = _training_runs(run_dir)
    runs = pd.DataFrame(
        [_final_row(run_dir, method, seed, folder) for method, seed, folder in found]
    )
    summary = summarise(runs.drop(columns="run"))
    target.mkdir(parents=True, exist_ok=True)
    runs.to_csv(target / "runs.csv", index=False)
    summary.to_csv(target / "summary.csv", index=False)
    (target / "summary.md").write_text(_markdown(run_dir, runs, summary))
    order = list(dict.fromkeys(runs["method"]))
    figures = _run_figures.draw(target / "figures", found, order, progress=progress)
    return RunReport("training", run_dir, target, runs, summary, tuple(figures))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _training_runs(run_dir: Path) -> list[tuple[str, int, Path]]:
    """``(method, seed, folder)`` of every training run in ``run_dir`` (itself, or sub-folders
    one or two levels down), sorted by name."""
    if (run_dir / _METRICS).is_file():
        folders = [run_dir]
    else:
        files = sorted([*run_dir.glob(f"*/{_METRICS}"), *run_dir.glob(f"*/*/{_METRICS}")])
        folders = [f.parent for f in files if f.is_file()]
    if not folders:
        raise AttnProbeError(
            f"{run_dir} holds no run: expected {_METRICS} in it or in its sub-folders (a "
            "Trainer out_dir), or an `attnprobe example rollingq` folder (config.json, runs/)."
        )
    found = []
    for folder in folders:
        name = _name(run_dir, folder)
        match = _SEED.match(name)
        if match:
            found.append((match["method"], int(match["seed"]), folder))
        else:
            found.append((name, 0, folder))
    return found


def _name(run_dir: Path, folder: Path) -> str:
    return run_dir.name if folder == run_dir else folder.relative_to(run_dir).as_posix()


def _final_row(run_dir: Path, method: str, seed: int, folder: Path) -> dict[str, object]:
    """A run's final numbers: the last value of every diagnostic column."""
    metrics = read_metrics(folder / _METRICS)
    last = metrics.ffill().iloc[-1]
    row: dict[str, object] = {"method": method, "seed": seed, "run": _name(run_dir, folder)}
    row["epochs"] = int(last["epoch"]) + 1
    for column in metrics.columns:
        wanted = column in _FIXED or column.startswith(_PREFIXES)
        if wanted and not column.startswith("eval_share_"):
            row[column] = float(last[column])
    if "eval_accuracy" in metrics and metrics["eval_accuracy"].notna().any():
        accuracy = metrics["eval_accuracy"].to_numpy(float)
        best = int(np.nanargmax(accuracy))
        row["best_eval_accuracy"] = float(accuracy[best])
        row["best_epoch"] = int(metrics["epoch"].iloc[best])
    if "train_time_s" in metrics:
        row["train_seconds"] = float(metrics["train_time_s"].sum())
    return row


def _markdown(run_dir: Path, runs: pd.DataFrame, summary: pd.DataFrame) -> str:
    """Metrics as rows, methods as columns: ``mean ± std`` over seeds (the value for one)."""
    methods = list(dict.fromkeys(runs["method"]))
    seeds = runs.groupby("method", sort=False)["seed"].count()
    lines = [
        f"# Run report: {run_dir}",
        "",
        f"{_count(len(runs), 'run')}; the last epoch of each (evaluation columns: the last "
        "evaluated epoch). With several seeds: mean ± std over seeds.",
        "",
        "| metric | "
        + " | ".join(f"{m} ({seeds[m]} seeds)" if seeds[m] > 1 else m for m in methods)
        + " |",
        "|---|" + "---|" * len(methods),
    ]
    for metric in dict.fromkeys(summary["metric"]):
        cells = []
        for m in methods:
            part = summary[(summary["method"] == m) & (summary["metric"] == metric)]
            if part.empty:
                cells.append("–")
            elif part["num_seeds"].iloc[0] > 1:
                cells.append(f"{part['mean'].iloc[0]:.4g} ± {part['std'].iloc[0]:.2g}")
            else:
                cells.append(f"{part['mean'].iloc[0]:.4g}")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
