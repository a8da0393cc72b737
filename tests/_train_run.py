"""A small training run for the wrapper's process-level tests (resume after SIGKILL, torchrun).

Run as ``python tests/_train_run.py OUT [options]`` or under
``python -m torch.distributed.run --nproc_per_node=2 tests/_train_run.py OUT ...``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attnprobe as ap
from attnprobe.models import LateFusionTransformer
from attnprobe.training import TrainConfig, Trainer


def toy_data(n: int, seed: int) -> list[Any]:
    """Two modalities of a 4-class problem; audio is the cleaner one."""
    g = torch.Generator().manual_seed(seed)
    protos_a = torch.randn(4, 6, generator=torch.Generator().manual_seed(100))
    protos_v = torch.randn(4, 8, generator=torch.Generator().manual_seed(101))
    items = []
    for i in range(n):
        y = i % 4
        a = protos_a[y] + 0.5 * torch.randn(4, 6, generator=g)
        v = protos_v[y] + 1.5 * torch.randn(3, 8, generator=g)
        items.append(((a, v), y))
    return items


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--kill-epoch", type=int, default=-1)
    parser.add_argument("--kill-batch", type=int, default=-1)
    parser.add_argument(
        "--kill-in-save",
        type=int,
        default=-1,
        help="SIGKILL inside the N-th atomic file write, half of it written to the temporary file",
    )
    parser.add_argument("--anchor", default="frozen")
    parser.add_argument("--air", default="epoch")
    parser.add_argument("--no-rollingq", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    try:
        torch.manual_seed(0)
        model = LateFusionTransformer(
            {"audio": 6, "video": 8},
            {"audio": 4, "video": 3},
            4,
            dim=16,
            depth=1,
            dropout=args.dropout,
            encoder_dropout=args.dropout,
            unimodal_heads=True,
        )
        rq = None
        if not args.no_rollingq:
            rq = ap.RollingQ(16, modalities=("audio", "video"), max_rotations=2)
            rq.attach(model, "fusion")
        config = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch,
            lr=0.05,
            warmup_epochs=1,
            progress=False,
            tensorboard=False,
            anchor=args.anchor,  # type: ignore[arg-type]
            air=args.air,  # type: ignore[arg-type]
        )
        trainer = Trainer(
            model,
            toy_data(64, seed=1),
            modalities=model.fusion_layout(),
            eval_data=toy_data(32, seed=2),
            rollingq=rq,
            out_dir=args.out,
            config=config,
        )

        def kill(trainer: Trainer, index: int, loss: float) -> None:
            if trainer.epoch == args.kill_epoch and index == args.kill_batch:
                os.kill(os.getpid(), signal.SIGKILL)

        trainer.add_callback("on_batch_end", kill)
        if args.kill_in_save > 0:
            import attnprobe.callbacks._files as files_module

            original = files_module._atomic_write
            writes = [0]

            def dying(path: Path, data: bytes) -> None:
                writes[0] += 1
                if writes[0] == args.kill_in_save:
                    path.with_name(f".{path.name}.tmp").write_bytes(data[: len(data) // 2])
                    os.kill(os.getpid(), signal.SIGKILL)
                original(path, data)

            files_module._atomic_write = dying  # type: ignore[assignment]
        trainer.fit()
        if rq is not None:
            rank = dist.get_rank() if world > 1 else 0
            torch.save(
                {"rotation": rq.rotation, "num_rotations": rq.num_rotations},
                Path(args.out) / f"rotation_rank{rank}.pt",
            )
    finally:
        if world > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
