"""`History`: analyzer results collected over training, as one tidy frame, saved and loaded.

Each `History.add` stores the tidy frame of one result with ``step`` and ``epoch`` columns in
front (and any extra scalars, such as an accuracy, as further columns), so that plots of any
quantity over training are a ``groupby`` away. Saved as CSV (always available) or Parquet (with
``pyarrow`` installed), chosen by the file suffix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from attnprobe._text import count
from attnprobe.analysis.bias import ModalityBias, modality_bias
from attnprobe.errors import AttnProbeError
from attnprobe.results import ProbeResult

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["History"]

Scalar = int | float | str | bool


class History:
    """Results over training steps or epochs, as one tidy frame.

    Args:
        exclude: key groups that `ProbeResult`s added to the history leave out of shares
            (passed to `modality_bias`), e.g. ``["cls"]``.

    Examples:
        >>> import torch, attnprobe as ap
        >>> from attnprobe.models import FusionAttention
        >>> layer = FusionAttention(dim=8).eval()
        >>> history = ap.History(exclude=["cls"])
        >>> for epoch in range(3):
        ...     with ap.probe(layer, modalities={"cls": 1, "audio": 2, "video": 3}) as p:
        ...         _ = layer(torch.randn(4, 5, 8))
        ...     history.add(p.result(), epoch=epoch, accuracy=0.5 + 0.1 * epoch)
        >>> frame = history.to_frame()
        >>> list(frame.columns[:3]), sorted(frame["epoch"].unique().tolist())
        (['step', 'epoch', 'accuracy'], [0, 1, 2])
    """

    def __init__(self, *, exclude: Sequence[str] = ()) -> None:
        self.exclude = tuple(exclude)
        self._frames: list[pd.DataFrame] = []

    def add(
        self,
        result: ProbeResult | ModalityBias | pd.DataFrame,
        *,
        step: int | None = None,
        epoch: int | None = None,
        **scalars: Scalar,
    ) -> None:
        """Record one result.

        Args:
            result: a `ProbeResult` (stored as its `modality_bias` frame at head level), a
                `ModalityBias`, or any tidy DataFrame (e.g. a `key_gap` frame).
            step: the training step (optional).
            epoch: the epoch (optional); at least one of ``step`` and ``epoch`` is required.
            scalars: extra columns with one value for every row (accuracy, learning rate, …).
        """
        import pandas as pd

        if step is None and epoch is None:
            raise AttnProbeError(
                "History.add: expected step=... or epoch=... (or both), received neither; "
                "the history is indexed by training time."
            )
        if isinstance(result, ProbeResult):
            frame = modality_bias(result, exclude=self.exclude).to_frame("head")
        elif isinstance(result, ModalityBias):
            frame = result.to_frame("head")
        elif isinstance(result, pd.DataFrame):
            frame = result.copy()
        else:
            raise AttnProbeError(
                "History.add: expected a ProbeResult, a ModalityBias or a pandas DataFrame, "
                f"received {type(result).__name__}."
            )
        clash = [c for c in ("step", "epoch", *scalars) if c in frame.columns]
        if clash:
            raise AttnProbeError(
                f"History.add: the result already has columns {clash}; rename them or pass "
                "them as step/epoch/scalars only once."
            )
        front = {"step": step, "epoch": epoch, **scalars}
        for position, (name, value) in enumerate(front.items()):
            frame.insert(position, name, [value] * len(frame))
        self._frames.append(frame)

    def to_frame(self) -> pd.DataFrame:
        """Every recorded row, in order of recording; ``step`` and ``epoch`` first (nullable
        integers: missing where not given)."""
        import pandas as pd

        if not self._frames:
            return pd.DataFrame(columns=["step", "epoch"])
        frame = pd.concat(self._frames, ignore_index=True)
        for name in ("step", "epoch"):
            frame[name] = frame[name].astype("Int64")
        return frame

    def __len__(self) -> int:
        """Number of results recorded."""
        return len(self._frames)

    def save(self, path: str | Path) -> Path:
        """Write the frame to ``path``: ``.csv`` or ``.parquet`` (needs ``pyarrow``).

        The file is written to a temporary name and moved into place, so a crash never
        leaves a truncated history behind."""
        target = Path(path)
        frame = self.to_frame()
        tmp = target.with_name(target.name + ".tmp")
        if target.suffix == ".csv":
            frame.to_csv(tmp, index=False)
        elif target.suffix == ".parquet":
            _need_parquet("save")
            frame.to_parquet(tmp, index=False)
        else:
            raise AttnProbeError(
                f"History.save: expected a path ending in .csv or .parquet, received {str(path)!r}."
            )
        tmp.replace(target)
        return target

    @classmethod
    def load(cls, path: str | Path, *, exclude: Sequence[str] = ()) -> History:
        """Read a history written by `save` (or any tidy table with ``step``/``epoch``)."""
        import pandas as pd

        source = Path(path)
        if not source.is_file():
            raise AttnProbeError(f"History.load: no file {str(path)!r}.")
        if source.suffix == ".csv":
            frame = pd.read_csv(source)
        elif source.suffix == ".parquet":
            _need_parquet("load")
            frame = pd.read_parquet(source)
        else:
            raise AttnProbeError(
                f"History.load: expected a .csv or .parquet file, received {str(path)!r}."
            )
        missing = [c for c in ("step", "epoch") if c not in frame.columns]
        if missing:
            raise AttnProbeError(
                f"History.load: {str(path)!r} has no column(s) {missing}; expected a table "
                "written by History.save."
            )
        history = cls(exclude=exclude)
        history._frames = [frame]
        return history

    def before(self, epoch: int) -> History:
        """A history of the rows recorded for epochs before ``epoch`` (e.g. to drop what a
        killed run logged after its last checkpoint)."""
        frame = self.to_frame()
        history = History(exclude=self.exclude)
        history._frames = [frame[frame["epoch"] < epoch].reset_index(drop=True)]
        return history

    def __repr__(self) -> str:
        return f"History({count(len(self), 'result')}, {count(len(self.to_frame()), 'row')})"


def _need_parquet(what: str) -> None:
    import importlib.util

    if importlib.util.find_spec("pyarrow") is None:
        raise AttnProbeError(
            f"History.{what}: Parquet needs pyarrow (pip install pyarrow); or use a .csv path."
        )
