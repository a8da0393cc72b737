"""The training wrapper: a short loop over attnprobe's training callbacks — train with a probe on
the fusion layer and log the diagnostics every epoch (`AttentionDiagnostics`), evaluate under
corruption (`CorruptionEvaluation`), run the RollingQ check at epoch end (`RollingQCallback`),
write the metrics, attention history, checkpoint and TensorBoard scalars and resume exactly
(`RunFiles`) — and run under ``torchrun`` (DDP, gloo on CPU).

Read it top to bottom: `TrainConfig` (the knobs, with the reference's defaults), then
`Trainer.fit` (the callbacks, then per epoch ``_train_epoch``: SGD steps with the learning-rate
schedule). Extend it with callbacks (``callbacks=[...]`` or `Trainer.add_callback`), not by
subclassing; or write your own loop with the same callbacks (``docs/guides/training.md``).

Training recipe (``docs/guides/training.md``, "With the training wrapper"): SGD with momentum 0.9,
weight decay 1e-4, lr 1e-3, cosine schedule after a linear warm-up of 2.5 epochs; the
schedule is a pure function of the step, and dropout is reseeded from ``(seed, epoch, rank)``
at every epoch start, so a resumed run repeats the uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnprobe._batches import Data, epoch_order, mix, model_outputs, shard_batches
from attnprobe._calls import call_model
from attnprobe._distributed import all_reduce_sum, rank_and_world
from attnprobe.analysis.history import History
from attnprobe.callbacks import (
    ATTENTION,
    CHECKPOINT,
    METRICS,
    AttentionDiagnostics,
    Callback,
    Callbacks,
    CorruptionEvaluation,
    RollingQCallback,
    RunFiles,
    load_checkpoint,
)
from attnprobe.errors import AttnProbeError, AttnProbeWarning, ProbeConfigError
from attnprobe.labels import ModalityLayout, as_layout
from attnprobe.results import ProbeResult
from attnprobe.rollingq import RollingQ

__all__ = ["ATTENTION", "CHECKPOINT", "METRICS", "TrainConfig", "Trainer", "load_checkpoint"]

Event = Literal["on_batch_end", "on_epoch_end"]


@dataclass
class TrainConfig:
    """What `Trainer` does; defaults are the RollingQ reference's recipe."""

    epochs: int = 30
    batch_size: int = 64
    """Per process: the global batch is ``batch_size × world size``."""
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 2.5
    """Linear warm-up, then a cosine decay to 0 at the last step."""
    optimizer: Literal["sgd", "adamw"] = "sgd"
    seed: int = 0
    """Seeds the data order, dropout (per epoch and rank) and the corruption noise."""
    corruption_level: float = 0.5
    """``λ`` of the corrupted evaluations (``x̃ = (1 − λ)x + λ·ε·σ_x``)."""
    air: Literal["epoch", "last_batch"] = "epoch"
    """AIR for the RollingQ check: streamed over the whole epoch (default), or from the last
    training batch only (the reference code's estimate)."""
    anchor: Literal["frozen", "running"] = "frozen"
    """RollingQ anchor statistics: a frozen pass over the training data after the epoch (the
    reference), or the probe's running statistics of the epoch (no extra pass)."""
    eval_every: int = 1
    """Evaluate every this many epochs (and always after the last one)."""
    unimodal_loss_weight: float = 1.0
    """Weight of the unimodal probe heads' loss (they see detached features)."""
    progress: bool = True
    """Show a progress bar (rank 0)."""
    tensorboard: bool | None = None
    """Write TensorBoard scalars to ``out_dir/tensorboard``: None = when ``tensorboard`` is
    installed, True = required."""


class Trainer:
    """Train a fusion model with the probe attached, logging the diagnostics every epoch.

    Data: map-style datasets whose items are ``(inputs, target)``, ``inputs`` a tuple of one
    tensor per modality (in the order the model takes them), ``target`` a class index.

    Args:
        model: the model; its output is the logits, or an object with ``.logits`` (and
            ``.unimodal_logits``, a mapping modality → logits of detached probe heads, as
            `attnprobe.models.LateFusionTransformer` with ``unimodal_heads=True`` returns).
        train_data: the training set.
        modalities: the token layout of the fusion layer (e.g. ``model.fusion_layout()``);
            None with ``layer=None``.
        inputs: the modality of each positional input (default: ``model.modalities``).
        layer: path of the fusion attention module; None trains a model without one (e.g.
            `attnprobe.models.ConcatFusion`) with the same recipe, data order and evaluation,
            and no attention columns.
        query: the query group whose attention is diagnosed (the fusion CLS token).
        exclude: key groups left out of shares.
        eval_data: evaluated clean and with each input modality corrupted; None: no
            evaluation columns.
        rollingq: the corrector, already attached to ``layer`` (`RollingQ.attach`); None: a
            vanilla run.
        out_dir: where the metrics, attention history and checkpoint go (None: nothing
            written, no resume).
        config: `TrainConfig`.
        resume: continue from ``out_dir/checkpoint.pt`` when it exists.
        callbacks: more `attnprobe.callbacks.Callback` objects, called after the built-in ones
            (their columns join each epoch's row before it is written).

    Under ``torchrun`` (``torch.distributed`` initialised by the caller), each rank trains on
    its shard of every global batch through ``DistributedDataParallel``; probe statistics,
    losses and accuracies are summed over ranks, so the logged numbers and the rotation are
    those of one process over the same data.

    Examples:
        >>> import torch, attnprobe as ap
        >>> from attnprobe.models import LateFusionTransformer
        >>> from attnprobe.training import Trainer, TrainConfig
        >>> g = torch.Generator().manual_seed(0)
        >>> data = [((torch.randn(4, 6, generator=g), torch.randn(3, 8, generator=g)), i % 5)
        ...         for i in range(40)]
        >>> model = LateFusionTransformer({"audio": 6, "video": 8}, {"audio": 4, "video": 3}, 5,
        ...                               dim=16, unimodal_heads=True)
        >>> rq = ap.RollingQ(16, modalities=("audio", "video")).attach(model, "fusion")
        >>> trainer = Trainer(model, data, modalities=model.fusion_layout(), eval_data=data,
        ...                   rollingq=rq, config=TrainConfig(epochs=2, batch_size=8,
        ...                   progress=False))
        >>> metrics = trainer.fit()
        >>> metrics[["epoch", "share_audio", "rollingq_num_rotations"]].shape
        (2, 3)
        >>> int(rq.num_rotations)
        1
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Data,
        *,
        modalities: ModalityLayout | Mapping[str, int] | None,
        inputs: Sequence[str] | None = None,
        layer: str | None = "fusion",
        query: str = "cls",
        exclude: Sequence[str] = ("cls",),
        eval_data: Data | None = None,
        rollingq: RollingQ | None = None,
        out_dir: str | Path | None = None,
        config: TrainConfig | None = None,
        resume: bool = True,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.config = config or TrainConfig()
        cfg = self.config
        if cfg.air not in ("epoch", "last_batch") or cfg.anchor not in ("frozen", "running"):
            raise ProbeConfigError(
                f"TrainConfig: expected air 'epoch'|'last_batch' and anchor 'frozen'|'running', "
                f"received air={cfg.air!r}, anchor={cfg.anchor!r}."
            )
        if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.eval_every < 1:
            raise ProbeConfigError(
                f"TrainConfig: expected epochs, batch_size and eval_every >= 1, received "
                f"{cfg.epochs}, {cfg.batch_size}, {cfg.eval_every}."
            )
        if (modalities is None) != (layer is None):
            raise ProbeConfigError(
                "Trainer: pass modalities=<the fusion layer's layout> with layer=<its path>, or "
                f"modalities=None with layer=None (no attention layer); received layer={layer!r}"
                f" and modalities={modalities!r}."
            )
        if layer is None and rollingq is not None:
            raise ProbeConfigError("Trainer: RollingQ needs an attention layer; pass layer=...")
        self.layout = None if modalities is None else as_layout(modalities)
        self.core = (
            model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        )
        names = inputs if inputs is not None else getattr(self.core, "modalities", None)
        if names is None:
            raise ProbeConfigError(
                "Trainer: pass inputs=[...] (the modality of each positional model input); the "
                "model has no .modalities attribute to read them from."
            )
        self.inputs = tuple(names)
        self.exclude = tuple(exclude)
        if self.layout is not None:
            for name in (*self.inputs, query, *self.exclude):
                self.layout.index(name)  # raises ModalityLayoutError naming the groups
        groups = self.layout.names if self.layout is not None else self.inputs
        self.modalities = tuple(g for g in groups if g not in set(self.exclude))
        self.layer, self.query = layer, query
        self.train_data, self.eval_data = train_data, eval_data
        self.rollingq = rollingq
        if rollingq is not None and rollingq not in list(self.core.modules()):
            raise ProbeConfigError(
                "Trainer: the RollingQ corrector is not part of the model; attach it first: "
                f"rollingq.attach(model, {layer!r})."
            )
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.resume = resume
        self.rank, self.world = rank_and_world()
        self.model = model
        if self.world > 1 and not isinstance(model, nn.parallel.DistributedDataParallel):
            self.model = nn.parallel.DistributedDataParallel(model)
        params = [p for p in self.core.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
        elif cfg.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            raise ProbeConfigError(
                f"TrainConfig: expected optimizer 'sgd' or 'adamw', received {cfg.optimizer!r}."
            )
        self.device = next(self.core.parameters()).device
        self.step = 0
        self.epoch = 0
        """The next epoch to run."""
        self._functions: dict[str, list[Callable[..., None]]] = {
            "on_batch_end": [],
            "on_epoch_end": [],
        }
        if len(train_data) % self.world:
            raise ProbeConfigError(
                f"Trainer: {len(train_data)} training samples do not split evenly over "
                f"{self.world} ranks (every rank must run the same number of steps); use a "
                "multiple of the world size."
            )
        # -- the callbacks, in the order their columns enter a row -----------------------------
        self.diagnostics = None
        if layer is not None and self.layout is not None:
            self.diagnostics = AttentionDiagnostics(
                layer, self.layout, query=query, exclude=self.exclude
            )
        self.evaluation = None
        if eval_data is not None:
            self.evaluation = CorruptionEvaluation(
                eval_data,
                inputs=self.inputs,
                modalities=self.layout,
                layer=layer,
                query=query,
                exclude=self.exclude,
                level=cfg.corruption_level,
                seed=cfg.seed,
                batch_size=cfg.batch_size,
                every=cfg.eval_every,
                epochs=cfg.epochs,
            )
        self.rollingq_callback = None
        if rollingq is not None and self.diagnostics is not None:
            self.rollingq_callback = RollingQCallback(
                rollingq,
                self.diagnostics,
                anchor=cfg.anchor,
                anchor_data=self._anchor_batches,
            )
        self.files = None
        if self.out_dir is not None:
            self.files = RunFiles(
                self.out_dir,
                diagnostics=self.diagnostics,
                state=self._state,
                tensorboard=cfg.tensorboard,
            )
        self._stopwatch = _Stopwatch()
        built = (self.diagnostics, self.evaluation, self.rollingq_callback, self._stopwatch)
        self.callbacks = Callbacks(
            *(c for c in built if c is not None), *callbacks, *([self.files] if self.files else [])
        )
        self.rows: list[dict[str, Any]] = []
        """One metrics row per finished epoch."""

    # -- public ----------------------------------------------------------------------------
    @property
    def history(self) -> History:
        """The fusion layer's attention per epoch (`attnprobe.History`; training statistics)."""
        return self.diagnostics.history if self.diagnostics else History(exclude=self.exclude)

    @property
    def last_result(self) -> ProbeResult | None:
        """The probe result of the last training epoch."""
        return self.diagnostics.result if self.diagnostics else None

    def add_callback(self, event: Event, callback: Callable[..., None]) -> None:
        """Call ``callback(trainer, batch_index, loss)`` after every step (``on_batch_end``;
        ``loss`` is the detached 0-d loss tensor, read it with ``float`` if needed) or
        ``callback(trainer, row)`` after every epoch, once its files are written
        (``on_epoch_end``)."""
        if event not in self._functions:
            raise ProbeConfigError(
                f"Trainer.add_callback: expected 'on_batch_end' or 'on_epoch_end', received "
                f"{event!r}."
            )
        self._functions[event].append(callback)

    def fit(self) -> pd.DataFrame:
        """Train for the remaining epochs; returns the metrics, one row per epoch."""
        if self.files is not None:
            state = self.files.resume() if self.resume else None
            if not self.resume:
                self.files.start_over()
            if state is not None:
                self._load(state)
        with self.callbacks.fit(self.core) as run:
            while self.epoch < self.config.epochs:
                epoch = self.epoch
                torch.manual_seed(mix(self.config.seed, epoch, self.rank))  # exact resume
                start = time.perf_counter()
                run.epoch_start(epoch)
                train = self._train_epoch(epoch, run)
                self._stopwatch.start = time.perf_counter()
                self.epoch += 1  # the checkpoint written at the epoch's end resumes after it
                row = run.epoch_end(epoch, **train, train_time_s=self._stopwatch.start - start)
                self.rows.append(row)
                for function in self._functions["on_epoch_end"]:
                    function(self, row)
        return self.metrics()

    def metrics(self) -> pd.DataFrame:
        """The metrics so far, one row per epoch."""
        return pd.DataFrame(self.rows)

    # -- one epoch ---------------------------------------------------------------------------
    def _train_epoch(self, epoch: int, run: Callbacks) -> dict[str, float]:
        cfg = self.config
        batches = list(
            shard_batches(
                self.train_data,
                epoch_order(len(self.train_data), cfg.seed, epoch),
                cfg.batch_size,
                self.device,
            )
        )
        total_steps = cfg.epochs * len(batches)
        warmup = cfg.warmup_epochs * len(batches)
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss·n, correct
        seen = 0
        self.model.train()
        for index, (inputs, target) in enumerate(self._progress(batches, epoch)):
            last_batch = index == len(batches) - 1 and index > 0
            if self.diagnostics is not None and cfg.air == "last_batch" and last_batch:
                self.diagnostics.split()  # the RollingQ AIR then reads the last batch only
            for group in self.optimizer.param_groups:
                group["lr"] = _learning_rate(cfg.lr, self.step, warmup, total_steps)
            logits, unimodal = model_outputs(call_model(self.model, inputs))
            loss = F.cross_entropy(logits, target)
            for extra in unimodal.values():
                loss = loss + cfg.unimodal_loss_weight * F.cross_entropy(extra, target)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            self.optimizer.step()
            self.step += 1
            with torch.no_grad():  # on the device: no synchronisation per step
                sums[0] += loss.double() * len(target)
                sums[1] += (logits.argmax(-1) == target).sum()
            seen += len(target)
            run.batch_end(loss)
            for function in self._functions["on_batch_end"]:
                function(self, index, loss.detach())
        totals = torch.cat([sums.cpu(), torch.tensor([float(seen)], dtype=torch.float64)])
        all_reduce_sum(totals)  # (loss·n, correct, n) over ranks
        return {
            "step": self.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": float(totals[0] / totals[2]),
            "train_accuracy": float(totals[1] / totals[2]),
        }

    def _anchor_batches(self) -> Iterable[tuple[Tensor, ...]]:
        """The frozen RollingQ anchor's pass: this rank's inputs of the training set in order."""
        order = torch.arange(len(self.train_data))
        batches = shard_batches(self.train_data, order, self.config.batch_size, self.device)
        return (inputs for inputs, _ in batches)

    def _progress(self, batches: list[Any], epoch: int) -> Any:
        if not self.config.progress or self.rank != 0:
            return batches
        from tqdm.auto import tqdm

        return tqdm(
            batches, desc=f"epoch {epoch + 1}/{self.config.epochs}", leave=False, unit="batch"
        )

    # -- checkpoints -------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        """What the checkpoint holds besides the rows (`RunFiles` adds them and the epoch)."""
        return {
            "step": self.step,
            "model": self.core.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "callbacks": self.callbacks.state_dict(),
            "config": dataclasses.asdict(self.config),
            "world_size": self.world,
        }

    def _load(self, state: Mapping[str, Any]) -> None:
        assert self.files is not None
        path = self.files.out_dir / CHECKPOINT
        try:
            self.core.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise AttnProbeError(
                f"checkpoint {path} does not fit this model ({exc}); build the model (and attach "
                "its RollingQ) as in the run that wrote it, or use another out_dir."
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.callbacks.load_state_dict(state.get("callbacks", {}))
        if self.diagnostics is not None:
            self.diagnostics.step = self.step
        saved = dict(state.get("config", {}), world_size=state.get("world_size"))
        now = dict(dataclasses.asdict(self.config), world_size=self.world)
        changed = sorted(k for k in now if k in saved and saved[k] != now[k])
        if changed and self.rank == 0:
            warnings.warn(
                f"resuming {path} with different settings {changed} (saved "
                f"{[saved[k] for k in changed]}, now {[now[k] for k in changed]}): the rest of "
                "the run will not repeat the original one.",
                AttnProbeWarning,
                stacklevel=3,
            )
        self.rows = [dict(r) for r in self.files.rows]


class _Stopwatch(Callback):
    """``diagnostics_time_s``: the time from the end of the epoch's training to this callback
    (the diagnostics, evaluation and RollingQ check before it)."""

    start = 0.0

    def on_epoch_end(self, epoch: int, row: Mapping[str, Any]) -> dict[str, Any]:
        return {"diagnostics_time_s": time.perf_counter() - self.start}


def _learning_rate(base: float, step: int, warmup: float, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at step ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1.0)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
