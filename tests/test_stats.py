"""Streaming accumulators: exact merge, split invariance, reservoir uniformity."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from attnprobe.stats import Reservoir, SumAccumulator


def test_sum_accumulator_merge_and_reset() -> None:
    a, b = SumAccumulator(), SumAccumulator()
    x = torch.randn(5, 3, dtype=torch.float64)
    for row in x[:2]:
        a.update({"s": row})
    for row in x[2:]:
        b.update({"s": row})
    a.merge(b)
    torch.testing.assert_close(a.compute()["s"], x.sum(0), rtol=1e-15, atol=1e-15)
    a.reset()
    assert a.compute() == {}


def test_sum_accumulator_shape_change_is_an_error() -> None:
    acc = SumAccumulator()
    acc.update({"s": torch.zeros(2)})
    with pytest.raises(Exception, match=r"expected shape \[2\], received \[3\]"):
        acc.update({"s": torch.zeros(3)})


def test_sync_without_distributed_is_a_noop() -> None:
    acc = SumAccumulator()
    acc.update({"s": torch.ones(2)})
    acc.sync()
    assert acc.compute()["s"].tolist() == [1.0, 1.0]


def test_reservoir_is_split_invariant() -> None:
    data = torch.arange(1000.0).unsqueeze(1)
    one, many = Reservoir(50, seed=3), Reservoir(50, seed=3)
    one.update(data)
    for chunk in torch.split(data, [7, 300, 1, 692]):
        many.update(chunk)
    assert torch.equal(one.sample(), many.sample())
    assert one.seen == many.seen == 1000


def test_reservoir_keeps_everything_below_capacity() -> None:
    r = Reservoir(100, seed=0)
    r.update(torch.arange(10.0).unsqueeze(1))
    assert sorted(r.sample().squeeze(1).tolist()) == list(range(10))


def test_reservoir_is_uniform() -> None:
    # inclusion counts of each of 20 items over 2000 seeds, capacity 5: each p = 1/4
    counts = torch.zeros(20)
    for seed in range(2000):
        r = Reservoir(5, seed=seed)
        r.update(torch.arange(20.0).unsqueeze(1))
        counts[r.sample().squeeze(1).long()] += 1
    chi2 = stats.chisquare(counts.numpy())
    assert chi2.pvalue > 1e-3


def test_reservoir_merge_keeps_capacity() -> None:
    a, b = Reservoir(10, seed=0), Reservoir(10, seed=1)
    a.update(torch.zeros(30, 2))
    b.update(torch.ones(30, 2))
    a.merge(b)
    assert a.sample().shape == (10, 2)
    assert a.seen == 60


def test_empty_reservoir_error() -> None:
    with pytest.raises(Exception, match="the reservoir is empty"):
        Reservoir(3).sample()


def test_merged_reservoir_results_stay_within_capacity() -> None:
    import attnprobe as ap
    from attnprobe.models import FusionAttention

    layer = FusionAttention(8)
    results = []
    for _ in range(2):
        with ap.probe(layer, modalities={"cls": 1, "x": 6}, reservoir_size=4) as p:
            layer(torch.randn(3, 6, 8))
        results.append(p.result())
    merged = results[0].merge(results[1]).layers[0]
    assert merged.key_sample is not None and merged.key_sample_priority is not None
    assert [s.shape[0] for s in merged.key_sample] == [4, 4]  # 3 + 3 CLS keys, capped at 4
    assert torch.all(merged.key_sample_priority[1].diff() >= 0)


def test_sync_twice_does_not_double_count(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Two identical ranks, simulated: each sync adds the other rank's *new* data only."""
    import torch.distributed as dist

    calls = []

    def all_reduce(t, op=None, group=None):  # type: ignore[no-untyped-def]
        calls.append(1)
        t.mul_(2)  # the other rank holds the same local part

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    acc = SumAccumulator()
    acc.update({"s": torch.ones(2)})
    acc.sync()
    assert acc.compute()["s"].tolist() == [2.0, 2.0]
    acc.sync()  # nothing new: the collective still runs (every rank must join), adds nothing
    assert acc.compute()["s"].tolist() == [2.0, 2.0] and len(calls) == 2
    acc.update({"s": torch.ones(2)})
    assert acc.compute()["s"].tolist() == [3.0, 3.0]
    acc.sync()
    assert acc.compute()["s"].tolist() == [4.0, 4.0]


def test_ensure_adds_zero_entries_for_a_rank_that_saw_nothing() -> None:
    acc = SumAccumulator()
    acc.ensure({"mass": (2, 3)})
    assert acc.entries() == {"mass": (2, 3)}
    assert acc.compute()["mass"].abs().sum() == 0
    acc.update({"mass": torch.ones(2, 3)})
    assert acc.compute()["mass"].sum() == 6


def test_key_norm_statistic_matches_a_direct_computation_and_merges_exactly() -> None:
    """A statistic added as one class: numbers from numpy on the keys the layer computed,
    streaming over batches with padding, merge and save/load for free."""
    import numpy as np

    import attnprobe as ap
    from attnprobe.models import FusionAttention
    from attnprobe.stats import KeyNorm

    torch.manual_seed(0)
    layer = FusionAttention(dim=8, num_heads=2).eval()
    x = torch.randn(5, 6, 8)
    labels = torch.tensor([[0, 1, 1, 2, 2, 2, -1]]).repeat(5, 1)  # (B, 1 + L), last key padding
    with ap.probe(layer, modalities={"cls": 1, "a": 2, "b": 4}, statistics=[KeyNorm()]) as p:
        p.set_labels(labels[:2])
        layer(x[:2])
        first = p.result()
        p.reset()
        p.set_labels(labels[2:])
        layer(x[2:])
    merged = first.merge(p.result()).layers[0].value("key_norm")  # (Hk, Gk)

    tokens = torch.cat([layer.cls.expand(5, 1, 8), x], dim=1)  # (B, 1 + L, d)
    keys = layer.k_proj(tokens).view(5, 7, 2, 4).detach().double().numpy()  # (B, L, Hk, D)
    norms = np.linalg.norm(keys, axis=-1)  # (B, L, Hk)
    lab = labels.numpy()
    expected = np.stack([norms[lab == g].mean(0) for g in range(3)], axis=-1)  # (Hk, Gk)
    np.testing.assert_allclose(merged.numpy(), expected, rtol=1e-12, atol=1e-12)
