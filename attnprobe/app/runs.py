"""Reading run files and summarising runs: the training wrapper's CSVs and the example's, with
one clear error for a missing or corrupt file; finding the runs of a folder; mean ± std over
seeds.

A training run is a folder holding one of (`read_run` gives its rows, one per epoch):

- ``metrics.csv`` written by `attnprobe.training.Trainer` or the `attnprobe.callbacks.RunFiles`
  callback of one's own loop;
- ``metrics.csv`` of Lightning's ``CSVLogger`` with attnprobe's columns (``attnprobe/air``, …,
  from `attnprobe.integrations.lightning`): the last value logged in each epoch, names without
  the prefix;
- ``trainer_state.json`` of a HuggingFace ``transformers.Trainer`` with attnprobe's columns in
  its log history (`attnprobe.integrations.transformers`): the folder's own (written by
  ``trainer.save_state()``), else its last ``checkpoint-<step>`` folder's.

A run is ``(method, seed, folder)`` (`Run`): ``method`` names what was trained (the runs of one
method over seeds are grouped), ``folder`` holds its files.
"""

from __future__ import annotations

import json
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
    "read_run",
    "run_file",
    "run_name",
    "split_seed",
    "stack",
    "summarise",
]

Run = tuple[str, int, Path]
"""``(method, seed, run folder)``; in figures ``method`` is the label shown."""

METRICS = "metrics.csv"
"""The training wrapper's per-epoch file, written into every run folder."""

HF_STATE = "trainer_state.json"
"""The HuggingFace Trainer's state file (its log history holds the logged columns)."""
PREFIX = "attnprobe/"
"""The prefix of attnprobe's columns in the training frameworks' logs."""

_SEED = re.compile(r"^(?P<method>.+?)[-_]seed[-_]?(?P<seed>\d+)$")
_CHECKPOINT = re.compile(r"^checkpoint-(?P<step>\d+)$")


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


def run_file(folder: Path) -> Path | None:
    """The file a training run folder's rows come from (see the module's docstring), or None
    when ``folder`` is not a run."""
    if _CHECKPOINT.match(folder.name):  # part of the HF run above it
        return None
    if (folder / METRICS).is_file():
        return folder / METRICS
    if (folder / HF_STATE).is_file():
        return folder / HF_STATE
    saved = [
        (int(m["step"]), f)
        for f in folder.glob(f"checkpoint-*/{HF_STATE}")
        if (m := _CHECKPOINT.match(f.parent.name))
    ]
    return max(saved)[1] if saved else None


def read_run(folder: Path) -> pd.DataFrame:
    """A training run's rows, one per epoch, columns named as attnprobe's Trainer names them
    (``epoch`` from 0, ``share_<m>``, ``air``, …), from whichever file the folder holds."""
    path = run_file(folder)
    if path is None:
        raise AttnProbeError(
            f"{folder} is not a training run: expected {METRICS} (attnprobe's Trainer or "
            f"RunFiles, or Lightning's CSVLogger) or {HF_STATE} (a HuggingFace Trainer)."
        )
    frame = _hf_rows(path) if path.name == HF_STATE else read_metrics(path)
    if any(str(c).startswith(PREFIX) for c in frame.columns):
        frame = _unprefixed(frame, path)
    return frame


def _unprefixed(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """A framework's log as one row per epoch: the last value logged in each epoch (Lightning
    writes a row per logging step), attnprobe's columns without their prefix."""
    frame = frame.groupby("epoch", sort=True).last().reset_index()  # last non-NaN per column
    names = {c: c.removeprefix(PREFIX) for c in frame.columns if c.startswith(PREFIX)}
    frame = frame.drop(columns=[n for n in names.values() if n in frame.columns])
    frame = frame.rename(columns=names)
    frame["epoch"] = frame["epoch"].astype(int)
    return frame


def _hf_rows(path: Path) -> pd.DataFrame:
    """The epochs of a HuggingFace ``trainer_state.json`` that logged attnprobe columns: the
    entries of one step merged, ``epoch`` the index of the epoch that ended (HF's ``epoch``
    counts finished epochs, fractional within one)."""
    try:
        history = json.loads(path.read_text())["log_history"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AttnProbeError(
            f"cannot read {path}: {type(exc).__name__}: {exc}; expected a HuggingFace "
            "trainer_state.json with a log_history."
        ) from None
    steps: dict[int, dict[str, object]] = {}
    for entry in history:
        steps.setdefault(int(entry.get("step", 0)), {}).update(entry)
    rows = [row for _, row in sorted(steps.items()) if any(k.startswith(PREFIX) for k in row)]
    if not rows:
        raise AttnProbeError(
            f"{path} logs no attnprobe columns ({PREFIX}…): attach attnprobe's callbacks "
            "(attnprobe.integrations.transformers) to the Trainer that writes it."
        )
    frame = pd.DataFrame(rows)
    frame["epoch"] = frame["epoch"].round().astype(int) - 1
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
    """Every training run in ``run_dir`` (itself, or sub-folders one or two levels down; see
    the module's docstring for what a run folder holds), sorted by name.

    A run is named by its path below ``run_dir``; a name ending in ``-seed<k>`` or ``_seed<k>``
    (`split_seed`) gives the method and the seed, any other name is a method of seed 0.

    Raises:
        AttnProbeError: no run in ``run_dir`` nor below it.
    """
    if run_file(run_dir) is not None:
        folders = [run_dir]
    else:
        below = sorted({*run_dir.glob("*/"), *run_dir.glob("*/*/")})
        folders = [f for f in below if f.is_dir() and run_file(f) is not None]
    if not folders:
        raise AttnProbeError(
            f"{run_dir} holds no run: expected {METRICS} (a Trainer or RunFiles out_dir, a "
            f"Lightning CSVLogger folder) or {HF_STATE} (a HuggingFace Trainer output_dir) in "
            "it or in its sub-folders, or an `attnprobe example rollingq` folder (config.json, "
            "runs/)."
        )
    found = []
    for folder in folders:
        name = run_name(run_dir, folder)
        method, seed = split_seed(name) or (name, 0)
        found.append((method, seed, folder))
    return found


def stack(found: Sequence[Run], name: str) -> pd.DataFrame:
    """The file ``name`` of every run that has it, one table with ``method`` and ``seed``
    columns added (empty when no run has it); ``METRICS`` means each run's rows
    (`read_run`, from whichever file the run holds)."""
    frames = []
    for method, seed, folder in found:
        if name == METRICS and run_file(folder) is not None:
            frame = read_run(folder)
        elif name != METRICS and (folder / name).exists():
            frame = read_csv(folder / name)
        else:
            continue
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
