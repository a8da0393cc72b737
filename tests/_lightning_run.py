"""A small Lightning run for the resume test: ``python tests/_lightning_run.py OUT [--kill-epoch
E --kill-batch B]`` trains `tests.test_lightning.Recipe` with attnprobe's callbacks and
Lightning's checkpoints in OUT, SIGKILLs itself at (E, B) if asked, resumes from OUT/last.ckpt
when it exists, and writes the callbacks' rows (``rows.json``) and the final rotation
(``rotation.pt``)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as L
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.test_callbacks import merged
from tests.test_lightning import Recipe, callbacks_for, lightning_trainer


class Kill(L.Callback):
    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer: Any, module: Any, out: Any, batch: Any, i: int) -> None:
        if trainer.current_epoch == self.epoch and i == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--kill-epoch", type=int, default=-1)
    parser.add_argument("--kill-batch", type=int, default=-1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    module = Recipe()
    probe, rolling = callbacks_for(module, "running")
    saving = ModelCheckpoint(dirpath=out, save_last=True, every_n_epochs=1)  # every epoch end
    extra: list[Any] = [saving]
    if args.kill_epoch >= 0:
        extra.append(Kill(args.kill_epoch, args.kill_batch))
    last = out / "last.ckpt"
    trainer = lightning_trainer([probe, rolling, *extra], enable_checkpointing=True)
    trainer.fit(module, ckpt_path=str(last) if last.exists() else None)
    rows = merged(probe, rolling)
    (out / "rows.json").write_text(json.dumps(rows))
    torch.save(
        {"rotation": module.rollingq.rotation, "count": module.rollingq.num_rotations},
        out / "rotation.pt",
    )


if __name__ == "__main__":
    main()
