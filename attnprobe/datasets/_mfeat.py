"""UCI Multiple Features (handwritten digits, six views), shipped in the package
(``docs/guides/datasets.md``; provenance and license in ``data/README.md``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from importlib import resources

import numpy as np
import torch

from attnprobe.datasets._base import MultimodalDataset
from attnprobe.datasets._synthetic import SPLITS
from attnprobe.errors import AttnProbeError

__all__ = ["MFEAT_VIEWS", "mfeat", "mfeat_arrays"]

MFEAT_VIEWS = ("fac", "fou", "kar", "pix", "zer", "mor")
"""The six views: profile correlations (216), Fourier coefficients (76), Karhunen–Loève
coefficients (64), pixel averages (240), Zernike moments (47), morphological features (6)."""


def mfeat_arrays() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The raw data: per view a float32 ``[2000, F]`` array, and the int64 ``[2000]`` labels
    (rows in class order, 200 per digit)."""
    with resources.files("attnprobe.datasets").joinpath("data/mfeat.npz").open("rb") as handle:
        archive = np.load(handle)
        views = {v: archive[v] for v in MFEAT_VIEWS}
        labels = archive["labels"]
    return views, labels


def mfeat(
    split: str = "train",
    *,
    views: Sequence[str] = MFEAT_VIEWS,
    token_size: int = 8,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> MultimodalDataset:
    """One split of UCI Multiple Features, tokenised per view.

    The 2000 digits are split per class (stratified, shuffled by ``seed``) into train / val /
    test by ``fractions``; every feature is standardised with the *training* split's mean and
    standard deviation (no test statistics leak); each view's feature vector is then cut into
    tokens of ``token_size`` features, the last one zero-padded (zero = the training mean).
    A model adds the per-view embedding (the reference models' per-modality input projection
    and position embedding).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        views: the views, as modalities, in this order.
        token_size: features per token.
        seed: seeds the split.
        fractions: train, val and test fractions (summing to 1).

    Examples:
        >>> import attnprobe.datasets as ds
        >>> test = ds.mfeat("test", views=["pix", "fou"])
        >>> test
        MultimodalDataset('mfeat/test', 400 samples, 10 classes, pix=[30, 8], fou=[10, 8])
    """
    if split not in SPLITS:
        raise AttnProbeError(f"mfeat: expected split in {list(SPLITS)}, received {split!r}.")
    unknown = [v for v in views if v not in MFEAT_VIEWS]
    if unknown or not views or len(set(views)) != len(views):
        raise AttnProbeError(
            f"mfeat: expected distinct views from {list(MFEAT_VIEWS)}, received {list(views)}."
        )
    if token_size < 1:
        raise AttnProbeError(f"mfeat: expected token_size >= 1, received {token_size}.")
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0):
        raise AttnProbeError(
            f"mfeat: expected three fractions >= 0 summing to 1, received {fractions}."
        )
    arrays, labels = mfeat_arrays()
    rng = np.random.default_rng(seed)
    bounds = np.cumsum([0.0, *fractions])
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        cut = np.round(bounds * len(rows)).astype(int)
        for k, s in enumerate(SPLITS):
            parts[s].append(rows[cut[k] : cut[k + 1]])
    train_rows = np.concatenate(parts["train"])
    rows = np.sort(np.concatenate(parts[split]))
    inputs = {}
    for v in views:
        x = arrays[v].astype(np.float64)  # (2000, F)
        mean, std = x[train_rows].mean(0), x[train_rows].std(0)
        z = (x[rows] - mean) / np.where(std > 0, std, 1.0)  # (N, F)
        tokens = -(-z.shape[1] // token_size)
        z = np.pad(z, ((0, 0), (0, tokens * token_size - z.shape[1])))  # (N, T·t)
        inputs[v] = torch.from_numpy(z.reshape(len(rows), tokens, token_size)).float()  # (N, T, t)
    targets = torch.from_numpy(labels[rows].astype(np.int64))
    return MultimodalDataset(f"mfeat/{split}", inputs, targets, 10)
