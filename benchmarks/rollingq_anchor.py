"""RollingQ anchor statistics: the reference's frozen pass against the probe's running
statistics of the epoch just trained (no extra pass) — how different are the rotations?

For each seed, the same model (the reference fusion model with detached unimodal heads) is
trained for ``--epochs`` epochs twice on the same synthetic two-modality data, once with
``TrainConfig(anchor="frozen")`` and once with ``anchor="running"``, with RollingQ defaults
(β = 0, ρ = 0, one rotation after epoch 0). Both runs are identical until the rotation. The
script reports, per seed:

* ``angle frozen vs running``: at the rotation, the angle between where the two rotations send
  the end-of-epoch mean CLS query (logged by the frozen run as
  ``rollingq_running_vs_frozen_deg``);
* the rotation angle itself, and the AIR, CLS shares, key gap and accuracy of both runs at the
  last epoch;
* the time of the epoch-end work (``diagnostics_time_s``) at the rotation epoch: the frozen
  pass is the difference.

Run ``python benchmarks/rollingq_anchor.py`` (``--quick`` for 2 seeds and 3 epochs).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import pandas as pd
import torch
from training_overhead import build, make_data

import attnprobe as ap
from attnprobe.training import TrainConfig, Trainer


def train(args: argparse.Namespace, seed: int, anchor: str, data: list[Any]) -> pd.DataFrame:
    dims, lengths = {"audio": 32, "video": 48}, {"audio": 16, "video": 24}
    torch.manual_seed(seed)
    model = build(args, dims, lengths)
    rq = ap.RollingQ(args.dim, modalities=("audio", "video")).attach(model, "fusion")
    trainer = Trainer(
        model,
        data,
        modalities=model.fusion_layout(),
        eval_data=data[: len(data) // 4],
        rollingq=rq,
        config=TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch,
            lr=args.lr,
            warmup_epochs=1,
            seed=seed,
            anchor=anchor,  # type: ignore[arg-type]
            progress=False,
            tensorboard=False,
        ),
    )
    return trainer.fit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.samples = 2, 3, 512
    torch.set_num_threads(2)
    dims, lengths = {"audio": 32, "video": 48}, {"audio": 16, "video": 24}
    data = make_data(args.samples, dims, lengths, args.classes)
    print(
        f"RollingQ anchor: frozen pass vs running statistics; {args.seeds} seeds, {args.epochs} "
        f"epochs, {args.samples} samples, d={args.dim}, lr={args.lr}, torch {torch.__version__}"
    )
    rows = []
    for seed in range(args.seeds):
        frozen = train(args, seed, "frozen", data)
        running = train(args, seed, "running", data)
        last_f, last_r = frozen.iloc[-1], running.iloc[-1]
        rows.append(
            {
                "seed": seed,
                "rotation_deg": frozen["rollingq_angle_deg"].iloc[0],
                "frozen_vs_running_deg": frozen["rollingq_running_vs_frozen_deg"].iloc[0],
                "extra_pass_s": frozen["diagnostics_time_s"].iloc[0]
                - running["diagnostics_time_s"].iloc[0],
                "air_frozen": last_f["air"],
                "air_running": last_r["air"],
                "share_audio_frozen": last_f["share_audio"],
                "share_audio_running": last_r["share_audio"],
                "key_gap_frozen": last_f["key_gap"],
                "key_gap_running": last_r["key_gap"],
                "acc_frozen": last_f["eval_accuracy"],
                "acc_running": last_r["eval_accuracy"],
            }
        )
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(4).to_string(index=False))
    print(
        f"\nangle between the two rotated queries at the rotation: median "
        f"{statistics.median(table['frozen_vs_running_deg']):.2f}°, max "
        f"{table['frozen_vs_running_deg'].max():.2f}° (rotation itself: median "
        f"{statistics.median(table['rotation_deg']):.1f}°)"
    )
    print(
        f"last-epoch |AIR| frozen {table['air_frozen'].abs().mean():.4f} vs running "
        f"{table['air_running'].abs().mean():.4f}; accuracy frozen "
        f"{table['acc_frozen'].mean():.4f} vs running {table['acc_running'].mean():.4f}"
    )


if __name__ == "__main__":
    main()
