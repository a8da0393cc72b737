"""DDP: two gloo processes, each probing half the data, then ``sync()`` — equal to one
process over all the data."""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import attnprobe as ap
from tests._reference import FP32_SUMS

LAYOUT = {"cls": 1, "audio": 3, "video": 4}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.TransformerEncoder(
        nn.TransformerEncoderLayer(16, 4, 32, batch_first=True), 2, enable_nested_tensor=False
    ).eval()


def _data() -> torch.Tensor:
    return torch.randn(10, 8, 16, generator=torch.Generator().manual_seed(1))


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = _model()
        shard = _data()[rank * 5 : (rank + 1) * 5]
        with ap.probe(model, modalities=LAYOUT) as p, torch.no_grad():
            model(shard[:2])
            model(shard[2:])
        p.sync()
        if rank == 0:
            res = p.result()
            torch.save({la.name: (la.mass_total, la.num_queries, la.key_total) for la in res}, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_rank_sync_equals_single_process(tmp_path: Path) -> None:
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=2, join=True)
    synced = torch.load(out, weights_only=True)
    model = _model()
    with ap.probe(model, modalities=LAYOUT) as p, torch.no_grad():
        model(_data())
    for layer in p.result():
        mass, queries, keys = synced[layer.name]
        # float32 model: per-call sums reduced in float32, batched differently on two ranks
        torch.testing.assert_close(mass, layer.mass_total, **FP32_SUMS)
        torch.testing.assert_close(queries, layer.num_queries, rtol=0, atol=0)
        torch.testing.assert_close(keys, layer.key_total, **FP32_SUMS)


def _uneven_worker(rank: int, port: int, out: str, mode: str) -> None:
    """Rank 1 runs only the first layer (``skip_layer``) or nothing at all (``idle``)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        model = _model()
        shard = _data()[rank * 5 : (rank + 1) * 5]
        with ap.probe(model, modalities=LAYOUT) as p, torch.no_grad():
            if rank == 0:
                model(shard)
            elif mode == "skip_layer":
                model.layers[0](shard)
        p.sync()
        p.sync()  # a second sync adds nothing
        res = p.result()  # every rank holds the global statistics
        torch.save(
            {la.name: (la.mass_total, la.num_queries, la.num_calls) for la in res},
            f"{out}.{rank}",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["skip_layer", "idle"])
def test_a_rank_without_batches_for_a_layer_does_not_block_the_sync(
    tmp_path: Path, mode: str
) -> None:
    out = tmp_path / "result"
    mp.spawn(_uneven_worker, args=(_free_port(), str(out), mode), nprocs=2, join=True)
    model = _model()
    data = _data()
    with ap.probe(model, modalities=LAYOUT) as p, torch.no_grad():
        model(data[:5])
        if mode == "skip_layer":
            model.layers[0](data[5:])
    for rank in range(2):
        synced = torch.load(f"{out}.{rank}", weights_only=True)
        for layer in p.result():
            mass, queries, calls = synced[layer.name]
            torch.testing.assert_close(mass, layer.mass_total, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(queries, layer.num_queries, rtol=0, atol=0)
            assert calls == layer.num_calls
