"""Overhead of the training wrapper (``attnprobe.training.Trainer``, the probe attached at every
step) against a plain training loop on the same model: time per epoch, side by side.

What is measured
----------------
The reference fusion model (``LateFusionTransformer``: two modality encoders, the one-head
fusion layer, a linear classifier and detached unimodal probe heads) at a configurable size,
float32, CPU, ``torch.set_num_threads(2)``, on a synthetic two-modality dataset held in memory.
Each round runs one epoch of every variant, the order rotated every round:

1. ``plain``: a hand-written loop — the same batches (same order, same ``default_collate``),
   cross-entropy on the fused and unimodal logits, SGD with momentum, the same warm-up/cosine
   learning rate per step. Nothing attached. The baseline of every ratio.
2. ``wrapper``: ``Trainer.fit`` for one epoch with a fresh ``Trainer`` on the same model size,
   no evaluation set, no RollingQ, writing its metrics row, attention history and checkpoint to
   a temporary folder. Its time includes everything ``fit`` does: the probe on the fusion layer
   at every step (CLS query row, key/query statistics), the epoch's shares, AIR and key gap,
   and the files. This is the number the target (≤ 1.10×) is about.
3. ``wrapper + RollingQ``: as 2 with a RollingQ corrector whose check runs at the end of the
   epoch; with the default ``anchor="frozen"`` this adds the reference's frozen pass over the
   training data (forward only) whenever a rotation is due (here: every epoch, since the
   corrector is rebuilt each round).
4. ``wrapper + eval``: as 2 with an evaluation set (a quarter of the training set's size)
   evaluated clean and with each modality corrupted (three forward passes over it).
5. ``plain + callbacks``: the plain loop of 1 with `attnprobe.callbacks` — `AttentionDiagnostics`
   on the fusion layer (the probe at every step, the epoch's columns) and a `RollingQCallback`
   (running-statistics anchor) — on a model of its own that keeps training across rounds. The
   issue's target for the callbacks is ≤ 1.05× the bare loop, checked like the wrapper's.
6. With ``--frameworks lightning hf`` (either or both), the same model and data in the
   frameworks, each as a pair of its own models that keep training across rounds: the bare
   framework, and the framework with attnprobe's integration callbacks (``AttnProbeCallback``
   on the fusion layer and ``RollingQCallback``, running anchor, a RollingQ corrector attached).

   - ``lightning``: a ``LightningModule`` (the plain loop's batches through a ``DataLoader``
     with ``default_collate``, its losses, the same SGD and per-step schedule as a
     ``LambdaLR``), one epoch per round by ``lightning.pytorch.Trainer.fit`` (a fresh
     ``Trainer`` each round, built outside the timing: ``accelerator="cpu"``, no logger,
     progress bar, checkpointing or model summary). The callbacks log through ``log_dict``.
   - ``hf``: a ``transformers.Trainer`` subclass (``get_train_dataloader`` with the same
     batches, ``compute_loss`` with the same losses, the same optimizer and schedule passed in
     ``optimizers=``), one epoch per round by ``train()`` (a fresh ``Trainer`` each round:
     ``report_to=[]``, ``save_strategy="no"``, ``logging_strategy="no"``, ``disable_tqdm``,
     ``max_grad_norm=0`` as the plain loop does not clip; HF's ``PrinterCallback``, which would
     print the logged columns, removed from both). The callbacks are registered with
     ``.attach(trainer)`` and log through ``trainer.log``.

   The time of a framework's epoch runs from the first callback's epoch-start hook
   (``on_train_epoch_start`` / ``on_epoch_begin``, a stopwatch listed before attnprobe's
   callbacks) to the last callback's ``on_train_end`` (a stopwatch listed after them), so it
   includes the epoch-end work of the callbacks and the framework's handling of what they log;
   the rest of the ``fit()`` / ``train()`` call (its set-up, e.g. accelerate's
   ``gc.collect()`` at the start of every ``train()``, about 0.25 s here, and its tear-down) is
   the same with and without the callbacks and is printed separately. Target: the framework
   with the callbacks ≤ 1.05× the bare framework, paired per round.

Garbage is collected before each timed epoch and the collector is off during it (as in
``timeit``). The table reports, per variant, the median epoch time over rounds and its ratio to
the median of ``plain``, the fastest epoch and its ratio to the fastest ``plain``, and the
spread. The target is checked on the side-by-side number: the median over rounds of
``wrapper / plain`` within the same round. On a machine with slow phases lasting a few epochs
(this project's: ``--verbose`` prints every epoch time), the two variants of a round share the
phase, while the ratio of the two medians (also printed) moves by several percent from run to
run depending on which variant's epochs the slow phases hit.
A line says how much CPU other processes took during the rounds (``/proc/stat``).

Run ``python benchmarks/training_overhead.py`` (``--quick`` for a smaller run;
``--target-only --frameworks lightning hf`` for the plain loop, the wrapper, the callbacks and
both frameworks; ``--frameworks`` needs the ``lightning`` and ``hf`` extras).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from _common import contention, cpu_snapshot, fmt, ratio, round_robin
from torch.utils.data import default_collate

import attnprobe as ap
from attnprobe.models import LateFusionTransformer
from attnprobe.training import TrainConfig, Trainer

TARGET = 1.10
TARGET_CALLBACKS = 1.05


def make_data(n: int, dims: dict[str, int], lengths: dict[str, int], classes: int) -> list[Any]:
    g = torch.Generator().manual_seed(0)
    protos = {m: torch.randn(classes, dims[m], generator=g) for m in dims}
    items = []
    for i in range(n):
        y = i % classes
        xs = tuple(protos[m][y] + torch.randn(lengths[m], dims[m], generator=g) for m in dims)
        items.append((xs, y))
    return items


def build(args: argparse.Namespace, dims: dict[str, int], lengths: dict[str, int]) -> Any:
    torch.manual_seed(0)
    return LateFusionTransformer(
        dims,
        lengths,
        args.classes,
        dim=args.dim,
        depth=args.depth,
        heads=4,
        unimodal_heads=True,
    )


def _loss(out: Any, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the fused logits and on every unimodal head's."""
    loss = F.cross_entropy(out.logits, target)
    for extra in out.unimodal_logits.values():
        loss = loss + F.cross_entropy(extra, target)
    return loss


def plain_epoch(
    model: Any,
    optimizer: Any,
    data: list[Any],
    batch: int,
    epoch: int,
    batch_end: Callable[[Any], None] | None = None,
) -> None:
    """The loop a user would write: same order, collate, losses, schedule (``batch_end(loss)``
    after every step, for the callbacks)."""
    from attnprobe._batches import epoch_order as _order
    from attnprobe.training import _learning_rate

    order = _order(len(data), 0, epoch)
    steps = math.ceil(len(data) / batch)
    model.train()
    for k in range(steps):
        inputs, target = default_collate([data[int(i)] for i in order[k * batch : (k + 1) * batch]])
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(1e-3, epoch * steps + k, 2.5 * steps, 30 * steps)
        loss = _loss(model(*inputs), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if batch_end is not None:
            batch_end(loss)


@contextlib.contextmanager
def _quiet_gc() -> Iterator[None]:
    """Collect garbage before a timed epoch and keep the collector off during it (as
    ``timeit`` does), so that one variant's garbage is not collected in another's time."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _Stopwatch:
    """The epoch's start and end, stamped by a framework's hooks."""

    def __init__(self) -> None:
        self.start = self.end = math.nan

    def stamp_start(self) -> None:
        self.start = time.perf_counter()

    def stamp_end(self) -> None:
        self.end = time.perf_counter()


class _Arm:
    """One framework variant: its own model, optimizer and per-step schedule (the plain loop's),
    kept across rounds, and its epoch counter (the data order)."""

    def __init__(self, model: Any, steps: int) -> None:
        from attnprobe.training import _learning_rate

        self.model = model
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4
        )
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: _learning_rate(1e-3, step, 2.5 * steps, 30 * steps) / 1e-3
        )
        self.epoch = 0

    def callbacks(self, dim: int, layer: str, probe_class: Any, rollingq_class: Any) -> list[Any]:
        """A framework's ``[AttnProbeCallback, RollingQCallback]`` on this arm's fusion layer
        (``layer``: its path in what the framework trains), the corrector attached."""
        corrector = ap.RollingQ(dim, modalities=("audio", "video"))
        corrector.attach(self.model, "fusion")
        probe = probe_class(layer, self.model.fusion_layout())
        return [probe, rollingq_class(corrector, probe)]

    def loader(self, data: list[Any], batch: int, collate: Callable[[Any], Any]) -> Any:
        """The plain loop's batches of this arm's epoch."""
        from attnprobe._batches import epoch_order as _order

        order = _order(len(data), 0, self.epoch).tolist()
        return torch.utils.data.DataLoader(
            data, batch_size=batch, sampler=order, collate_fn=collate
        )


FrameworkRun = Callable[[_Arm, bool, _Stopwatch], None]


def lightning_epoch(args: argparse.Namespace, data: list[Any]) -> FrameworkRun:
    """``run(arm, callbacks, stopwatch)``: one epoch of ``arm`` by ``lightning.pytorch``."""
    import logging
    import warnings

    import lightning.pytorch as L
    from lightning.pytorch.utilities.warnings import PossibleUserWarning

    from attnprobe.integrations.lightning import AttnProbeCallback, RollingQCallback

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)  # "GPU available: False", tips
    warnings.filterwarnings("ignore", category=PossibleUserWarning)  # num_workers=0, log steps
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")

    class Module(L.LightningModule):
        def __init__(self, arm: _Arm) -> None:
            super().__init__()
            self.arm = arm
            self.model = arm.model

        def train_dataloader(self) -> Any:
            return self.arm.loader(data, args.batch, default_collate)

        def forward(self, *inputs: torch.Tensor) -> Any:
            return self.model(*inputs)

        def training_step(self, batch: Any, index: int) -> torch.Tensor:
            inputs, target = batch
            return _loss(self(*inputs), target)

        def configure_optimizers(self) -> Any:
            every_step = {"scheduler": self.arm.schedule, "interval": "step"}
            return {"optimizer": self.arm.optimizer, "lr_scheduler": every_step}

    class Start(L.Callback):
        def __init__(self, clock: _Stopwatch) -> None:
            self.clock = clock

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self.clock.stamp_start()

    class End(L.Callback):
        def __init__(self, clock: _Stopwatch) -> None:
            self.clock = clock

        def on_train_end(self, trainer: Any, module: Any) -> None:
            self.clock.stamp_end()

    modules: dict[int, Any] = {}
    attnprobe: dict[int, list[Any]] = {}

    def run(arm: _Arm, callbacks: bool, clock: _Stopwatch) -> None:
        key = id(arm)
        if key not in modules:
            modules[key] = Module(arm)
            attnprobe[key] = []
            if callbacks:
                attnprobe[key] = arm.callbacks(
                    args.dim, "model.fusion", AttnProbeCallback, RollingQCallback
                )
        trainer = L.Trainer(
            max_epochs=1,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[Start(clock), *attnprobe[key], End(clock)],
        )
        trainer.fit(modules[key])

    return run


def hf_epoch(args: argparse.Namespace, data: list[Any]) -> FrameworkRun:
    """``run(arm, callbacks, stopwatch)``: one epoch of ``arm`` by ``transformers.Trainer``."""
    import transformers
    from transformers.trainer_callback import PrinterCallback

    from attnprobe.integrations.transformers import AttnProbeCallback, RollingQCallback

    transformers.logging.set_verbosity_error()
    out = tempfile.TemporaryDirectory()

    def collate(chunk: list[Any]) -> dict[str, Any]:
        inputs, target = default_collate(chunk)
        return {"inputs": inputs, "target": target}

    class Loop(transformers.Trainer):
        def __init__(self, arm: _Arm, **kwargs: Any) -> None:
            self.arm = arm
            super().__init__(model=arm.model, **kwargs)

        def get_train_dataloader(self) -> Any:
            return self.arm.loader(data, args.batch, collate)

        def compute_loss(
            self, model: Any, inputs: Any, return_outputs: bool = False, **_: Any
        ) -> Any:
            out = model(*inputs["inputs"])
            loss = _loss(out, inputs["target"])
            return (loss, out) if return_outputs else loss

    class Start(transformers.TrainerCallback):
        def __init__(self, clock: _Stopwatch) -> None:
            self.clock = clock

        def on_epoch_begin(self, *_: Any, **__: Any) -> None:
            self.clock.stamp_start()

    class End(transformers.TrainerCallback):
        def __init__(self, clock: _Stopwatch) -> None:
            self.clock = clock

        def on_train_end(self, *_: Any, **__: Any) -> None:
            self.clock.stamp_end()

    attnprobe: dict[int, list[Any]] = {}

    def run(arm: _Arm, callbacks: bool, clock: _Stopwatch) -> None:
        key = id(arm)
        if key not in attnprobe:
            attnprobe[key] = []
            if callbacks:
                attnprobe[key] = arm.callbacks(
                    args.dim, "fusion", AttnProbeCallback, RollingQCallback
                )
        settings = transformers.TrainingArguments(
            output_dir=out.name,
            num_train_epochs=1,
            per_device_train_batch_size=args.batch,
            max_grad_norm=0.0,  # the plain loop does not clip
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            use_cpu=True,
            remove_unused_columns=False,
            disable_tqdm=True,
        )
        trainer = Loop(arm, args=settings, optimizers=(arm.optimizer, arm.schedule))
        trainer.remove_callback(PrinterCallback)  # it prints every trainer.log
        trainer.add_callback(Start(clock))
        for callback in attnprobe[key]:
            callback.attach(trainer)
        trainer.add_callback(End(clock))
        trainer.train()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--verbose", action="store_true", help="print every epoch time")
    parser.add_argument(
        "--target-only",
        action="store_true",
        help="time only the plain loop, the wrapper and the callbacks (and --frameworks)",
    )
    parser.add_argument("--quick", action="store_true", help="512 samples, 3 rounds")
    parser.add_argument(
        "--frameworks",
        nargs="+",
        choices=("lightning", "hf"),
        default=[],
        help="also time an epoch in these frameworks, bare and with attnprobe's callbacks",
    )
    args = parser.parse_args()
    if args.quick:
        args.samples, args.rounds = 512, 3
    torch.set_num_threads(2)
    dims, lengths = {"audio": 32, "video": 48}, {"audio": 16, "video": 24}
    data = make_data(args.samples, dims, lengths, args.classes)
    held_out = data[: args.samples // 4]
    print(
        f"training overhead: {args.samples} samples, batch {args.batch}, d={args.dim}, "
        f"encoder depth {args.depth}, tokens {lengths}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    plain_model = build(args, dims, lengths)
    plain_opt = torch.optim.SGD(plain_model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    wrappers = ("wrapper",) if args.target_only else ("wrapper", "rollingq", "eval")
    models = {name: build(args, dims, lengths) for name in wrappers}
    plain_epochs = [0]

    def timed(run: Callable[[], object]) -> float:
        with _quiet_gc():
            start = time.perf_counter()
            run()
            return time.perf_counter() - start

    def run_wrapper(name: str) -> Callable[[], float]:
        model = models[name]

        def go() -> float:
            rq = None
            if name == "rollingq":
                if getattr(model.fusion, "rollingq", None) is not None:
                    model.fusion.rollingq.detach()
                rq = ap.RollingQ(args.dim, modalities=("audio", "video")).attach(model, "fusion")
            with tempfile.TemporaryDirectory() as out:
                trainer = Trainer(
                    model,
                    data,
                    modalities=model.fusion_layout(),
                    eval_data=held_out if name == "eval" else None,
                    rollingq=rq,
                    out_dir=out,
                    config=TrainConfig(
                        epochs=1, batch_size=args.batch, progress=False, tensorboard=False
                    ),
                )
                return timed(trainer.fit)

        return go

    def run_plain() -> float:
        seconds = timed(
            lambda: plain_epoch(plain_model, plain_opt, data, args.batch, plain_epochs[0])
        )
        plain_epochs[0] += 1
        return seconds

    from attnprobe.callbacks import AttentionDiagnostics, Callbacks, RollingQCallback

    own_model = build(args, dims, lengths)
    own_opt = torch.optim.SGD(own_model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    corrector = ap.RollingQ(args.dim, modalities=("audio", "video")).attach(own_model, "fusion")
    diagnostics = AttentionDiagnostics("fusion", own_model.fusion_layout())
    callbacks = Callbacks(diagnostics, RollingQCallback(corrector, diagnostics)).fit(own_model)
    own_epochs = [0]

    def run_callbacks() -> float:
        epoch = own_epochs[0]

        def one_epoch() -> None:
            callbacks.epoch_start(epoch)
            plain_epoch(own_model, own_opt, data, args.batch, epoch, callbacks.batch_end)
            callbacks.epoch_end(epoch)

        own_epochs[0] += 1
        return timed(one_epoch)

    variants: dict[str, Callable[[], float]] = {
        "plain": run_plain,
        **{name: run_wrapper(name) for name in models},
        "callbacks": run_callbacks,
    }
    # per framework variant: the rest of each fit() / train() call, outside the timed epoch
    outside: dict[str, list[float]] = {}
    steps = math.ceil(len(data) / args.batch)
    epoch_of = {"lightning": lightning_epoch, "hf": hf_epoch}

    def run_framework(
        name: str, one_epoch: FrameworkRun, callbacks_on: bool
    ) -> Callable[[], float]:
        arm = _Arm(build(args, dims, lengths), steps)

        def go() -> float:
            clock = _Stopwatch()
            total = timed(lambda: one_epoch(arm, callbacks_on, clock))
            arm.epoch += 1
            epoch = clock.end - clock.start
            outside.setdefault(name, []).append(total - epoch)
            return epoch

        return go

    for framework in dict.fromkeys(args.frameworks):
        one_epoch = epoch_of[framework](args, data)
        variants[framework] = run_framework(framework, one_epoch, False)
        variants[f"{framework}_callbacks"] = run_framework(
            f"{framework}_callbacks", one_epoch, True
        )
    round_robin(variants, 1)  # warm-up round, not timed
    names = list(variants)
    before = cpu_snapshot()
    times = round_robin(variants, args.rounds)
    after = cpu_snapshot()
    labels = {
        "plain": "plain loop",
        "wrapper": "wrapper (probe every step)",
        "rollingq": "wrapper + RollingQ check (frozen pass)",
        "eval": "wrapper + eval (clean + 2 corrupted)",
        "callbacks": "plain loop + callbacks (probe, RollingQ)",
        "lightning": "Lightning Trainer, bare",
        "lightning_callbacks": "Lightning + callbacks (probe, RollingQ)",
        "hf": "HF Trainer, bare",
        "hf_callbacks": "HF Trainer + callbacks (probe, RollingQ)",
    }
    base_median = statistics.median(times["plain"])
    base_min = min(times["plain"])
    print(f"\n{args.rounds} rounds; {contention(before, after)}")
    header = ("median s", "× plain", "min s", "× plain", "spread")
    print(f"{'variant':42s} " + " ".join(f"{h:>8s}" for h in header))
    for name in names:
        values = times[name]
        median = statistics.median(values)
        spread = (max(values) - min(values)) / median
        print(
            f"{labels[name]:42s} {median:9.3f} {fmt(ratio(median, base_median), '.3f'):>8s} "
            f"{min(values):8.3f} {fmt(ratio(min(values), base_min), '.3f'):>8s} {spread:7.1%}"
        )
    if args.verbose:
        for name in names:
            print(f"{name:10s}", " ".join(f"{t:.3f}" for t in times[name]))
    # each round's wrapper epoch against the plain epoch of the same round
    paired = statistics.median(w / p for w, p in zip(times["wrapper"], times["plain"], strict=True))
    of_medians = ratio(statistics.median(times["wrapper"]), base_median)
    print(f"ratio of the medians: {fmt(of_medians, '.3f')}×")
    verdict = "PASS" if paired <= TARGET else "FAIL"
    print(
        f"\ntarget: wrapper ≤ {TARGET:.2f}× plain per epoch (median over rounds of wrapper / "
        f"plain within the round): {paired:.3f}× {verdict}"
    )
    own = statistics.median(c / p for c, p in zip(times["callbacks"], times["plain"], strict=True))
    verdict = "PASS" if own <= TARGET_CALLBACKS else "FAIL"
    print(
        f"target: plain loop + callbacks ≤ {TARGET_CALLBACKS:.2f}× plain per epoch (same "
        f"pairing): {own:.3f}× {verdict}"
    )
    for framework in dict.fromkeys(args.frameworks):
        with_callbacks = times[f"{framework}_callbacks"]
        bare = times[framework]
        own = statistics.median(c / b for c, b in zip(with_callbacks, bare, strict=True))
        of_medians = ratio(statistics.median(with_callbacks), statistics.median(bare))
        verdict = "PASS" if own <= TARGET_CALLBACKS else "FAIL"
        print(
            f"target: {labels[framework].split(',')[0]} + callbacks ≤ {TARGET_CALLBACKS:.2f}× "
            f"the bare framework per epoch (same pairing): {own:.3f}× {verdict} "
            f"(ratio of the medians {fmt(of_medians, '.3f')}×)"
        )
    for name, seconds in outside.items():
        print(
            f"outside the timed epoch, {labels[name]}: median {statistics.median(seconds):.3f} s "
            f"per fit()/train() call"
        )
    callbacks.fit_end()


if __name__ == "__main__":
    main()
