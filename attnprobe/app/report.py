"""Rebuild the figures and summary tables of a run folder from its files alone
(``attnprobe report RUN_DIR``).

Two kinds of folder are understood:

- an **example folder**, written by ``attnprobe example rollingq``
  (`attnprobe.app.example.run`): this report plus the example's own numbers, paired tests and
  figures (`attnprobe.app.example.report`);
- **training runs**: the ``out_dir`` of one `attnprobe.training.Trainer` or of the
  `attnprobe.callbacks.RunFiles` callback in one's own loop (``metrics.csv``), a Lightning
  ``CSVLogger`` folder or a HuggingFace Trainer ``output_dir`` with attnprobe's columns
  (`attnprobe.app.runs` says what each holds), or a folder whose sub-folders (one or two levels
  down) are such runs. Each
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

`write_report` is that pipeline for any kind of run: per-run rows, the summary over seeds,
the tables, ``summary.md`` and the figures; the example calls it with its own rows, its paired
tests and its extra figures. `markdown_table` is the Markdown table both summaries use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from attnprobe import AttnProbeError
from attnprobe._text import count
from attnprobe.app.figures import Extra, draw
from attnprobe.app.runs import Run, find_training_runs, read_run, run_name, summarise

__all__ = ["RunReport", "markdown_table", "mean_std", "report", "write_report"]

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
            f"RunReport({self.kind}, {count(len(self.runs), 'run')}, methods={methods}, "
            f"{len(self.figures)} figures in {self.out / 'figures'})"
        )


def report(
    run_dir: str | Path, out: str | Path | None = None, *, progress: bool = False
) -> RunReport:
    """Rebuild the tables and figures of a run folder from its files.

    Args:
        run_dir: an example folder (``attnprobe example rollingq``), a training run (the
            ``out_dir`` of a `attnprobe.training.Trainer` or `attnprobe.callbacks.RunFiles`, a
            Lightning ``CSVLogger`` folder, a HuggingFace Trainer ``output_dir``), or a folder
            of such runs.
        out: where the tables and ``figures/`` go (default: ``run_dir``).
        progress: a progress bar over the figures (on a terminal).

    Returns:
        A `RunReport`.

    Raises:
        AttnProbeError: ``run_dir`` is missing or holds no run, or a run file is corrupt.

    Examples:
        >>> import tempfile, torch
        >>> from attnprobe.models import LateFusionTransformer
        >>> from attnprobe.app.report import report
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
    from attnprobe.app import example  # the example builds on this module

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is not a folder" if run_dir.exists() else "does not exist"
        raise AttnProbeError(
            f"{run_dir} {what}; expected a run folder: one written by `attnprobe example "
            "rollingq`, a training run (a Trainer or RunFiles out_dir, a Lightning CSVLogger "
            "folder, a HuggingFace Trainer output_dir), or a folder of training runs."
        )
    target = run_dir if out is None else Path(out)
    if example.is_example_folder(run_dir):
        return example.rebuild(run_dir, target, progress=progress)
    return write_report(
        "training",
        run_dir,
        target,
        find_training_runs(run_dir),
        lambda run: _final_row(run_dir, run),
        lambda runs, summary, _: _markdown(run_dir, runs, summary),
        progress=progress,
    )


def write_report(
    kind: Literal["example", "training"],
    run_dir: Path,
    out: Path,
    found: Sequence[Run],
    final_row: Callable[[Run], Mapping[str, object]],
    markdown: Callable[[pd.DataFrame, pd.DataFrame, Mapping[str, pd.DataFrame]], str],
    *,
    tables: Mapping[str, Callable[[pd.DataFrame], pd.DataFrame]] | None = None,
    labels: Mapping[str, str] | None = None,
    order: Sequence[str] | None = None,
    figures: Extra | None = None,
    progress: bool = False,
) -> RunReport:
    """Write the report of ``found`` into ``out``: ``runs.csv`` (one `final_row` per run),
    ``summary.csv`` (mean ± std over seeds per method and metric, `summarise`), the extra
    ``tables``, ``summary.md`` and ``figures/``.

    Every run's row is read before any file is written, so a run file that ``final_row``
    finds corrupt leaves ``out`` as it was.

    Args:
        kind: what ``run_dir`` is (`RunReport.kind`).
        run_dir: the folder the runs were found in.
        out: where the tables and ``figures/`` go (created).
        found: the runs, ``(method, seed, folder)``, in the order of the tables.
        final_row: a run's final numbers (``method`` and ``seed`` first).
        markdown: ``summary.md`` from the per-run table, the summary and the extra tables.
        tables: extra CSV files, by file name: each computed from the per-run table.
        labels: the name a method has in the figures (default: the method itself).
        order: the methods in the order of legends and colours (default: as found).
        figures: figures drawn after the training ones (`attnprobe.app.figures.Extra`).
        progress: a progress bar over the figures (on a terminal).

    Returns:
        A `RunReport`.
    """
    runs = pd.DataFrame([dict(final_row(run)) for run in found])
    summary = summarise(runs)
    extra = {name: table(runs) for name, table in (tables or {}).items()}
    out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out / "runs.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    for name, table in extra.items():
        table.to_csv(out / name, index=False)
    (out / "summary.md").write_text(markdown(runs, summary, extra))
    names = dict(labels or {})
    labelled = [(names.get(m, m), seed, folder) for m, seed, folder in found]
    methods = list(dict.fromkeys(m for m, _, _ in found)) if order is None else order
    written = draw(
        out / "figures",
        labelled,
        [names.get(m, m) for m in methods],
        extra=figures,
        progress=progress,
    )
    return RunReport(kind, run_dir, out, runs, summary, tuple(written))


def mean_std(row: pd.Series) -> str:
    """A summary row as a table cell: ``mean ± std`` over several seeds, the value for one."""
    if row["num_seeds"] > 1:
        return f"{row['mean']:.4g} ± {row['std']:.2g}"
    return f"{row['mean']:.4g}"


def markdown_table(
    summary: pd.DataFrame,
    columns: Mapping[str, str],
    rows: Iterable[tuple[str, str]],
    cell: Callable[[pd.Series], str] = mean_std,
) -> list[str]:
    """The lines of a Markdown table of a summary (`summarise`): metrics as rows, methods as
    columns.

    Args:
        summary: one row per (method, metric): ``mean``, ``std``, ``num_seeds``.
        columns: the methods shown, each with its column header.
        rows: ``(metric, label)`` per table row.
        cell: a summary row as a cell (``–`` where a method lacks the metric).

    Examples:
        >>> summary = pd.DataFrame(
        ...     {"method": ["a", "b"], "metric": ["acc"] * 2, "mean": [0.5, 0.7],
        ...      "std": [0.1, float("nan")], "num_seeds": [2, 1]})
        >>> print("\\n".join(markdown_table(summary, {"a": "a (2 seeds)", "b": "b", "c": "c"},
        ...                                 [("acc", "accuracy")])))
        | metric | a (2 seeds) | b | c |
        |---|---|---|---|
        | accuracy | 0.5 ± 0.1 | 0.7 | – |
    """
    lines = [
        "| metric | " + " | ".join(_cell_text(c) for c in columns.values()) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for metric, label in rows:
        cells = []
        for method in columns:
            part = summary[(summary["method"] == method) & (summary["metric"] == metric)]
            cells.append("–" if part.empty else cell(part.iloc[0]))
        lines.append(f"| {_cell_text(label)} | " + " | ".join(cells) + " |")
    return lines


def _cell_text(text: str) -> str:
    """``text`` in a Markdown table cell: a ``|`` (as in ``|AIR|``) escaped, or it would end
    the cell."""
    return text.replace("|", "\\|")


def _final_row(run_dir: Path, run: Run) -> dict[str, object]:
    """A training run's final numbers: the last value of every diagnostic column."""
    method, seed, folder = run
    metrics = read_run(folder)
    last = metrics.ffill().iloc[-1]
    row: dict[str, object] = {"method": method, "seed": seed, "run": run_name(run_dir, folder)}
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
    seeds = runs.groupby("method", sort=False)["seed"].count()
    columns = {m: f"{m} ({seeds[m]} seeds)" if seeds[m] > 1 else m for m in seeds.index}
    metrics = dict.fromkeys(summary["metric"])
    lines = [
        f"# Run report: {run_dir}",
        "",
        f"{count(len(runs), 'run')}; the last epoch of each (evaluation columns: the last "
        "evaluated epoch). With several seeds: mean ± std over seeds.",
        "",
        *markdown_table(summary, columns, ((metric, metric) for metric in metrics)),
    ]
    return "\n".join(lines) + "\n"
