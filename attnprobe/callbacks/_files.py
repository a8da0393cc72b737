"""A training run's files as a callback: the metrics CSV (one row per epoch, appended and
fsynced), the attention history, an atomic checkpoint, TensorBoard scalars, and resuming from
them — what ``attnprobe report`` reads."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from attnprobe._distributed import rank_and_world
from attnprobe._io import load_tagged
from attnprobe.analysis.history import History
from attnprobe.callbacks._core import AttentionDiagnostics, Callback
from attnprobe.errors import ProbeConfigError

__all__ = ["ATTENTION", "CHECKPOINT", "METRICS", "RunFiles", "load_checkpoint"]

METRICS = "metrics.csv"
"""File name of the per-epoch metrics (one row per epoch, appended and fsynced)."""
CHECKPOINT = "checkpoint.pt"
"""File name of the checkpoint (replaced atomically every epoch)."""
ATTENTION = "attention.csv"
"""File name of the per-epoch attention history (`attnprobe.History` frame)."""
_FORMAT = "attnprobe.training/1"


class RunFiles(Callback):
    """Write a run's files into ``out_dir`` at every epoch's end (rank 0; the other ranks wait),
    and resume from them.

    Files: ``metrics.csv`` (the epoch's row appended and fsynced; rewritten atomically when a
    row brings new columns), ``attention.csv`` (the `AttentionDiagnostics` history), and with
    ``state``, ``checkpoint.pt`` (replaced atomically; loads with
    ``torch.load(weights_only=True)``); TensorBoard scalars in ``out_dir/tensorboard``.

    Args:
        out_dir: the run's folder (``attnprobe report out_dir`` reads it).
        diagnostics: whose attention history goes to ``attention.csv``.
        state: what the checkpoint holds besides the rows, e.g.
            ``lambda: {"model": model.state_dict(), "optimizer": optimizer.state_dict()}``
            (tensors and plain Python values only; called on rank 0 only, at the epoch's end);
            None writes no checkpoint.
        tensorboard: None = when ``tensorboard`` is installed, True = required, False = never.

    A loop that resumes calls `resume` before training: it returns the checkpoint's state (None
    when there is none) for the loop to restore, with ``"epoch"``, the next epoch to run.
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        diagnostics: AttentionDiagnostics | None = None,
        state: Callable[[], Mapping[str, Any]] | None = None,
        tensorboard: bool | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.diagnostics = diagnostics
        self.state = state
        self.tensorboard = tensorboard
        self.rows: list[dict[str, Any]] = []
        """One metrics row per finished epoch (restored by `resume`)."""
        self._writer: Any = None

    def resume(self) -> dict[str, Any] | None:
        """The checkpoint's state when ``out_dir`` has one (rows before its epoch restored,
        ``metrics.csv`` and the attention history cut back to them); None otherwise (the rows
        of a run killed before its first checkpoint are removed)."""
        rank, world = rank_and_world()
        path = self.out_dir / CHECKPOINT
        state = load_checkpoint(path) if path.exists() else None
        self.rows = [] if state is None else [dict(r) for r in state["rows"]]
        if rank == 0 and (state is not None or (self.out_dir / METRICS).exists()):
            _rewrite_rows(self.out_dir / METRICS, self.rows)  # drop rows of the lost epoch
        attention = self.out_dir / ATTENTION
        if state is not None and self.diagnostics is not None and attention.exists():
            exclude = self.diagnostics.exclude
            history = History.load(attention, exclude=exclude).before(int(state["epoch"]))
            self.diagnostics.history = history
        if world > 1:
            dist.barrier()
        return state

    def start_over(self) -> None:
        """Forget what ``out_dir`` holds from an earlier run: no rows, an empty
        ``metrics.csv`` (the checkpoint is replaced after the first epoch)."""
        rank, world = rank_and_world()
        self.rows = []
        if rank == 0 and (self.out_dir / METRICS).exists():
            _rewrite_rows(self.out_dir / METRICS, [])
        if world > 1:
            dist.barrier()

    def on_fit_start(self, model: nn.Module) -> None:
        if self.tensorboard is False or rank_and_world()[0] != 0:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if self.tensorboard:
                raise ProbeConfigError(
                    "RunFiles(tensorboard=True) needs the tensorboard package: pip install "
                    "tensorboard (or attnprobe[tensorboard])."
                ) from None
            return
        # purge_step drops events a killed run wrote after its last checkpoint
        self._writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=len(self.rows))

    def on_epoch_end(self, epoch: int, row: Mapping[str, Any]) -> dict[str, Any]:
        """Append ``row`` (the complete row: list this callback last), save the history, then
        replace the checkpoint."""
        self.rows.append(dict(row))
        rank, world = rank_and_world()
        if rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            _write_metrics(self.out_dir / METRICS, self.rows)
            if self.diagnostics is not None:
                self.diagnostics.history.save(self.out_dir / ATTENTION)
            if self.state is not None:
                saved = {
                    **self.state(),
                    "format": _FORMAT,
                    "epoch": epoch + 1,
                    "rows": [dict(r) for r in self.rows],
                }
                _atomic_save(saved, self.out_dir / CHECKPOINT)
            if self._writer is not None:
                for key, value in row.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        self._writer.add_scalar(key, value, global_step=epoch)
                self._writer.flush()
        if world > 1:
            dist.barrier()
        return {}

    def on_fit_end(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint, loaded with ``torch.load(weights_only=True)`` (no arbitrary
    unpickling); a foreign or corrupt file raises `AttnProbeError` saying so."""
    return load_tagged(
        path,
        _FORMAT,
        "an attnprobe training checkpoint",
        "delete it or choose another out_dir",
    )


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every key of ``rows``, in order of first appearance."""
    return list(dict.fromkeys(key for row in rows for key in row))


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append the last row and fsync; when it brings new columns (the first evaluation epoch
    with ``eval_every > 1``), rewrite the file atomically with every column instead, so the
    CSV always has one header for all rows (empty cells where a row has no value)."""
    columns = _columns(rows)
    header = None
    if path.exists() and path.stat().st_size > 0:
        with open(path, newline="") as handle:
            header = next(csv.reader(handle), None)
    if header != columns:
        _rewrite_rows(path, rows)
        return
    with open(path, "a", newline="") as handle:
        csv.DictWriter(handle, fieldnames=columns, restval="").writerow(rows[-1])
        handle.flush()
        os.fsync(handle.fileno())


def _rewrite_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace the metrics file by exactly ``rows`` (atomically)."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=_columns(rows), restval="")
        writer.writeheader()
        writer.writerows(rows)
    _atomic_write(path, buffer.getvalue().encode())


def _atomic_save(state: dict[str, Any], path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    _atomic_write(path, buffer.getvalue())


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file, fsync, and rename over ``path``: readers see the old file
    or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
