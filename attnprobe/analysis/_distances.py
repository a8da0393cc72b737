"""Two-sample distances between key distributions: the math behind the key-distribution gap.

Formulas: ``docs/concepts/key-gap.md``. Every function here is pure: it takes samples
``x [n, d]`` and ``y [m, d]`` (or their moments) as torch tensors or numpy arrays, computes in
float64 numpy and returns Python floats or a small frozen dataclass. Randomness (subsampling,
permutations, projections, folds) comes from ``np.random.default_rng(seed)``, so a
call is a function of its arguments.

Sources, cited again at each formula:

- centroid cosine gap ``1 − cos(μ_a, μ_b)``;
- MMD²: Gretton, Borgwardt, Rasch, Schölkopf, Smola, "A Kernel Two-Sample Test", JMLR 13
  (2012), eq. 3 (unbiased U-statistic), Sec. 8 (median heuristic);
- sliced Wasserstein: Bonneel, Rabin, Peyré, Pfister, "Sliced and Radon Wasserstein Barycenters
  of Measures", J. Math. Imaging Vis. 51 (2015); 1-D optimal transport by quantile functions:
  Peyré & Cuturi, "Computational Optimal Transport" (2019), Ch. 2, the univariate case;
- Fréchet distance: Dowson & Landau, J. Multivariate Anal. 12 (1982); Heusel et al., "GANs
  Trained by a Two Time-Scale Update Rule ...", NeurIPS 2017 (FID);
- two-sample AUC: Fisher linear discriminant (Hastie, Tibshirani, Friedman, ESL 2nd ed.,
  Sec. 4.3, regularised 4.3.1); AUC by the Mann–Whitney statistic (Hanley & McNeil, Radiology
  143, 1982); classifier two-sample tests: Lopez-Paz & Oquab, ICLR 2017.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

from attnprobe.errors import AnalysisError
from attnprobe.metrics import cosine_gap

__all__ = [
    "MMDResult",
    "centroid_cosine_gap",
    "covariance_from_sums",
    "frechet_distance",
    "frechet_from_samples",
    "median_bandwidth",
    "mmd2_unbiased",
    "rank_auc",
    "sliced_wasserstein2",
    "two_sample_auc",
]

Array: TypeAlias = "torch.Tensor | ArrayLike"
"""Anything these functions accept as data: a torch tensor (any device/dtype) or array-like."""

F64: TypeAlias = NDArray[np.float64]

_PERMUTATION_CHUNK = 256
"""Permutations evaluated per matrix product in `mmd2_unbiased` (bounds memory to N × 256)."""


# --------------------------------------------------------------------------- input checks


def _to_f64(name: str, value: Array) -> F64:
    if isinstance(value, torch.Tensor):
        return value.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(value, dtype=np.float64)


def _check_finite(name: str, arr: F64) -> None:
    if not np.isfinite(arr).all():
        bad = int(arr.size - np.isfinite(arr).sum())
        raise AnalysisError(
            f"{name}: expected finite values, received {bad} NaN/inf entr"
            f"{'y' if bad == 1 else 'ies'} (shape {list(arr.shape)}); drop or impute those "
            "samples before measuring distances."
        )


def _samples(name: str, value: Array, min_rows: int = 1) -> F64:
    """``value`` as a finite float64 ``[n, d]`` array with ``n ≥ min_rows``, ``d ≥ 1``."""
    arr = _to_f64(name, value)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise AnalysisError(
            f"{name}: expected a 2-D array of samples [n, d] with d ≥ 1, received shape "
            f"{list(arr.shape)}; stack the samples as rows, e.g. keys.reshape(-1, head_dim)."
        )
    if arr.shape[0] < min_rows:
        raise AnalysisError(
            f"{name}: expected at least {min_rows} samples (rows), received {arr.shape[0]}; "
            "collect more samples (a larger reservoir) for this pair of groups."
        )
    _check_finite(name, arr)
    return arr


def _sample_pair(x: Array, y: Array, min_rows: int = 1) -> tuple[F64, F64]:
    xa, ya = _samples("x", x, min_rows), _samples("y", y, min_rows)
    if xa.shape[1] != ya.shape[1]:
        raise AnalysisError(
            f"x and y: expected the same feature dimension d, received x {list(xa.shape)} and "
            f"y {list(ya.shape)}; compare samples of the same layer and head."
        )
    return xa, ya


def _vector(name: str, value: Array) -> F64:
    arr = _to_f64(name, value)
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise AnalysisError(
            f"{name}: expected a 1-D vector [d] with d ≥ 1, received shape {list(arr.shape)}; "
            "pass one mean vector (e.g. keys.mean(0))."
        )
    _check_finite(name, arr)
    return arr


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise AnalysisError(f"{name}: expected an integer ≥ {low}, received {value}.")


def _subsample(arr: F64, max_points: int, rng: np.random.Generator) -> F64:
    """At most ``max_points`` rows of ``arr``, drawn without replacement (order kept)."""
    if arr.shape[0] <= max_points:
        return arr
    keep = np.sort(rng.choice(arr.shape[0], size=max_points, replace=False))  # (max_points,)
    return arr[keep]  # (max_points, d)


def _sq_distances(z: F64) -> F64:
    """Squared Euclidean distances ``‖z_i − z_j‖²`` ``[N, N]``, zero diagonal.

    Gram form ``‖a‖² + ‖b‖² − 2 aᵀb`` after centring (distances are translation invariant;
    centring removes the cancellation a large common mean would cause).
    """
    zc = z - z.mean(axis=0)  # (N, d)
    sq = np.einsum("nd,nd->n", zc, zc)  # (N,)
    dist: F64 = zc @ zc.T  # (N, N)
    dist *= -2.0
    dist += sq[:, None]
    dist += sq[None, :]
    np.maximum(dist, 0.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    return dist


def _median_offdiag_distance(sq_dist: F64) -> float:
    """``median_{i<j} √sq_dist[i, j]``, the convention of ``np.median(pdist(z))``."""
    size = sq_dist.shape[0]
    upper = np.concatenate([sq_dist[i, i + 1 :] for i in range(size - 1)])  # (N(N−1)/2,)
    middle = [(upper.shape[0] - 1) // 2, upper.shape[0] // 2]
    upper.partition(middle)
    # sqrt is monotone, so the middle distances are the roots of the middle squared distances;
    # with an even number of pairs the two are averaged after the root, as np.median(pdist) does.
    return float(np.sqrt(upper[middle]).mean())


# --------------------------------------------------------------------------- centroid gap


def centroid_cosine_gap(mu_a: Array, mu_b: Array) -> float:
    """Centroid cosine gap ``1 − cos(μ_a, μ_b) = 1 − μ_aᵀμ_b / (‖μ_a‖ ‖μ_b‖)``.

    ``docs/concepts/key-gap.md``. ``0`` for parallel centroids, ``1`` for orthogonal, ``2`` for
    opposite; clipped to ``[0, 2]`` against rounding. The formula is
    `attnprobe.metrics.cosine_gap`; this function checks its inputs first.

    Args:
        mu_a: ``[d]`` mean key of group a.
        mu_b: ``[d]`` mean key of group b.

    Returns:
        The gap, or NaN when either centroid is the zero vector (the angle is undefined).

    Examples:
        >>> centroid_cosine_gap([1.0, 0.0], [0.0, 2.0]), centroid_cosine_gap([0.0, 3.0], [0.0, 1.0])
        (1.0, 0.0)
    """
    a, b = _vector("mu_a", mu_a), _vector("mu_b", mu_b)
    if a.shape != b.shape:
        raise AnalysisError(
            f"mu_a and mu_b: expected vectors of the same length, received {a.shape[0]} and "
            f"{b.shape[0]}; compare centroids of the same layer and head."
        )
    return cosine_gap(a, b)


# --------------------------------------------------------------------------- MMD


def median_bandwidth(x: Array, y: Array, max_points: int = 2000, seed: int = 0) -> float:
    """Median heuristic: ``σ = median_{i<j} ‖z_i − z_j‖`` over the pooled sample ``z = [x; y]``.

    The bandwidth of the RBF kernel ``k(u, v) = exp(−‖u − v‖² / (2σ²))`` used by
    `mmd2_unbiased` (Gretton et al. 2012, JMLR, Sec. 8). The pooled sample is subsampled to
    ``max_points`` rows (without replacement, seeded) before the ``O(N²)`` distances.

    Args:
        x: ``[n, d]`` samples.
        y: ``[m, d]`` samples.
        max_points: cap on the pooled points used (≥ 2).
        seed: seed of the subsample.

    Returns:
        ``σ``; ``0.0`` when at least half of the pairs coincide (mostly duplicate points), in
        which case the heuristic is unusable and a bandwidth must be chosen by hand.

    Examples:
        >>> median_bandwidth([[0.0], [1.0]], [[3.0]])  # distances 1, 2, 3
        2.0
    """
    xa, ya = _sample_pair(x, y)
    _at_least("max_points", max_points, 2)
    pooled = np.concatenate([xa, ya], axis=0)  # (n + m, d)
    if pooled.shape[0] < 2:
        raise AnalysisError(
            "x and y: expected at least 2 pooled samples for a pairwise distance, received 1."
        )
    pooled = _subsample(pooled, max_points, np.random.default_rng(seed))  # (N, d)
    return _median_offdiag_distance(_sq_distances(pooled))


@dataclass(frozen=True)
class MMDResult:
    """Result of `mmd2_unbiased`."""

    mmd2: float
    """Unbiased estimate of MMD² (can be slightly negative when the distributions agree)."""
    bandwidth: float
    """RBF bandwidth ``σ`` used."""
    p_value: float | None
    """Permutation p-value, ``None`` when no permutations were run."""
    n_x: int
    """Samples of ``x`` used (after subsampling)."""
    n_y: int
    """Samples of ``y`` used (after subsampling)."""


def _mmd2_from_labels(kernel: F64, row_sums: F64, total: float, member: F64, n: int) -> F64:
    """MMD² for each labelling in ``member`` ``[P, N]`` (1 = in x), kernel with zero diagonal.

    With ``a`` the indicator of x and ``b = 1 − a``: ``Σ_{i≠j∈x} k = aᵀKa``, ``Σ_{x,y} k =
    aᵀK1 − aᵀKa``, ``Σ_{i≠j∈y} k = 1ᵀK1 − 2 aᵀK1 + aᵀKa``.
    """
    m = kernel.shape[0] - n
    k_a = kernel @ member.T  # (N, P)
    s_xx = np.einsum("pn,np->p", member, k_a)  # (P,)
    s_x1 = member @ row_sums  # (P,)
    s_xy = s_x1 - s_xx  # (P,)
    s_yy = total - 2.0 * s_x1 + s_xx  # (P,)
    mmd2: F64 = s_xx / (n * (n - 1)) + s_yy / (m * (m - 1)) - 2.0 * s_xy / (n * m)  # (P,)
    return mmd2


def mmd2_unbiased(
    x: Array,
    y: Array,
    bandwidth: float | None = None,
    max_points: int = 2000,
    permutations: int = 0,
    seed: int = 0,
) -> MMDResult:
    """Unbiased squared maximum mean discrepancy with an RBF kernel, optional permutation test.

    ``MMD²_u = 1/(n(n−1)) Σ_{i≠j} k(x_i, x_j) + 1/(m(m−1)) Σ_{i≠j} k(y_i, y_j)
    − 2/(nm) Σ_{i,j} k(x_i, y_j)`` with ``k(u, v) = exp(−‖u − v‖² / (2σ²))``
    (Gretton et al. 2012, JMLR, eq. 3). Unbiased, hence it fluctuates around 0 (and can be
    negative) when ``x`` and ``y`` come from the same distribution.

    Each side is first subsampled to ``max_points`` rows (seeded, without replacement); the
    pooled ``(n + m)²`` kernel matrix is held in memory (``2000 + 2000`` points: 128 MB).
    The p-value relabels the pooled sample ``permutations`` times (seeded) and reports
    ``(1 + #{MMD²_perm ≥ MMD²_obs}) / (1 + permutations)``: the ``+1`` counts the observed
    labelling, which keeps the test valid at every level and the p-value above 0 (Phipson &
    Smyth, Stat. Appl. Genet. Mol. Biol. 9, 2010).

    Args:
        x: ``[n, d]`` samples, ``n ≥ 2``.
        y: ``[m, d]`` samples, ``m ≥ 2``.
        bandwidth: RBF ``σ > 0``; None = the median heuristic over the pooled subsampled points
            the statistic uses (see `median_bandwidth`).
        max_points: cap on the rows used from each side (≥ 2).
        permutations: number of random relabellings for the p-value (0 = no test).
        seed: seed of the subsampling and the permutations.

    Returns:
        `MMDResult` with the estimate, the bandwidth, the p-value and the sample sizes used.

    Examples:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x, y = rng.normal(size=(100, 3)), rng.normal(size=(100, 3)) + 2.0
        >>> res = mmd2_unbiased(x, y, permutations=50)
        >>> res.mmd2 > 0.1, res.p_value
        (True, 0.0196...)
    """
    xa, ya = _sample_pair(x, y, min_rows=2)
    _at_least("max_points", max_points, 2)
    _at_least("permutations", permutations, 0)
    rng = np.random.default_rng(seed)
    xa = _subsample(xa, max_points, rng)  # (n, d)
    ya = _subsample(ya, max_points, rng)  # (m, d)
    n, m = xa.shape[0], ya.shape[0]
    kernel = _sq_distances(np.concatenate([xa, ya], axis=0))  # (N, N) squared distances
    sigma = _median_offdiag_distance(kernel) if bandwidth is None else float(bandwidth)
    if not (np.isfinite(sigma) and sigma > 0.0):
        source = "median heuristic" if bandwidth is None else "argument"
        raise AnalysisError(
            f"bandwidth: expected a finite σ > 0, received {sigma} ({source}); the pooled "
            "sample is mostly duplicate points, pass bandwidth=... explicitly."
        )
    kernel *= -0.5 / sigma**2
    np.exp(kernel, out=kernel)  # (N, N) k(z_i, z_j)
    np.fill_diagonal(kernel, 0.0)  # U-statistic: i ≠ j only
    row_sums = kernel.sum(axis=1)  # (N,)
    total = float(row_sums.sum())
    observed_labels = np.zeros((1, n + m))  # (1, N)
    observed_labels[0, :n] = 1.0
    mmd2 = float(_mmd2_from_labels(kernel, row_sums, total, observed_labels, n)[0])
    p_value = None
    if permutations > 0:
        exceed = 0
        for start in range(0, permutations, _PERMUTATION_CHUNK):
            chunk = min(_PERMUTATION_CHUNK, permutations - start)
            perms = rng.permuted(np.tile(np.arange(n + m), (chunk, 1)), axis=1)  # (P, N)
            labels = (perms < n).astype(np.float64)  # (P, N) 1 where the pooled point goes to x
            stats = _mmd2_from_labels(kernel, row_sums, total, labels, n)  # (P,)
            exceed += int(np.count_nonzero(stats >= mmd2))
        p_value = (1 + exceed) / (1 + permutations)
    return MMDResult(mmd2=mmd2, bandwidth=sigma, p_value=p_value, n_x=n, n_y=m)


# --------------------------------------------------------------------------- sliced W2


def sliced_wasserstein2(
    x: Array,
    y: Array,
    projections: int = 128,
    seed: int = 0,
    quantiles: int | None = None,
) -> float:
    """Sliced Wasserstein-2 distance ``(E_θ W₂²(θᵀx, θᵀy))^{1/2}`` over random unit directions.

    Bonneel et al. 2015 (sliced Wasserstein), with the expectation over ``θ`` uniform on the
    unit sphere estimated by ``projections`` seeded directions (normalised Gaussians). In 1-D,
    ``W₂²(μ, ν) = ∫₀¹ (F_μ⁻¹(t) − F_ν⁻¹(t))² dt`` (Peyré & Cuturi 2019, Ch. 2, univariate
    case), with ``F⁻¹`` the empirical quantile function
    (``np.quantile(..., method="inverted_cdf")``):

    - ``quantiles=None`` (default): exact. Both quantile functions are step functions with
      steps at ``i/n`` and ``j/m``, so the integral is a finite sum over the at most
      ``n + m − 1`` pieces between the merged breakpoints; for ``n = m`` it is the familiar
      ``mean((sort(a) − sort(b))²)``.
    - ``quantiles=K``: midpoint rule on the grid ``t_k = (k + 0.5)/K``, ``O(K)`` per direction;
      exact when ``K`` is a multiple of ``lcm(n, m)``, otherwise an approximation.

    Args:
        x: ``[n, d]`` samples.
        y: ``[m, d]`` samples.
        projections: number of random directions (≥ 1); the Monte-Carlo error of the mean
            over directions shrinks as ``1/√projections``.
        seed: seed of the directions.
        quantiles: None (exact) or the size ``K ≥ 1`` of the midpoint grid.

    Returns:
        The sliced W₂ distance (same units as the samples).

    Examples:
        >>> # in 1-D the directions are ±1, so this is W₂ itself: a shift by 3
        >>> sliced_wasserstein2([[0.0], [1.0], [2.0]], [[3.0], [4.0], [5.0]], projections=4)
        3.0
    """
    xa, ya = _sample_pair(x, y)
    _at_least("projections", projections, 1)
    if quantiles is not None:
        _at_least("quantiles", quantiles, 1)
    n, m, dim = xa.shape[0], ya.shape[0], xa.shape[1]
    theta = np.random.default_rng(seed).standard_normal((projections, dim))  # (P, d)
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)  # (P, d) unit rows
    proj_x = np.sort(xa @ theta.T, axis=0)  # (n, P)
    proj_y = np.sort(ya @ theta.T, axis=0)  # (m, P)
    if quantiles is None:
        # Breakpoints in integer units of 1/(nm): i·m (steps of x) and j·n (steps of y).
        breaks = np.union1d(np.arange(n + 1) * m, np.arange(m + 1) * n)  # (K + 1,)
        starts = breaks[:-1]  # (K,)
        weights = np.diff(breaks) / (n * m)  # (K,) piece lengths, sum to 1
        idx_x, idx_y = starts // m, starts // n  # (K,) inverted-cdf indices on each piece
    else:
        levels = (np.arange(quantiles) + 0.5) / quantiles  # (K,)
        weights = np.full(quantiles, 1.0 / quantiles)  # (K,)
        idx_x = np.ceil(levels * n).astype(np.int64) - 1  # (K,) = inverted_cdf index
        idx_y = np.ceil(levels * m).astype(np.int64) - 1  # (K,)
    diff = proj_x[idx_x] - proj_y[idx_y]  # (K, P)
    w2_sq = weights @ np.square(diff)  # (P,) W₂² per direction
    return float(np.sqrt(w2_sq.mean()))


# --------------------------------------------------------------------------- Fréchet


def _psd_sqrt(cov: F64) -> F64:
    """Symmetric PSD square root by ``eigh``; negative eigenvalues (rounding) clipped to 0."""
    vals, vecs = np.linalg.eigh(cov)  # (d,), (d, d)
    root: F64 = (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T  # (d, d)
    return root


def _covariance(name: str, value: Array, dim: int) -> F64:
    arr = _to_f64(name, value)
    if arr.shape != (dim, dim):
        raise AnalysisError(
            f"{name}: expected a [d, d] = [{dim}, {dim}] covariance matching the mean, received "
            f"shape {list(arr.shape)}; pass the covariance of the same samples as the mean."
        )
    _check_finite(name, arr)
    return 0.5 * (arr + arr.T)  # (d, d) symmetric part


def frechet_distance(mu_a: Array, cov_a: Array, mu_b: Array, cov_b: Array) -> float:
    """Fréchet (2-Wasserstein²) distance between Gaussians ``N(μ_a, Σ_a)`` and ``N(μ_b, Σ_b)``.

    ``d² = ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2})``
    (Dowson & Landau 1982; the FID of Heusel et al. 2017). This is the *squared* distance, as in
    FID. Computed with symmetric eigendecompositions: ``Σ_a^{1/2}`` by ``eigh``, and
    ``Tr((Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2}) = Σ_i √λ_i`` from ``eigvalsh`` of the symmetric
    middle matrix, with negative eigenvalues (rounding) clipped to 0; no complex ``sqrtm``.
    Only the symmetric parts of the covariances are used; the result is clipped at 0.

    Args:
        mu_a: ``[d]`` mean of a.
        cov_a: ``[d, d]`` covariance of a (positive semi-definite).
        mu_b: ``[d]`` mean of b.
        cov_b: ``[d, d]`` covariance of b.

    Returns:
        ``d² ≥ 0``.

    Examples:
        >>> import numpy as np
        >>> # diagonal covariances: ‖Δμ‖² + Σ_i (σ_a,i − σ_b,i)² = 1 + (1 − 2)² = 2
        >>> round(frechet_distance([0.0, 0.0], np.eye(2), [1.0, 0.0], np.diag([1.0, 4.0])), 12)
        2.0
    """
    a, b = _vector("mu_a", mu_a), _vector("mu_b", mu_b)
    if a.shape != b.shape:
        raise AnalysisError(
            f"mu_a and mu_b: expected vectors of the same length, received {a.shape[0]} and "
            f"{b.shape[0]}; compare groups of the same layer and head."
        )
    sig_a = _covariance("cov_a", cov_a, a.shape[0])  # (d, d)
    sig_b = _covariance("cov_b", cov_b, a.shape[0])  # (d, d)
    root_a = _psd_sqrt(sig_a)  # (d, d)
    middle = root_a @ sig_b @ root_a  # (d, d)
    middle = 0.5 * (middle + middle.T)  # (d, d) symmetric against rounding
    trace_root = float(np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0.0, None)).sum())
    diff = a - b  # (d,)
    value = float(diff @ diff) + float(np.trace(sig_a) + np.trace(sig_b)) - 2.0 * trace_root
    return max(value, 0.0)


def _shrink(cov: F64, shrinkage: float) -> F64:
    if not 0.0 <= shrinkage <= 1.0:
        raise AnalysisError(
            f"shrinkage: expected a value in [0, 1], received {shrinkage}; 0 = sample "
            "covariance, 1 = tr(Σ)/d · I."
        )
    if shrinkage == 0.0:
        return cov
    dim = cov.shape[0]
    target = float(np.trace(cov)) / dim
    out = (1.0 - shrinkage) * cov  # (d, d)
    out[np.diag_indices(dim)] += shrinkage * target
    return out


def covariance_from_sums(
    count: float | Array,
    total: Array,
    total_outer: Array,
    shrinkage: float = 0.0,
) -> tuple[F64, F64]:
    """Mean and unbiased covariance from streaming float64 sums ``(n, Σx, Σxxᵀ)``.

    ``μ = Σx / n``, ``Σ = (Σxxᵀ − n μμᵀ) / (n − 1)``, which equals ``np.cov`` of the samples
    up to rounding. Optional shrinkage towards the scaled identity,
    ``(1 − s) Σ + s · tr(Σ)/d · I`` (the target of Ledoit & Wolf, J. Multivariate Anal. 88,
    2004; ``s`` is given, not estimated), keeps ``Σ`` well conditioned when ``n`` is not much
    larger than ``d``. The sums cancel catastrophically when ``‖μ‖`` is large against the spread
    (relative error ≈ ``ε · ‖μ‖² / σ²``), which float64 sums keep harmless for keys.

    Args:
        count: ``n ≥ 2`` samples summed (a number or a scalar tensor).
        total: ``[d]`` ``Σ x``.
        total_outer: ``[d, d]`` ``Σ x xᵀ``.
        shrinkage: ``s ∈ [0, 1]``.

    Returns:
        ``(mean [d], cov [d, d])`` as float64 arrays.

    Examples:
        >>> import numpy as np
        >>> x = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]])
        >>> mean, cov = covariance_from_sums(3, x.sum(0), x.T @ x)
        >>> mean.tolist(), bool(np.allclose(cov, np.cov(x, rowvar=False)))
        ([2.0, 2.0], True)
    """
    count_arr = _to_f64("count", count)
    n = float(count_arr) if count_arr.ndim == 0 else float("nan")
    if not (np.isfinite(n) and n >= 2):
        received = n if count_arr.ndim == 0 else f"shape {list(count_arr.shape)}"
        raise AnalysisError(
            f"count: expected a scalar n ≥ 2 (samples summed) for an unbiased covariance, "
            f"received {received}; accumulate more samples for this group."
        )
    mean = _vector("total", total) / n  # (d,)
    outer = _to_f64("total_outer", total_outer)
    dim = mean.shape[0]
    if outer.shape != (dim, dim):
        raise AnalysisError(
            f"total_outer: expected shape [d, d] = [{dim}, {dim}] to match total, received "
            f"{list(outer.shape)}; pass Σ x xᵀ of the same samples."
        )
    _check_finite("total_outer", outer)
    cov = (outer - n * np.outer(mean, mean)) / (n - 1.0)  # (d, d)
    cov = 0.5 * (cov + cov.T)  # (d, d) symmetric against rounding
    return mean, _shrink(cov, shrinkage)


def frechet_from_samples(x: Array, y: Array, shrinkage: float = 0.0) -> float:
    """`frechet_distance` between Gaussians fitted to samples ``x`` and ``y``.

    Means and unbiased covariances are computed from centred samples (no streaming
    cancellation), then shrunk as in `covariance_from_sums`. The sample Fréchet distance is
    biased upwards for finite ``n`` (Chong & Forsyth, CVPR 2020): compare values at equal
    sample sizes.

    Args:
        x: ``[n, d]`` samples, ``n ≥ 2``.
        y: ``[m, d]`` samples, ``m ≥ 2``.
        shrinkage: ``s ∈ [0, 1]`` applied to both covariances.

    Returns:
        ``d² ≥ 0``.

    Examples:
        >>> import numpy as np
        >>> x = np.array([[0.0], [2.0]])  # mean 1, variance 2
        >>> round(frechet_from_samples(x, x + 3.0), 12)
        9.0
    """
    xa, ya = _sample_pair(x, y, min_rows=2)
    moments = []
    for arr in (xa, ya):
        mean = arr.mean(axis=0)  # (d,)
        centred = arr - mean  # (n, d)
        cov = centred.T @ centred / (arr.shape[0] - 1)  # (d, d)
        moments.append((mean, _shrink(cov, shrinkage)))
    (mu_a, cov_a), (mu_b, cov_b) = moments
    return frechet_distance(mu_a, cov_a, mu_b, cov_b)


# --------------------------------------------------------------------------- AUC


def rank_auc(scores_x: Array, scores_y: Array) -> float:
    """AUC that scores of ``y`` exceed scores of ``x``, by the Mann–Whitney rank formula.

    ``AUC = (R_y − m(m+1)/2) / (n m) = P(s_y > s_x) + ½ P(s_y = s_x)``, with ``R_y`` the sum of
    the ranks of ``y``'s ``m`` scores among all ``n + m`` (ties get their average rank;
    Hanley & McNeil 1982).

    Args:
        scores_x: ``[n]`` scores of the first sample.
        scores_y: ``[m]`` scores of the second sample.

    Returns:
        AUC in ``[0, 1]``; 0.5 = no separation, 1 = every ``y`` above every ``x``.

    Examples:
        >>> rank_auc([0.1, 0.4], [0.4, 0.9])  # pairs: 4; y wins 3, one tie counts ½
        0.875
    """
    sx, sy = _vector("scores_x", scores_x), _vector("scores_y", scores_y)
    n, m = sx.shape[0], sy.shape[0]
    from scipy.stats import rankdata  # scipy loads on first use: `import attnprobe` stays light

    ranks = rankdata(np.concatenate([sx, sy]))  # (n + m,) average ranks for ties
    rank_sum_y = float(ranks[n:].sum())
    return float((rank_sum_y - m * (m + 1) / 2.0) / (n * m))


def _fisher_scores(train_x: F64, train_y: F64, test: F64, ridge: float) -> F64:
    """Standardised Fisher discriminant scores of ``test`` ``[t, d]`` (positive = y side)."""
    mean_x, mean_y = train_x.mean(axis=0), train_y.mean(axis=0)  # (d,), (d,)
    cx, cy = train_x - mean_x, train_y - mean_y  # (n', d), (m', d)
    dof = max(train_x.shape[0] + train_y.shape[0] - 2, 1)
    within = (cx.T @ cx + cy.T @ cy) / dof  # (d, d) pooled within-class covariance S_w
    dim = within.shape[0]
    scale = float(np.trace(within)) / dim
    lam = ridge * (scale if scale > 0.0 else 1.0)
    vals, vecs = np.linalg.eigh(within)  # (d,), (d, d)
    inv_vals = 1.0 / (np.clip(vals, 0.0, None) + lam)  # (d,)
    delta = mean_y - mean_x  # (d,)
    w = vecs @ (inv_vals * (vecs.T @ delta))  # (d,) (S_w + λI)⁻¹ (μ_y − μ_x)
    spread = float(w @ delta)  # wᵀ(S_w + λI)w = Mahalanobis² of the mean shift
    centred = test - 0.5 * (mean_x + mean_y)  # (t, d)
    if spread <= 0.0:
        return np.zeros(test.shape[0])  # (t,) no direction: all tied
    scores: F64 = (centred @ w) / np.sqrt(spread)  # (t,)
    return scores


def two_sample_auc(x: Array, y: Array, folds: int = 5, seed: int = 0, ridge: float = 1e-3) -> float:
    """Cross-validated AUC of a linear classifier separating ``x`` from ``y``.

    A classifier two-sample test (Lopez-Paz & Oquab, ICLR 2017) with Fisher's linear
    discriminant, ridge-regularised (ESL Sec. 4.3.1): on the training folds
    ``w = (S_w + λ I)⁻¹ (μ_y − μ_x)`` with ``S_w`` the pooled within-class covariance and
    ``λ = ridge · tr(S_w)/d``. Folds are stratified and seeded: ``x`` and ``y`` are each
    shuffled and split into ``folds`` near-equal parts, fold ``f`` holds out part ``f`` of both.
    Held-out points get the standardised score ``wᵀ(z − (μ_x + μ_y)/2) / √(wᵀ(S_w + λI)w)``
    (centred at the decision boundary and in within-class standard deviations, so that scores
    of different folds are comparable), and the AUC is `rank_auc` of all held-out scores
    pooled over folds (the "merged" AUC of Forman & Scholz, SIGKDD Explor. 12, 2010).

    Orientation and reading: 0.5 = the classifier cannot tell the samples apart (under the
    null, cross-validation scatters around and slightly *below* 0.5); 1.0 = perfectly
    separable by a hyperplane, with ``y`` on the positive side. Values below 0.5 are *not*
    folded to ``1 − AUC``: held-out points scored systematically backwards is no evidence of
    separability, and folding would bias the null upwards. Only linear (mean and covariance-
    shift) differences are detected; use `mmd2_unbiased` for the rest.

    Args:
        x: ``[n, d]`` samples, ``n ≥ folds``.
        y: ``[m, d]`` samples, ``m ≥ folds``.
        folds: number of cross-validation folds (≥ 2).
        seed: seed of the fold assignment.
        ridge: ``> 0``, relative ridge on ``S_w`` (in units of its mean eigenvalue).

    Returns:
        The cross-validated AUC in ``[0, 1]``.

    Examples:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(200, 4))
        >>> round(two_sample_auc(x, x + [3.0, 0, 0, 0]), 2)
        0.98
    """
    _at_least("folds", folds, 2)
    xa, ya = _sample_pair(x, y, min_rows=folds)
    if not (np.isfinite(ridge) and ridge > 0.0):
        raise AnalysisError(
            f"ridge: expected a finite value > 0, received {ridge}; the default 1e-3 keeps "
            "the within-class covariance invertible."
        )
    rng = np.random.default_rng(seed)
    parts_x = np.array_split(rng.permutation(xa.shape[0]), folds)  # folds × (≈ n/folds,)
    parts_y = np.array_split(rng.permutation(ya.shape[0]), folds)  # folds × (≈ m/folds,)
    scores_x = np.empty(xa.shape[0])  # (n,)
    scores_y = np.empty(ya.shape[0])  # (m,)
    for held_x, held_y in zip(parts_x, parts_y, strict=True):
        keep_x = np.ones(xa.shape[0], dtype=bool)  # (n,)
        keep_x[held_x] = False
        keep_y = np.ones(ya.shape[0], dtype=bool)  # (m,)
        keep_y[held_y] = False
        test = np.concatenate([xa[held_x], ya[held_y]], axis=0)  # (t, d)
        scores = _fisher_scores(xa[keep_x], ya[keep_y], test, ridge)  # (t,)
        scores_x[held_x] = scores[: held_x.shape[0]]
        scores_y[held_y] = scores[held_x.shape[0] :]
    return rank_auc(scores_x, scores_y)
