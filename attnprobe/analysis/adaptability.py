"""Dynamic adaptability: does attention follow per-sample modality quality?
(``docs/concepts/adaptability.md``)

`NoiseSweep` holds what `attnprobe.noise_sweep` measured — the attention share every sample
gives each modality, with each modality corrupted in turn at noise levels λ — and computes
from it the share and accuracy per level and corrupted modality, and the adaptability score: the
Pearson and Spearman correlations (scipy, with p-values) over (sample, level) pairs between the
share given to the corrupted modality and its quality ``1 − λ``, and ``ΔM_m = M_m(clean) −
M_m(most corrupted)``. A model whose attention is dynamic moves attention away from a corrupted
modality (positive correlation); one with "deactivated dynamics" (RollingQ, Ni et al. 2025,
arXiv 2506.11465) does not (correlation ≈ 0).

Like every analyzer, this module takes results and returns results: running the model is
`attnprobe.noise_sweep`'s job (`attnprobe.sweep`, through `attnprobe.runner.run_probed`). The
corruption ``x̃ = (1 − λ)·x + λ·ε·σ_x`` is `attnprobe.corruption.corrupt` (`attnprobe.corruption`),
re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from attnprobe.corruption import corrupt

if TYPE_CHECKING:  # the old import path of noise_sweep, for type checkers and the API docs
    import pandas as pd

    from attnprobe.sweep import noise_sweep

__all__ = ["NoiseSweep", "corrupt", "noise_sweep"]


def __getattr__(name: str) -> Any:
    """``noise_sweep`` runs a model, so it lives in `attnprobe.sweep`; importing it from here
    (its former home) loads it on first use, so that the analyzers do not import the probe."""
    if name == "noise_sweep":
        from attnprobe.sweep import noise_sweep

        return noise_sweep
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class NoiseSweep:
    """What `attnprobe.noise_sweep` measured, and the adaptability computed from it.

    Examples:
        >>> import pandas as pd
        >>> rows = [("a", level, i, key, share, 1.0)
        ...         for level, shares in ((0.0, (0.7, 0.6)), (1.0, (0.2, 0.3)))
        ...         for i, s in enumerate(shares)
        ...         for key, share in (("a", s), ("b", 1.0 - s))]
        >>> sweep = NoiseSweep(pd.DataFrame(rows, columns=[
        ...     "corrupted", "level", "sample", "key_modality", "share", "correct"]), "cls")
        >>> sweep.to_frame()[["level", "key_modality", "share"]].round(2).values.tolist()
        [[0.0, 'a', 0.65], [0.0, 'b', 0.35], [1.0, 'a', 0.25], [1.0, 'b', 0.75]]
        >>> round(float(sweep.adaptability()["delta_mass"].iloc[0]), 2)
        0.4
    """

    samples: pd.DataFrame
    """One row per (corrupted modality, level, sample, key modality): ``corrupted``,
    ``level``, ``sample``, ``key_modality``, ``share``, ``correct`` (NaN without targets)."""
    query: str
    """The query group whose attention is measured."""

    def samples_frame(self) -> pd.DataFrame:
        """A copy of `samples`."""
        return self.samples.copy()

    def to_frame(self) -> pd.DataFrame:
        """Per corrupted modality, level and key modality: mean ``share`` with its standard
        error ``share_sem``, ``accuracy`` and ``num_samples``."""
        keys = ["corrupted", "level", "key_modality"]
        grouped = self.samples.groupby(keys, sort=False)
        frame = grouped["share"].agg(["mean", "std", "count"]).reset_index()
        frame = frame.rename(columns={"mean": "share", "count": "num_samples"})
        frame["share_sem"] = frame["std"] / np.sqrt(frame["num_samples"])
        frame["accuracy"] = grouped["correct"].mean().to_numpy()
        return frame[
            ["corrupted", "level", "key_modality", "share", "share_sem", "accuracy", "num_samples"]
        ]

    def adaptability(self) -> pd.DataFrame:
        """Per corrupted modality ``m``: Pearson ``r`` and Spearman ``rho`` (with p-values) over
        (sample, level) pairs between the share given to ``m`` and its quality ``1 − λ``, and
        ``delta_mass``, the mean share of ``m`` at the lowest level minus that at the highest
        (``docs/concepts/adaptability.md``'s ``ΔM_m = M_m(clean) − M_m(m corrupted)`` taken on
        shares, so that key groups left out of shares, e.g. ``cls``, do not enter it)."""
        import pandas as pd
        from scipy import stats  # loads on first use: `import attnprobe` stays light

        rows = []
        for modality, part in self.samples.groupby("corrupted", sort=False):
            own = part[part["key_modality"] == modality]
            share = own["share"].to_numpy(dtype=float)
            quality = 1.0 - own["level"].to_numpy(dtype=float)
            finite = np.isfinite(share)
            share, quality = share[finite], quality[finite]
            if len(share) < 3 or np.ptp(share) == 0 or np.ptp(quality) == 0:
                pearson = spearman = (math.nan, math.nan)
            else:
                p = stats.pearsonr(quality, share)
                s = stats.spearmanr(quality, share)
                pearson = (float(p.statistic), float(p.pvalue))
                spearman = (float(s.statistic), float(s.pvalue))
            means = own.groupby("level")["share"].mean()
            rows.append(
                (
                    modality,
                    pearson[0],
                    pearson[1],
                    spearman[0],
                    spearman[1],
                    float(means.iloc[0] - means.iloc[-1]),
                    int(finite.sum()),
                )
            )
        return pd.DataFrame(
            rows,
            columns=[
                "corrupted",
                "pearson_r",
                "pearson_p",
                "spearman_rho",
                "spearman_p",
                "delta_mass",
                "num_pairs",
            ],
        )

    def __repr__(self) -> str:
        levels = [float(x) for x in sorted(self.samples["level"].unique())]
        return (
            f"NoiseSweep(query={self.query!r}, corrupted={list(self.samples['corrupted'].unique())}"
            f", levels={levels})"
        )
