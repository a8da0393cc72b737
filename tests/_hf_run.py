"""A small HF ``transformers.Trainer`` run for the resume test: ``python tests/_hf_run.py OUT
[--kill-epoch E --kill-batch B] [--save-steps N]`` trains `tests.test_hf_trainer.Recipe` with
attnprobe's callbacks and a checkpoint at every epoch's end (or every N steps) in OUT, SIGKILLs
itself after batch B of epoch E if asked, resumes from the last checkpoint in OUT when there is
one, and writes the callbacks' rows (``rows.json``), the attnprobe entries of the log history
(``logged.json``) and the final rotation (``rotation.pt``)."""

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

import transformers
from transformers.trainer_utils import get_last_checkpoint

from tests.test_callbacks import merged
from tests.test_hf_trainer import hf_trainer


class Kill(transformers.TrainerCallback):
    def __init__(self, epoch: int, batch: int, steps_per_epoch: int) -> None:
        self.step = epoch * steps_per_epoch + batch + 1

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--kill-epoch", type=int, default=-1)
    parser.add_argument("--kill-batch", type=int, default=-1)
    parser.add_argument("--save-steps", type=int, default=0, help="0: a checkpoint per epoch")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    saving: dict[str, Any] = {"save_strategy": "epoch"}
    if args.save_steps:
        saving = {"save_strategy": "steps", "save_steps": args.save_steps}
    trainer, probe, rolling, rq = hf_trainer(out, "running", **saving)
    if args.kill_epoch >= 0:
        steps = len(trainer.get_train_dataloader())
        trainer.add_callback(Kill(args.kill_epoch, args.kill_batch, steps))
    last = get_last_checkpoint(str(out)) if out.exists() else None
    trainer.train(resume_from_checkpoint=last)
    rows = merged(probe, rolling)
    (out / "rows.json").write_text(json.dumps(rows))
    logged = [e for e in trainer.state.log_history if any(k.startswith("attnprobe/") for k in e)]
    (out / "logged.json").write_text(json.dumps(logged))
    torch.save({"rotation": rq.rotation, "count": rq.num_rotations}, out / "rotation.pt")


if __name__ == "__main__":
    main()
