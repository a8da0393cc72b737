"""The bundled RollingQ example from Python, and the same comparison written out by hand.

Run: ``python examples/rollingq_example.py`` (about two minutes on 2 CPU cores).

Part 1 runs `attnprobe.app.example` (what ``attnprobe example rollingq --quick`` runs) and
reads its summary table. Part 2 shows the pieces it is made of, for one seed: bundled data, the
reference fusion model with and without RollingQ, the training wrapper, and the noise sweep that
measures whether attention follows input quality.
"""

from __future__ import annotations

import tempfile

import pandas as pd

import attnprobe as ap
import attnprobe.datasets as ds
from attnprobe.app import example
from attnprobe.models import LateFusionTransformer
from attnprobe.training import TrainConfig, Trainer


def with_the_example(out_dir: str) -> None:
    example.run(out_dir, example.ExampleConfig.quick(seeds=2), progress=False, log=print)
    summary = pd.read_csv(f"{out_dir}/summary.csv")
    table = summary.pivot(index="metric", columns="method", values="mean")
    print(table.loc[["accuracy", "attention_quality_r", "abs_air", "key_gap"]].round(3))


def by_hand(seed: int = 0) -> None:
    config = ds.SyntheticConfig(sizes=(1024, 256, 1000))
    train, val, test = (ds.synthetic(s, seed=seed, config=config) for s in ds.SPLITS)

    def prepare(batch, modality, level, generator):
        inputs, targets = batch
        inputs = list(inputs)
        if modality is not None:
            k = train.modalities.index(modality)
            inputs[k] = ap.corruption.corrupt(inputs[k], level, generator)
        return tuple(inputs), targets

    for rollingq in (False, True):
        model = LateFusionTransformer(
            train.input_dims,
            train.lengths,
            train.num_classes,
            dim=32,
            depth=1,
            heads=2,
            unimodal_heads=True,
        )
        rq = (
            ap.RollingQ(32, modalities=train.modalities).attach(model, "fusion")
            if rollingq
            else None
        )
        Trainer(
            model,
            train,
            modalities=model.fusion_layout(),
            eval_data=val,
            rollingq=rq,
            config=TrainConfig(epochs=10, lr=0.05, seed=seed, progress=False, tensorboard=False),
        ).fit()
        sweep = ap.noise_sweep(
            model,
            list(test.batches(250)),
            prepare,
            modalities=model.fusion_layout(),
            corrupted=list(train.modalities),
            layer="fusion",
            logits=lambda out: out.logits,
        )
        scores = sweep.adaptability().set_index("corrupted")
        name = "MT + RollingQ" if rollingq else "Vanilla MT"
        print(f"{name}: attention–quality r {scores['pearson_r'].round(3).to_dict()}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        with_the_example(tmp)
    by_hand()
