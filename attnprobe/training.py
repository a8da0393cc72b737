"""The training wrapper: train with a probe on the fusion layer and log the diagnostics every
epoch, run the RollingQ check at epoch end, checkpoint atomically, resume exactly, and run
under ``torchrun`` (DDP, gloo on CPU).

Read it top to bottom: `TrainConfig` (the knobs, with the reference's defaults), then
`Trainer.fit`, one epoch of which is ``_train_epoch`` (SGD steps, the probe attached, the
RollingQ AIR accumulated), ``_evaluate`` (clean and per-modality corrupted accuracy and shares,
unimodal probe accuracy), ``_rollingq`` (the epoch-end rotation check) and ``_save``
(metrics row appended and fsynced, attention history, checkpoint). Extend it with callbacks
(`Trainer.add_callback`), not by subclassing.

Training recipe (``docs/guides/training.md``, "With the training wrapper"): SGD with momentum 0.9,
weight decay 1e-4, lr 1e-3, cosine schedule after a linear warm-up of 2.5 epochs; the
schedule is a pure function of the step, and dropout is reseeded from ``(seed, epoch, rank)``
at every epoch start, so a resumed run repeats the uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import io
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import default_collate

from attnprobe._calls import call_model
from attnprobe._distributed import all_reduce_sum, rank_and_world
from attnprobe._io import load_tagged
from attnprobe.analysis.history import History
from attnprobe.callbacks import rollingq_columns
from attnprobe.corruption import corrupt
from attnprobe.errors import AttnProbeError, AttnProbeWarning, ProbeConfigError
from attnprobe.labels import ModalityLayout
from attnprobe.metrics import attention_columns, shares
from attnprobe.probe import probe
from attnprobe.results import LayerResult, ProbeResult
from attnprobe.rollingq import RollingQ, anchor_statistics
from attnprobe.runner import run_model, run_probed

__all__ = ["ATTENTION", "CHECKPOINT", "METRICS", "TrainConfig", "Trainer", "load_checkpoint"]

METRICS = "metrics.csv"
"""File name of the per-epoch metrics (one row per epoch, appended and fsynced)."""
CHECKPOINT = "checkpoint.pt"
"""File name of the checkpoint (replaced atomically every epoch)."""
ATTENTION = "attention.csv"
"""File name of the per-epoch attention history (`attnprobe.History` frame)."""
_FORMAT = "attnprobe.training/1"

Event = Literal["on_batch_end", "on_epoch_end"]


class Data(Protocol):
    """A map-style dataset: ``len(data)`` items, ``data[i] = (inputs, target)``."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


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
        self.layout = (
            None
            if modalities is None
            else modalities
            if isinstance(modalities, ModalityLayout)
            else ModalityLayout(modalities)
        )
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
        self.rows: list[dict[str, Any]] = []
        """One metrics row per finished epoch."""
        self.history = History(exclude=self.exclude)
        """The fusion layer's attention per epoch (`attnprobe.History`; training statistics)."""
        self.step = 0
        self.epoch = 0
        """The next epoch to run."""
        self.last_result: ProbeResult | None = None
        """The probe result of the last training epoch."""
        self._callbacks: dict[str, list[Callable[..., None]]] = {
            "on_batch_end": [],
            "on_epoch_end": [],
        }
        self._writer: Any = None
        self._air_stats: LayerResult | None = None
        if len(train_data) % self.world:
            raise ProbeConfigError(
                f"Trainer: {len(train_data)} training samples do not split evenly over "
                f"{self.world} ranks (every rank must run the same number of steps); use a "
                "multiple of the world size."
            )

    # -- public ----------------------------------------------------------------------------
    def add_callback(self, event: Event, callback: Callable[..., None]) -> None:
        """Call ``callback(trainer, batch_index, loss)`` after every step (``on_batch_end``;
        ``loss`` is the detached 0-d loss tensor, read it with ``float`` if needed) or
        ``callback(trainer, row)`` after every epoch, once its files are written
        (``on_epoch_end``)."""
        if event not in self._callbacks:
            raise ProbeConfigError(
                f"Trainer.add_callback: expected 'on_batch_end' or 'on_epoch_end', received "
                f"{event!r}."
            )
        self._callbacks[event].append(callback)

    def fit(self) -> pd.DataFrame:
        """Train for the remaining epochs; returns the metrics, one row per epoch."""
        if self.resume and self.out_dir is not None and (self.out_dir / CHECKPOINT).exists():
            self._load(self.out_dir / CHECKPOINT)
        elif self.out_dir is not None and self.rank == 0 and not self.rows:
            metrics = self.out_dir / METRICS
            if metrics.exists():  # rows of a run killed before its first checkpoint: start over
                _rewrite_rows(metrics, [])
        self._open_tensorboard()
        try:
            while self.epoch < self.config.epochs:
                row = self._run_epoch(self.epoch)
                self.rows.append(row)
                self.epoch += 1
                self._save(row)
                for callback in self._callbacks["on_epoch_end"]:
                    callback(self, row)
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        return self.metrics()

    def metrics(self) -> pd.DataFrame:
        """The metrics so far, one row per epoch."""
        return pd.DataFrame(self.rows)

    # -- one epoch ---------------------------------------------------------------------------
    def _run_epoch(self, epoch: int) -> dict[str, Any]:
        cfg = self.config
        torch.manual_seed(_mix(cfg.seed, epoch, self.rank))  # dropout: exact resume, per rank
        start = time.perf_counter()
        row: dict[str, Any] = {"epoch": epoch}
        stats, train = self._train_epoch(epoch)
        row.update(train)
        row["train_time_s"] = time.perf_counter() - start
        if stats is not None:
            row.update(self._attention_columns(stats))
        diagnose = time.perf_counter()
        if self.eval_data is not None and (
            (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
        ):
            row.update(self._evaluate(epoch))
        if self.rollingq is not None:
            row.update(self._rollingq(epoch))
        row["diagnostics_time_s"] = time.perf_counter() - diagnose
        return row

    def _probe(self, **options: Any) -> Any:
        """A probe on the fusion layer's query group (a no-op context without a layer)."""
        if self.layer is None or self.layout is None:
            return contextlib.nullcontext()
        return probe(
            self.core, modalities=self.layout, layers=self.layer, queries=self.query, **options
        )

    def _train_epoch(self, epoch: int) -> tuple[LayerResult | None, dict[str, float]]:
        cfg = self.config
        batches = list(
            self._batches(self.train_data, _order(len(self.train_data), cfg.seed, epoch))
        )
        total_steps = cfg.epochs * len(batches)
        warmup = cfg.warmup_epochs * len(batches)
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss·n, correct, n
        seen = 0
        self.model.train()
        earlier: ProbeResult | None = None
        with self._probe() as p:
            for index, (inputs, target) in enumerate(self._progress(batches, epoch)):
                last_batch = index == len(batches) - 1 and index > 0
                if p is not None and cfg.air == "last_batch" and last_batch:
                    p.sync()
                    earlier = p.result()  # the epoch so far; the AIR then reads the last batch
                    p.reset()
                for group in self.optimizer.param_groups:
                    group["lr"] = _learning_rate(cfg.lr, self.step, warmup, total_steps)
                logits, unimodal = _outputs(call_model(self.model, inputs))
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
                for callback in self._callbacks["on_batch_end"]:
                    callback(self, index, loss.detach())
            if p is not None:
                p.sync()
                last = p.result()
        sums = sums.cpu()
        sums[2] = seen
        all_reduce_sum(sums)
        stats = None
        if p is not None:
            result = last if earlier is None else earlier.merge(last)
            self.last_result = result
            self.history.add(result, epoch=epoch, step=self.step)
            self._air_stats = last.layers[0] if earlier is not None else result.layers[0]
            stats = result.layers[0]
        return stats, {
            "step": self.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": float(sums[0] / sums[2]),
            "train_accuracy": float(sums[1] / sums[2]),
        }

    def _shares(self, stats: LayerResult) -> dict[str, float]:
        """Share of the CLS query's attention per modality (excluded groups left out), mean
        over heads (`attnprobe.metrics.shares`)."""
        share = shares(stats, self.query, self.modalities).mean(0)  # (H, M) -> (M,)
        return {m: float(share[i]) for i, m in enumerate(self.modalities)}

    def _attention_columns(self, stats: LayerResult) -> dict[str, float]:
        """Share per modality, AIR and key gap (`attnprobe.metrics.attention_columns`)."""
        return attention_columns(stats, self.query, self.modalities)

    def _evaluate(self, epoch: int) -> dict[str, float]:
        """Accuracy and CLS shares on the evaluation set, clean and with each input modality
        corrupted at ``corruption_level`` (noise fixed per sample), and unimodal probe
        accuracy on the clean set (each condition one `attnprobe.runner.run_probed` pass)."""
        assert self.eval_data is not None

        row: dict[str, float] = {}
        clean_share: dict[str, float] = {}
        for condition in ("clean", *self.inputs):
            condition_share: dict[str, float] = {}
            order = torch.arange(len(self.eval_data))
            batches = self._batches(self.eval_data, order, with_indices=True)
            count = functools.partial(self._eval_counts, condition)
            if self.layer is None or self.layout is None:
                outputs = run_model(self.core, batches, call=count)
            else:
                run = run_probed(
                    self.core,
                    batches,
                    call=count,
                    modalities=self.layout,
                    layers=self.layer,
                    queries=self.query,
                    key_stats=False,
                )
                outputs = run.outputs
                condition_share = self._shares(run.result.layers[0])
            sums: dict[str, Tensor] = {}
            for counts in outputs:
                for key, value in counts.items():
                    sums[key] = sums.get(key, torch.zeros((), dtype=torch.float64)) + value
            names = sorted(sums)
            flat = torch.stack([sums[k].double().cpu() for k in names])  # (K,)
            all_reduce_sum(flat)
            total = dict(zip(names, flat.tolist(), strict=True))
            if condition == "clean":
                row["eval_accuracy"] = total["fused"] / total["n"]
                for m in self.inputs:
                    key = f"unimodal_{m}"
                    if key in total:
                        row[f"unimodal_accuracy_{m}"] = total[key] / total["n"]
                for m, value in condition_share.items():
                    row[f"eval_share_{m}"] = value
                clean_share = condition_share
            else:
                row[f"eval_accuracy_{condition}_corrupted"] = total["fused"] / total["n"]
                for m, value in condition_share.items():
                    row[f"eval_share_{m}_{condition}_corrupted"] = value
                if condition in clean_share:
                    delta = clean_share[condition] - condition_share[condition]
                    row[f"delta_share_{condition}"] = delta
        return row

    def _eval_counts(self, condition: str, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        """One evaluation batch (``(indices, (inputs, target))``) under ``condition`` (``"clean"``
        or the corrupted input modality): correct predictions of the fused head (and, clean,
        of the unimodal heads) and the number of samples ``n``."""
        indices, (inputs, target) = batch
        if condition != "clean":
            inputs = self._corrupt(inputs, condition, indices)
        logits, unimodal = _outputs(call_model(model, inputs))
        counts = {"fused": (logits.argmax(-1) == target).sum()}
        if condition == "clean":
            for m, extra in unimodal.items():
                counts[f"unimodal_{m}"] = (extra.argmax(-1) == target).sum()
        counts["n"] = torch.tensor(len(target))
        return counts

    def _corrupt(
        self, inputs: tuple[Tensor, ...], modality: str, indices: Tensor
    ) -> tuple[Tensor, ...]:
        """Corrupt one input with noise drawn per sample from ``(seed, sample, modality)``, so
        the corrupted set is the same every epoch and on any number of ranks."""
        position = self.inputs.index(modality)
        x = inputs[position]
        rows = []
        for j, index in enumerate(indices.tolist()):
            g = torch.Generator().manual_seed(_mix(self.config.seed, index, position + 1))
            rows.append(corrupt(x[j : j + 1], self.config.corruption_level, g))
        changed = list(inputs)
        changed[position] = torch.cat(rows)  # (B, ...)
        return tuple(changed)

    def _rollingq(self, epoch: int) -> dict[str, Any]:
        """The RollingQ check; with the frozen anchor, also how far the running-statistics
        anchor would have rotated the query from where the frozen one puts it."""
        assert self.rollingq is not None and self._air_stats is not None
        assert self.layout is not None and self.layer is not None
        rq, cfg = self.rollingq, self.config

        def frozen() -> LayerResult:
            assert self.layout is not None and self.layer is not None
            order = torch.arange(len(self.train_data))
            return anchor_statistics(
                self.core,
                (inputs for inputs, _ in self._batches(self.train_data, order)),
                modalities=self.layout,
                layer=self.layer,
                query=self.query,
            )

        return rollingq_columns(
            rq, self._air_stats, epoch, frozen if cfg.anchor == "frozen" else None
        )

    # -- data --------------------------------------------------------------------------------
    def _batches(self, data: Any, order: Tensor, *, with_indices: bool = False) -> Iterator[Any]:
        """This rank's batches over ``order``: global batch ``k`` is
        ``order[k·B·W : (k+1)·B·W]`` and rank ``r`` takes every ``W``-th index of it from ``r``
        — so the ranks' batches together are exactly one process's batch of ``B·W``."""
        size = self.config.batch_size * self.world
        for begin in range(0, len(order), size):
            chunk = order[begin : begin + size][self.rank :: self.world]
            if len(chunk) == 0:
                continue
            inputs, target = _collate([data[int(i)] for i in chunk])
            inputs = tuple(x.to(self.device) for x in inputs)
            target = target.to(self.device)
            yield (chunk, (inputs, target)) if with_indices else (inputs, target)

    def _progress(self, batches: list[Any], epoch: int) -> Any:
        if not self.config.progress or self.rank != 0:
            return batches
        from tqdm.auto import tqdm

        return tqdm(
            batches, desc=f"epoch {epoch + 1}/{self.config.epochs}", leave=False, unit="batch"
        )

    # -- files -------------------------------------------------------------------------------
    def _save(self, row: dict[str, Any]) -> None:
        """Append the row to the metrics file (fsynced; rewritten atomically when the row brings
        new columns), save the attention history, then replace the checkpoint atomically (rank
        0; the other ranks wait)."""
        if self.out_dir is not None and self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            _write_metrics(self.out_dir / METRICS, self.rows)
            self.history.save(self.out_dir / ATTENTION)
            state = {
                "format": _FORMAT,
                "epoch": self.epoch,
                "step": self.step,
                "model": self.core.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "rows": [dict(r) for r in self.rows],
                "config": dataclasses.asdict(self.config),
                "world_size": self.world,
            }
            _atomic_save(state, self.out_dir / CHECKPOINT)
            if self._writer is not None:
                for key, value in row.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        self._writer.add_scalar(key, value, global_step=row["epoch"])
                self._writer.flush()
        if self.world > 1:
            dist.barrier()

    def _load(self, path: Path) -> None:
        state = load_checkpoint(path)
        try:
            self.core.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise AttnProbeError(
                f"checkpoint {path} does not fit this model ({exc}); build the model (and attach "
                "its RollingQ) as in the run that wrote it, or use another out_dir."
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
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
        self.rows = [dict(r) for r in state["rows"]]
        if self.out_dir is not None and self.rank == 0:
            _rewrite_rows(self.out_dir / METRICS, self.rows)  # drop rows of the lost epoch
            attention = self.out_dir / ATTENTION
            if attention.exists():
                self.history = History.load(attention, exclude=self.exclude).before(self.epoch)
        if self.world > 1:
            dist.barrier()

    def _open_tensorboard(self) -> None:
        wanted = self.config.tensorboard
        if wanted is False or self.out_dir is None or self.rank != 0:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if wanted:
                raise ProbeConfigError(
                    "TrainConfig(tensorboard=True) needs the tensorboard package: pip install "
                    "tensorboard (or attnprobe[tensorboard])."
                ) from None
            return
        # purge_step drops events a killed run wrote after its last checkpoint
        self._writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=self.epoch)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint, loaded with ``torch.load(weights_only=True)`` (no arbitrary
    unpickling); a foreign or corrupt file raises `AttnProbeError` saying so."""
    return load_tagged(
        path,
        _FORMAT,
        "an attnprobe training checkpoint",
        "delete it or choose another out_dir",
    )


# -- helpers ---------------------------------------------------------------------------------
def _mix(*values: int) -> int:
    """A 63-bit seed from several integers (stable across runs and platforms)."""
    seed = 0x9E3779B97F4A7C15
    for value in values:
        seed = (seed ^ (value + 0x9E3779B97F4A7C15 + (seed << 6) + (seed >> 2))) & (2**63 - 1)
    return seed


def _order(n: int, seed: int, epoch: int) -> Tensor:
    """The epoch's sample order: a permutation seeded by ``(seed, epoch)`` only."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(_mix(seed, epoch)))


def _learning_rate(base: float, step: int, warmup: float, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at step ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1.0)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _collate(items: list[Any]) -> tuple[tuple[Tensor, ...], Tensor]:
    try:
        inputs, target = default_collate(items)
        target = torch.as_tensor(target)
        if target.dim() != 1 or target.is_floating_point():
            raise TypeError(f"targets of shape {tuple(target.shape)} and dtype {target.dtype}")
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ProbeConfigError(
            "Trainer: expected dataset items (inputs, target) with inputs a tuple of tensors "
            f"(one per modality) and target a class index; collating failed: {exc}"
        ) from None
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    return tuple(inputs), target


def _outputs(output: Any) -> tuple[Tensor, Mapping[str, Tensor]]:
    if isinstance(output, Tensor):
        return output, {}
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits, getattr(output, "unimodal_logits", None) or {}
    raise ProbeConfigError(
        f"Trainer: expected the model to return logits or an object with .logits, received "
        f"{type(output).__name__}."
    )


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every key of ``rows``, in order of first appearance."""
    return list(dict.fromkeys(key for row in rows for key in row))


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append the last row and fsync; when it brings new columns (the first evaluation epoch
    with ``eval_every > 1``), rewrite the file atomically with every column instead, so the
    CSV always has one header for all rows (empty cells where a row has no value)."""
    columns = _columns(rows)
    header = None
    if path.exists() and path.stat().st_size > 0:
        with open(path, newline="") as handle:
            header = next(csv.reader(handle), None)
    if header != columns:
        _rewrite_rows(path, rows)
        return
    with open(path, "a", newline="") as handle:
        csv.DictWriter(handle, fieldnames=columns, restval="").writerow(rows[-1])
        handle.flush()
        os.fsync(handle.fileno())


def _rewrite_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace the metrics file by exactly ``rows`` (atomically)."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=_columns(rows), restval="")
        writer.writeheader()
        writer.writerows(rows)
    _atomic_write(path, buffer.getvalue().encode())


def _atomic_save(state: dict[str, Any], path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    _atomic_write(path, buffer.getvalue())


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file, fsync, and rename over ``path``: readers see the old file
    or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
