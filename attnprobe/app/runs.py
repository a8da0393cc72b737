"""Reading run files and summarising runs: the training wrapper's CSVs and the example's, with
one clear error for a missing or corrupt file; finding the runs of a folder; mean ± std over
seeds.

A run is ``(method, seed, folder)`` (`Run`): ``method`` names what was trained (the runs of one
method over seeds are grouped), ``folder`` holds its files.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from attnprobe import AttnProbeError

__all__ = [
    "METRICS",
    "Run",
    "air_columns",
    "find_training_runs",
    "key_gap_columns",
    "read_csv",
    "read_metrics",
    "run_name",
    "split_seed",
    "stack",
    "summarise",
]

Run = tuple[str, int, Path]
"""``(method, seed, run folder)``; in figures ``method`` is the label shown."""

METRICS = "metrics.csv"
"""The training wrapper's per-epoch file, written into every run folder."""

_SEED = re.compile(r"^(?P<method>.+?)[-_]seed[-_]?(?P<seed>\d+)$")


def read_csv(path: Path) -> pd.DataFrame:
    """A run file as a DataFrame; an unreadable file is an `AttnProbeError` naming it."""
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        message = " ".join(str(exc).split())
        raise AttnProbeError(
            f"cannot read {path}: {type(exc).__name__}: {message}; expected a CSV file written "
            "by attnprobe (rerun the training or remove the run folder)."
        ) from None


def read_metrics(path: Path) -> pd.DataFrame:
    """A training wrapper's ``metrics.csv``, checked: rows, an ``epoch`` column, numbers only."""
    frame = read_csv(path)
    if "epoch" not in frame.columns or frame.empty:
        found = "no rows" if frame.empty else f"columns {list(frame.columns)[:6]}"
        raise AttnProbeError(
            f"{path} is not a training metrics file: expected a header with an 'epoch' column "
            f"and one row per epoch (attnprobe.training.Trainer writes it), found {found}."
        )
    for column in frame.columns:
        values = frame[column]
        if not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)):
            text = values.dropna().astype(str)
            bad = text[~text.isin(("True", "False")) & pd.to_numeric(text, errors="coerce").isna()]
            if bad.empty:
                continue
            raise AttnProbeError(
                f"{path} is corrupt: column {column!r} holds {bad.iloc[0]!r} in row "
                f"{int(bad.index[0]) + 2}, expected numbers; rerun the training to rewrite it."
            )
    return frame


def air_columns(metrics: pd.DataFrame) -> list[str]:
    """The attention imbalance ratio columns of a metrics table: ``air`` for two modalities,
    ``air_<a>_<b>`` per pair for more."""
    return [c for c in metrics.columns if c == "air" or c.startswith("air_")]


def key_gap_columns(metrics: pd.DataFrame) -> list[str]:
    """The key-gap columns of a metrics table: ``key_gap``, or ``key_gap_<a>_<b>`` per pair."""
    return [c for c in metrics.columns if c == "key_gap" or c.startswith("key_gap_")]


def split_seed(name: str) -> tuple[str, int] | None:
    """``(method, seed)`` of a run named ``<method>-seed<k>`` or ``<method>_seed<k>``; ``None``
    for another name.

    Examples:
        >>> split_seed("rollingq_gated-seed3"), split_seed("vanilla_seed0"), split_seed("run")
        (('rollingq_gated', 3), ('vanilla', 0), None)
    """
    match = _SEED.match(name)
    return None if match is None else (match["method"], int(match["seed"]))


def run_name(run_dir: Path, folder: Path) -> str:
    """A run's name: its path below ``run_dir``, or ``run_dir``'s own name for ``run_dir``."""
    return run_dir.name if folder == run_dir else folder.relative_to(run_dir).as_posix()


def find_training_runs(run_dir: Path) -> list[Run]:
    """Every training-wrapper run in ``run_dir`` (itself, or sub-folders one or two levels
    down that hold a ``metrics.csv``), sorted by name.

    A run is named by its path below ``run_dir``; a name ending in ``-seed<k>`` or ``_seed<k>``
    (`split_seed`) gives the method and the seed, any other name is a method of seed 0.

    Raises:
        AttnProbeError: no ``metrics.csv`` in ``run_dir`` nor below it.
    """
    if (run_dir / METRICS).is_file():
        folders = [run_dir]
    else:
        files = sorted([*run_dir.glob(f"*/{METRICS}"), *run_dir.glob(f"*/*/{METRICS}")])
        folders = [f.parent for f in files if f.is_file()]
    if not folders:
        raise AttnProbeError(
            f"{run_dir} holds no run: expected {METRICS} in it or in its sub-folders (a "
            "Trainer out_dir), or an `attnprobe example rollingq` folder (config.json, runs/)."
        )
    found = []
    for folder in folders:
        name = run_name(run_dir, folder)
        method, seed = split_seed(name) or (name, 0)
        found.append((method, seed, folder))
    return found


def stack(found: Sequence[Run], name: str) -> pd.DataFrame:
    """The file ``name`` of every run that has it, one table with ``method`` and ``seed``
    columns added (empty when no run has it); a ``metrics.csv`` is checked (`read_metrics`)."""
    frames = []
    for method, seed, folder in found:
        if (folder / name).exists():
            read = read_metrics if name == METRICS else read_csv
            frame = read(folder / name)
            labels = pd.DataFrame({"method": method, "seed": seed}, index=frame.index)
            frames.append(pd.concat([frame, labels], axis=1))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (method, metric) over seeds: ``mean``, ``std`` (ddof 1) and ``num_seeds``, from a
    per-run table with ``method``, ``seed``, optionally ``run`` (the run's name, left out) and
    numeric metric columns; all-NaN metrics of a method are left out.

    Examples:
        >>> runs = pd.DataFrame({"method": ["a", "a"], "seed": [0, 1], "acc": [0.5, 0.7]})
        >>> summarise(runs).round(3)
          method metric  mean    std  num_seeds
        0      a    acc   0.6  0.141          2
    """
    long = runs.drop(columns=["run"], errors="ignore").melt(
        id_vars=["method", "seed"], var_name="metric"
    )
    return (
        long.groupby(["method", "metric"], sort=False)["value"]
        .agg(mean="mean", std="std", num_seeds="count")
        .reset_index()
        .dropna(subset=["mean"])
        .reset_index(drop=True)
    )
