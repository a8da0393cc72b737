"""A Lightning run on ``--devices`` CPU processes for tests/test_lightning_ddp.py:
``python tests/_lightning_ddp_run.py OUT --devices N [--anchor running|frozen]``.

It trains `ShardedRecipe` (`tests.test_lightning.Recipe` with dropout 0 and the bundled
Trainer's split of every global batch over ranks) with attnprobe's `AttnProbeCallback` and
`RollingQCallback`; with ``N > 1`` under ``strategy=DDPStrategy(process_group_backend="gloo")``
(Lightning's ``"ddp"`` launcher starts the other ranks by running this script again). Every
rank writes ``rank<r>.json``: the callbacks' rows, the final rotation and its counter, and the
warnings the run raised; rank 0 also has Lightning's ``metrics.csv`` (CSVLogger) in OUT.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy

from attnprobe._batches import collate as _collate
from attnprobe._batches import epoch_order as _order
from attnprobe.integrations.lightning import AttnProbeCallback, RollingQCallback
from tests.test_callbacks import BATCH, SEED, merged
from tests.test_fsdp import model_without_dropout
from tests.test_lightning import Recipe, lightning_trainer


class RankShard(torch.utils.data.Sampler[int]):
    """This rank's part of the epoch's order (`attnprobe._batches.epoch_order`): with per-rank
    batch ``b``, global batch ``k`` is ``order[k·b·W : (k+1)·b·W]`` and rank ``r`` takes every
    ``W``-th index of it from ``r`` (as the bundled Trainer's ``_batches``), i.e. the rank's
    whole epoch is ``order[r::W]``."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.n, self.rank, self.world, self.epoch = n, rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Any:
        return iter(_order(self.n, SEED, self.epoch)[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


class ShardedRecipe(Recipe):
    """`Recipe` without dropout, global batch `BATCH` split over the ranks (``BATCH / W`` per
    rank); the learning-rate schedule counts global steps, the same on any number of ranks."""

    def __init__(self) -> None:
        super().__init__()
        self.model, self.rollingq = model_without_dropout()

    def train_dataloader(self) -> torch.utils.data.DataLoader[Any]:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        assert BATCH % world == 0 and len(self.items) % BATCH == 0  # equal shards every step
        return torch.utils.data.DataLoader(
            self.items,  # type: ignore[arg-type]
            batch_size=BATCH // world,
            sampler=RankShard(len(self.items), rank, world),
            collate_fn=_collate,
            generator=torch.Generator(),
        )


def callbacks(module: ShardedRecipe, anchor: str) -> tuple[AttnProbeCallback, RollingQCallback]:
    """The callbacks; the frozen anchor pass runs, on each rank, over that rank's shard of the
    data (its statistics are summed over ranks, `attnprobe.rollingq.anchor_statistics`)."""

    def frozen() -> Any:
        rank, world = module.trainer.global_rank, module.trainer.world_size
        mine = module.items[rank::world]
        step = BATCH // world
        return (_collate(mine[i : i + step])[0] for i in range(0, len(mine), step))

    probe = AttnProbeCallback("model.fusion", module.model.fusion_layout())
    rolling = RollingQCallback(module.rollingq, probe, anchor=anchor, anchor_data=frozen)  # type: ignore[arg-type]
    return probe, rolling


def fit(out: Path, devices: int, anchor: str) -> dict[str, Any]:
    """Train and return what this rank saw (also written to ``out/rank<r>.json``)."""
    module = ShardedRecipe()
    probe, rolling = callbacks(module, anchor)
    options: dict[str, Any] = {
        "devices": devices,
        "use_distributed_sampler": False,  # RankShard splits the global batches itself
        "logger": CSVLogger(out, name="", version=""),
        "log_every_n_steps": 1,
    }
    if devices > 1:
        options["strategy"] = DDPStrategy(process_group_backend="gloo")
    trainer = lightning_trainer([probe, rolling], **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module)
    rows = merged(probe, rolling)
    result = {
        "rank": trainer.global_rank,
        "world": trainer.world_size,
        "rows": rows,
        "rotation": module.rollingq.rotation.tolist(),
        "num_rotations": int(module.rollingq.num_rotations),
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--anchor", default="running", choices=("running", "frozen"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fit(out, args.devices, args.anchor)


if __name__ == "__main__":
    main()
