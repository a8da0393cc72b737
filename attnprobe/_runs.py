"""Reading run files (the training wrapper's CSVs and the example's), with one clear error
for a missing or corrupt file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from attnprobe._errors import AttnProbeError

__all__ = ["read_csv", "read_metrics", "summarise"]


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


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (method, metric) over seeds: ``mean``, ``std`` (ddof 1) and ``num_seeds``, from a
    per-run table with ``method``, ``seed`` and numeric metric columns; all-NaN metrics of a
    method are left out."""
    long = runs.melt(id_vars=["method", "seed"], var_name="metric")
    return (
        long.groupby(["method", "metric"], sort=False)["value"]
        .agg(mean="mean", std="std", num_seeds="count")
        .reset_index()
        .dropna(subset=["mean"])
        .reset_index(drop=True)
    )
