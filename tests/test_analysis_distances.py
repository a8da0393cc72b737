"""attnprobe.analysis._distances against independent computations and known closed forms."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import cosine, pdist
from scipy.stats import mannwhitneyu

from attnprobe.analysis import _distances as D


def _gauss(seed: int, n: int, d: int, shift: float | np.ndarray = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


# --------------------------------------------------------------------------- centroid gap


def test_centroid_gap_matches_scipy_cosine() -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        a, b = rng.normal(size=7), rng.normal(size=7)
        assert D.centroid_cosine_gap(a, b) == pytest.approx(cosine(a, b), abs=1e-12)


def test_centroid_gap_accepts_tensors_and_zero_vector_is_nan() -> None:
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([2.0, -1.0])
    assert D.centroid_cosine_gap(a, b) == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(D.centroid_cosine_gap(np.zeros(3), np.ones(3)))


# --------------------------------------------------------------------------- bandwidth, MMD


def _rbf(u: np.ndarray, v: np.ndarray, sigma: float) -> float:
    return math.exp(-float(np.sum((u - v) ** 2)) / (2.0 * sigma**2))


def _mmd2_loop(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    n, m = len(x), len(y)
    s_xx = sum(_rbf(x[i], x[j], sigma) for i in range(n) for j in range(n) if i != j)
    s_yy = sum(_rbf(y[i], y[j], sigma) for i in range(m) for j in range(m) if i != j)
    s_xy = sum(_rbf(x[i], y[j], sigma) for i in range(n) for j in range(m))
    return s_xx / (n * (n - 1)) + s_yy / (m * (m - 1)) - 2.0 * s_xy / (n * m)


def test_median_bandwidth_matches_pdist() -> None:
    x, y = _gauss(0, 50, 4), _gauss(1, 70, 4, shift=0.5)
    expected = np.median(pdist(np.concatenate([x, y])))
    assert D.median_bandwidth(x, y) == pytest.approx(expected, rel=1e-12)


def test_median_bandwidth_subsamples_pooled_points() -> None:
    x, y = _gauss(0, 300, 3), _gauss(1, 300, 3, shift=1.0)
    full = np.median(pdist(np.concatenate([x, y])))
    sub = D.median_bandwidth(x, y, max_points=200, seed=3)
    assert sub == D.median_bandwidth(x, y, max_points=200, seed=3)
    assert sub != D.median_bandwidth(x, y, max_points=200, seed=4)
    assert sub == pytest.approx(full, rel=0.1)


def test_mmd2_matches_double_loop() -> None:
    x, y = _gauss(0, 30, 3), _gauss(1, 40, 3, shift=0.3)
    sigma = np.median(pdist(np.concatenate([x, y])))
    res = D.mmd2_unbiased(x, y)
    assert res.bandwidth == pytest.approx(sigma, rel=1e-12)
    assert res.mmd2 == pytest.approx(_mmd2_loop(x, y, sigma), rel=1e-10, abs=1e-13)
    assert (res.n_x, res.n_y, res.p_value) == (30, 40, None)
    fixed = D.mmd2_unbiased(x, y, bandwidth=0.7)
    assert fixed.mmd2 == pytest.approx(_mmd2_loop(x, y, 0.7), rel=1e-10, abs=1e-13)


def test_mmd2_same_distribution_small_and_not_significant() -> None:
    x, y = _gauss(0, 300, 5), _gauss(1, 300, 5)
    res = D.mmd2_unbiased(x, y, permutations=200)
    assert abs(res.mmd2) < 0.01
    assert res.p_value is not None and res.p_value > 0.05


def test_mmd2_shifted_distribution_detected() -> None:
    shift = np.zeros(5)
    shift[0] = 1.0
    x, y = _gauss(0, 300, 5), _gauss(1, 300, 5, shift=shift)
    res = D.mmd2_unbiased(x, y, permutations=200)
    assert res.mmd2 > 0.02  # population value 0.054 at the median bandwidth σ ≈ 3
    assert res.p_value == pytest.approx(1 / 201)  # no relabelling reaches the observed value


def test_mmd2_gaussian_closed_form() -> None:
    # x ~ N(0, I), y ~ N(μ, I), RBF σ: E k(x, x') = (σ²/(σ² + 2))^{d/2} =: c (x − x' ~ N(0, 2I)),
    # E k(x, y) = c · exp(−‖μ‖² / (2(σ² + 2))), so MMD² = 2c (1 − exp(−‖μ‖² / (2(σ² + 2)))).
    d, sigma, mu = 5, 2.0, np.array([1.0, 0.0, 0.0, 0.0, 0.0])
    c = (sigma**2 / (sigma**2 + 2.0)) ** (d / 2)
    expected = 2.0 * c * (1.0 - math.exp(-float(mu @ mu) / (2.0 * (sigma**2 + 2.0))))
    res = D.mmd2_unbiased(_gauss(0, 1000, d), _gauss(1, 1000, d, shift=mu), bandwidth=sigma)
    assert res.mmd2 == pytest.approx(expected, abs=0.015)  # sd of the estimate ≈ 0.005


def test_mmd2_seeded_reproducibility_and_subsampling() -> None:
    x, y = _gauss(0, 200, 3), _gauss(1, 150, 3, shift=0.2)
    a = D.mmd2_unbiased(x, y, max_points=100, permutations=20, seed=5)
    assert a == D.mmd2_unbiased(x, y, max_points=100, permutations=20, seed=5)
    b = D.mmd2_unbiased(x, y, max_points=100, permutations=20, seed=6)
    assert (a.n_x, a.n_y) == (100, 100)
    assert a.mmd2 != b.mmd2  # different subsamples
    # without subsampling the statistic does not depend on the seed
    assert D.mmd2_unbiased(x, y, seed=1).mmd2 == D.mmd2_unbiased(x, y, seed=2).mmd2


def test_mmd2_accepts_tensors() -> None:
    x, y = _gauss(0, 20, 2), _gauss(1, 25, 2)
    res = D.mmd2_unbiased(torch.from_numpy(x).float(), torch.from_numpy(y).float())
    ref = D.mmd2_unbiased(x.astype(np.float32), y.astype(np.float32))
    assert res == ref


# --------------------------------------------------------------------------- sliced W2


def test_sliced_w2_in_one_dimension_is_sorted_formula() -> None:
    a, b = _gauss(0, 500, 1), _gauss(1, 500, 1, shift=0.7) * 2.0
    expected = math.sqrt(np.mean((np.sort(a[:, 0]) - np.sort(b[:, 0])) ** 2))
    assert D.sliced_wasserstein2(a, b, projections=16) == pytest.approx(expected, rel=1e-12)


def test_sliced_w2_unequal_sizes_exact_by_replication() -> None:
    # W₂ between empirical measures of sizes 6 and 4: replicate to the common size lcm = 12.
    a, b = _gauss(0, 6, 1), _gauss(1, 4, 1, shift=0.5)
    rep_a = np.repeat(np.sort(a[:, 0]), 2)
    rep_b = np.repeat(np.sort(b[:, 0]), 3)
    expected = math.sqrt(np.mean((rep_a - rep_b) ** 2))
    assert D.sliced_wasserstein2(a, b, projections=8) == pytest.approx(expected, rel=1e-12)
    # a midpoint grid on a multiple of lcm(n, m) is exact too; a coarse grid only approximates
    x, y = _gauss(2, 30, 4), _gauss(3, 45, 4, shift=0.3)
    exact = D.sliced_wasserstein2(x, y, projections=32)
    assert D.sliced_wasserstein2(x, y, projections=32, quantiles=90) == pytest.approx(
        exact, rel=1e-12
    )
    assert D.sliced_wasserstein2(x, y, projections=32, quantiles=45) == pytest.approx(
        exact, rel=0.05
    )


def test_sliced_w2_gaussian_mean_shift() -> None:
    # N(0, I) vs N(μ, I): W₂²(θᵀx, θᵀy) = (θᵀμ)², and E_θ (θᵀμ)² = ‖μ‖²/d on the sphere.
    d, mu = 4, np.array([1.0, -1.0, 0.5, 0.0])
    x, y = _gauss(0, 4000, d), _gauss(1, 4000, d, shift=mu)
    sw = D.sliced_wasserstein2(x, y, projections=2000)
    assert sw**2 == pytest.approx(float(mu @ mu) / d, rel=0.1)


def test_sliced_w2_identical_distributions_near_zero() -> None:
    x, y = _gauss(0, 4000, 4), _gauss(1, 4000, 4)
    assert D.sliced_wasserstein2(x, y) < 0.05
    assert D.sliced_wasserstein2(x, x) == 0.0


def test_sliced_w2_seeded() -> None:
    x, y = _gauss(0, 50, 3), _gauss(1, 60, 3, shift=0.4)
    assert D.sliced_wasserstein2(x, y, seed=3) == D.sliced_wasserstein2(x, y, seed=3)
    assert D.sliced_wasserstein2(x, y, seed=3) != D.sliced_wasserstein2(x, y, seed=4)


# --------------------------------------------------------------------------- Fréchet


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_diagonal_closed_form() -> None:
    rng = np.random.default_rng(0)
    mu_a, mu_b = rng.normal(size=6), rng.normal(size=6)
    sd_a, sd_b = rng.uniform(0.2, 2.0, size=6), rng.uniform(0.2, 2.0, size=6)
    expected = float(np.sum((mu_a - mu_b) ** 2) + np.sum((sd_a - sd_b) ** 2))
    got = D.frechet_distance(mu_a, np.diag(sd_a**2), mu_b, np.diag(sd_b**2))
    assert got == pytest.approx(expected, abs=1e-9)


def test_frechet_full_covariance_matches_sqrtm() -> None:
    rng = np.random.default_rng(1)
    for _ in range(3):
        mu_a, mu_b = rng.normal(size=5), rng.normal(size=5)
        cov_a, cov_b = _random_spd(rng, 5), _random_spd(rng, 5)
        root = np.real(scipy.linalg.sqrtm(cov_a @ cov_b))  # the FID reference formula
        expected = float(
            np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root)
        )
        got = D.frechet_distance(mu_a, cov_a, mu_b, cov_b)
        assert got == pytest.approx(expected, rel=1e-6)


def test_frechet_identical_is_zero_and_singular_covariance_ok() -> None:
    rng = np.random.default_rng(2)
    mu, cov = rng.normal(size=4), _random_spd(rng, 4)
    assert D.frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-10)
    v = rng.normal(size=(4, 1))
    rank_one = v @ v.T  # PSD, singular
    assert D.frechet_distance(mu, rank_one, mu, rank_one) == pytest.approx(0.0, abs=1e-10)


def test_frechet_from_samples_close_to_closed_form() -> None:
    rng = np.random.default_rng(3)
    d = 3
    mu = np.array([1.0, 0.0, -0.5])
    sd_a, sd_b = np.array([1.0, 2.0, 0.5]), np.array([1.5, 1.0, 0.5])
    x = rng.normal(size=(20000, d)) * sd_a
    y = rng.normal(size=(20000, d)) * sd_b + mu
    expected = float(mu @ mu + np.sum((sd_a - sd_b) ** 2))
    assert D.frechet_from_samples(x, y) == pytest.approx(expected, rel=0.05)


def test_covariance_from_sums_equals_batch_covariance() -> None:
    x = np.random.default_rng(4).normal(size=(500, 6)) + np.arange(6)
    count, total, outer = len(x), x.sum(0), x.T @ x
    mean, cov = D.covariance_from_sums(count, total, outer)
    np.testing.assert_allclose(mean, x.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False), rtol=0, atol=1e-12)
    # streaming: sums of batches give the same moments
    batches = np.array_split(x, 7)
    mean_s, cov_s = D.covariance_from_sums(
        torch.tensor(float(count)),
        torch.from_numpy(sum(b.sum(0) for b in batches)),
        torch.from_numpy(sum(b.T @ b for b in batches)),
    )
    np.testing.assert_allclose(mean_s, x.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov_s, np.cov(x, rowvar=False), rtol=0, atol=1e-12)


def test_covariance_shrinkage() -> None:
    x = np.random.default_rng(5).normal(size=(40, 4))
    _, cov = D.covariance_from_sums(len(x), x.sum(0), x.T @ x)
    _, shrunk = D.covariance_from_sums(len(x), x.sum(0), x.T @ x, shrinkage=0.25)
    target = np.trace(cov) / 4 * np.eye(4)
    np.testing.assert_allclose(shrunk, 0.75 * cov + 0.25 * target, rtol=0, atol=1e-14)
    assert np.trace(shrunk) == pytest.approx(np.trace(cov), rel=1e-14)
    y = x + 1.0
    got = D.frechet_from_samples(x, y, shrinkage=1.0)  # both covariances scaled identities
    assert got == pytest.approx(4.0, rel=1e-9)  # ‖Δμ‖² = 4, equal covariances


# --------------------------------------------------------------------------- AUC


def test_rank_auc_matches_mann_whitney_with_ties() -> None:
    rng = np.random.default_rng(6)
    sx = rng.integers(0, 10, size=37).astype(float)  # many ties
    sy = rng.integers(2, 12, size=23).astype(float)
    expected = mannwhitneyu(sy, sx).statistic / (len(sx) * len(sy))
    assert D.rank_auc(sx, sy) == pytest.approx(expected, abs=1e-12)
    assert D.rank_auc([0.0, 1.0], [2.0, 3.0]) == 1.0
    assert D.rank_auc([2.0, 3.0], [0.0, 1.0]) == 0.0
    assert D.rank_auc([1.0, 1.0], [1.0]) == 0.5


def test_auc_identical_distributions_near_half() -> None:
    x, y = _gauss(0, 400, 5), _gauss(1, 400, 5)
    assert abs(D.two_sample_auc(x, y) - 0.5) < 0.08


def test_auc_separated_distributions() -> None:
    shift = np.zeros(5)
    shift[2] = 3.0
    x, y = _gauss(0, 400, 5), _gauss(1, 400, 5, shift=shift)
    assert D.two_sample_auc(x, y) > 0.95
    assert D.two_sample_auc(y, x) > 0.95  # the classifier is fitted per orientation


def test_auc_seeded() -> None:
    x, y = _gauss(0, 100, 3), _gauss(1, 120, 3, shift=0.3)
    assert D.two_sample_auc(x, y, seed=2) == D.two_sample_auc(x, y, seed=2)
    assert D.two_sample_auc(x, y, seed=2) != D.two_sample_auc(x, y, seed=3)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: D.mmd2_unbiased(np.zeros(5), np.zeros((5, 1))), r"x: expected a 2-D array"),
        (lambda: D.sliced_wasserstein2(np.zeros((5, 2)), np.zeros((5, 3))), r"same feature"),
        (lambda: D.two_sample_auc(np.full((9, 2), np.nan), np.zeros((9, 2))), r"x: .*finite"),
        (lambda: D.mmd2_unbiased(np.zeros((1, 2)), np.ones((5, 2))), r"at least 2 samples"),
        (lambda: D.two_sample_auc(np.zeros((3, 2)), np.ones((9, 2))), r"at least 5 samples"),
        (lambda: D.median_bandwidth(np.zeros((0, 2)), np.ones((1, 2))), r"at least 1 samples"),
        (lambda: D.centroid_cosine_gap(np.zeros(3), np.zeros(4)), r"same length"),
        (lambda: D.centroid_cosine_gap(np.zeros((3, 1)), np.zeros(3)), r"mu_a: .*1-D vector"),
        (
            lambda: D.frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2)),
            r"cov_a: expected a \[d, d\]",
        ),
        (
            lambda: D.covariance_from_sums(1, np.zeros(2), np.zeros((2, 2))),
            r"count: expected a scalar n ≥ 2",
        ),
        (
            lambda: D.covariance_from_sums(np.array([5.0]), np.zeros(2), np.zeros((2, 2))),
            r"count: expected a scalar",
        ),
        (
            lambda: D.covariance_from_sums(5, np.zeros(2), np.zeros((2, 3))),
            r"total_outer: expected shape \[d, d\]",
        ),
        (
            lambda: D.covariance_from_sums(5, np.zeros(2), np.zeros((2, 2)), shrinkage=1.5),
            r"shrinkage: expected a value in \[0, 1\]",
        ),
        (
            lambda: D.mmd2_unbiased(np.zeros((4, 2)), np.zeros((4, 2))),
            r"bandwidth: expected a finite σ > 0",
        ),
        (lambda: D.two_sample_auc(np.zeros((9, 2)), np.ones((9, 2)), ridge=0.0), r"ridge"),
        (lambda: D.sliced_wasserstein2(np.zeros((3, 2)), np.ones((3, 2)), 0), r"projections"),
    ],
)
def test_bad_input_raises_value_error(call: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
