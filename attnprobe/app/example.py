"""The bundled RollingQ example: vanilla attention fusion, the same with RollingQ, and the
concatenation baseline, trained over several seeds on bundled data, compared with paired
statistics (``attnprobe example rollingq``; the method: ``docs/concepts/rollingq.md``, the
data: ``docs/guides/datasets.md``, the measures: ``docs/concepts/adaptability.md``).

Two regimes (``--regime``): ``scratch``, every model trained from random weights; ``finetune``,
the paper's, each encoder first trained alone with a head of its own (once per seed, shared by
every method), then the whole model fine-tuned at a low learning rate.

`run` trains and evaluates, one run folder per (method, seed); `report` rebuilds every table
and figure from the files alone. The report is the run report of `attnprobe.app.report`
(`write_report`: per-run table, summary over seeds, ``summary.md``, training figures) with
what only the example has: its per-run numbers from the test-set noise sweeps, its paired tests
(``paired.csv``) and its figures of the sweep and of the fusion keys. Layout of an example
folder::

    config.json                      the settings (a rerun with other settings is refused)
    pretrained/seed<k>.pt            finetune regime: the pre-trained encoders of seed k
    pretrained/seed<k>-<modality>/   their pre-training runs (metrics.csv, checkpoint.pt)
    runs/<method>-seed<k>/
        metrics.csv, attention.csv, checkpoint.pt    the training wrapper's files
        best.pt                      the weights of the validation-selected epoch
        sweep.csv                    accuracy and attention share per corrupted modality, noise
                                     level, protocol (mix, add) and checkpoint (last, selected)
                                     on the test split
        adaptability.csv             attention–quality correlations and ΔM (attention runs)
        unimodal.csv                 each encoder's probe-head accuracy on the clean test split
        keys_*.pt                    fusion-layer probe results for the key-distribution figure
        done.json                    written last: the run is complete
    runs.csv                         one row of final numbers per run
    summary.csv, paired.csv, summary.md   mean ± std per method; paired differences and tests
    figures/*.png

Protocol: the test split is never used for training or selection; the numbers are those of the
last epoch's model, and, marked as such, of the epoch with the best validation accuracy.
Corrupted test sets are drawn once per (seed, modality, level, protocol) and shared by every
method, so the comparisons are paired sample by sample. The paper's headline test is the
mixing protocol at λ = 1: the modality replaced by pure Gaussian noise at its input's scale.
RollingQ runs with the reference's defaults (β = 0, ρ = 0, one rotation after the first
epoch), and once more gated by the imbalance (β = 0.5, up to three rotations), the same on
every dataset and regime: nothing is tuned per dataset.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from torch import Tensor, nn

import attnprobe as ap
from attnprobe import AttnProbeError, plot
from attnprobe.app.figures import TRAINING_FIGURES, Job, Style, facets, one_legend, save
from attnprobe.app.report import RunReport, markdown_table, write_report
from attnprobe.app.runs import Run, air_columns, key_gap_columns, read_csv, read_metrics, stack
from attnprobe.corruption import PROTOCOLS, Protocol
from attnprobe.datasets import MultimodalDataset, SyntheticConfig, mfeat, synthetic
from attnprobe.models import ConcatFusion, LateFusionTransformer
from attnprobe.runner import run_model, run_probed
from attnprobe.training import TrainConfig, Trainer

__all__ = [
    "DATASETS",
    "FIGURES",
    "METHODS",
    "REGIMES",
    "ExampleConfig",
    "is_example_folder",
    "rebuild",
    "report",
    "run",
]

METHODS = ("vanilla", "rollingq", "rollingq_gated", "concat")
"""Vanilla MT (fusion attention); + RollingQ with the reference's defaults (β = 0, one
rotation after the first epoch); + RollingQ gated by the imbalance (β = 0.5, up to three
rotations: it waits until ``|AIR| ≥ β``); and the static concatenation."""
DATASETS = ("synthetic", "mfeat")
REGIMES = ("scratch", "finetune")
_ATTENTION = ("vanilla", "rollingq", "rollingq_gated")
_LABELS = {
    "vanilla": "Vanilla MT",
    "rollingq": "MT + RollingQ",
    "rollingq_gated": "MT + RollingQ (β=0.5, ≤3)",
    "concat": "Concat",
}
_DONE = "done.json"
_BEST = "best.pt"
FIGURES = (
    *TRAINING_FIGURES,
    "key_distribution.png",
    "share_vs_noise.png",
    "accuracy_vs_noise.png",
)
"""The figures of an example folder, in the order they are drawn: the run report's training
figures, then the fusion keys around the first rotation and the test-set noise sweep."""


@dataclass(frozen=True)
class ExampleConfig:
    """Settings of the example (defaults: the full run; `quick` gives the smoke-test ones)."""

    dataset: str = "synthetic"
    """``"synthetic"`` (`attnprobe.datasets.synthetic`) or ``"mfeat"`` (UCI Multiple
    Features, six views)."""
    seeds: int = 5
    epochs: int = 30
    train_samples: int | None = None
    """Synthetic only: training samples (default `SyntheticConfig`'s 4000)."""
    dim: int = 32
    depth: int = 1
    heads: int = 2
    batch_size: int = 64
    lr: float = 0.05
    optimizer: str = "sgd"
    levels: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    """Noise levels ``λ`` of the test-set sweep."""
    methods: tuple[str, ...] = METHODS
    gated_beta: float = 0.5
    """β of ``rollingq_gated`` (rotate only when ``|AIR| ≥ β``)."""
    gated_rotations: int = 3
    """``max_rotations`` of ``rollingq_gated``."""
    regime: str = "scratch"
    """``"scratch"``: every model trained from random weights at ``lr``. ``"finetune"`` (the
    paper's regime): each encoder first trained alone with a head of its own
    (``pretrain_epochs`` at ``lr``, once per seed, shared by every method), then the whole
    model fine-tuned at ``finetune_lr`` for ``epochs``; the rest of the recipe is the same."""
    pretrain_epochs: int = 15
    """Finetune regime: epochs of each encoder's unimodal pre-training."""
    finetune_lr: float = 5e-3
    """Finetune regime: learning rate of the fine-tuning."""
    protocols: tuple[str, ...] = ("mix", "add")
    """Corruptions of the test-set sweep: ``"mix"``, ``x̃ = (1 − λ)x + λ·ε·σ_x`` (the paper's;
    at λ = 1 the modality is pure noise at its input's scale), and ``"add"``,
    ``x̃ = x + λ·ε·σ_x`` (`attnprobe.corruption.corrupt`)."""
    eval_samples: int | None = None
    """Synthetic only: validation and test samples (default `SyntheticConfig`'s)."""
    eval_every: int | None = None
    """Validation every this many epochs (default ``epochs // 10``, at least 1)."""

    @classmethod
    def quick(
        cls, dataset: str = "synthetic", seeds: int = 2, regime: str = "scratch"
    ) -> ExampleConfig:
        """A smoke run (under a minute on 2 CPU cores for the synthetic data): fewer training,
        validation and test samples (synthetic only), epochs and seeds."""
        return cls(
            dataset=dataset,
            seeds=seeds,
            epochs=6,
            train_samples=768,
            eval_samples=512,
            eval_every=2,
            regime=regime,
            pretrain_epochs=3,
            levels=(0.0, 0.5, 1.0),
        )

    @property
    def train_lr(self) -> float:
        """The learning rate of the fusion models' training (``finetune_lr`` when
        fine-tuning)."""
        return self.finetune_lr if self.regime == "finetune" else self.lr

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise AttnProbeError(
                f"example rollingq: expected a dataset in {list(DATASETS)}, received "
                f"{self.dataset!r}."
            )
        if self.seeds < 1 or self.epochs < 1:
            raise AttnProbeError(
                f"example rollingq: expected seeds >= 1 and epochs >= 1, received seeds="
                f"{self.seeds}, epochs={self.epochs}."
            )
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise AttnProbeError(
                f"example rollingq: expected methods from {list(METHODS)}, received "
                f"{list(self.methods)}."
            )
        if self.regime not in REGIMES:
            raise AttnProbeError(
                f"example rollingq: expected a regime in {list(REGIMES)}, received {self.regime!r}."
            )
        if not self.protocols or any(p not in PROTOCOLS for p in self.protocols):
            raise AttnProbeError(
                f"example rollingq: expected protocols from {list(PROTOCOLS)}, received "
                f"{list(self.protocols)}."
            )
        if 0.0 not in self.levels or any(not 0.0 <= x <= 1.0 for x in self.levels):
            raise AttnProbeError(
                f"example rollingq: expected noise levels in [0, 1] including 0, received "
                f"{list(self.levels)}."
            )


# -- data and models --------------------------------------------------------------------------
Splits = tuple[MultimodalDataset, MultimodalDataset, MultimodalDataset]


def _splits(cfg: ExampleConfig, seed: int) -> Splits:
    """Train, validation and test splits of seed ``seed``."""
    if cfg.dataset == "synthetic":
        data = SyntheticConfig()
        train, val, test = data.sizes
        if cfg.train_samples is not None:
            train = cfg.train_samples
        if cfg.eval_samples is not None:
            val = test = cfg.eval_samples
        data = dataclasses.replace(data, sizes=(train, val, test))
        return (
            synthetic("train", seed=seed, config=data),
            synthetic("val", seed=seed, config=data),
            synthetic("test", seed=seed, config=data),
        )
    return mfeat("train", seed=seed), mfeat("val", seed=seed), mfeat("test", seed=seed)


def _model(
    cfg: ExampleConfig,
    method: str,
    data: MultimodalDataset,
    seed: int,
    encoders: Mapping[str, Mapping[str, Tensor]] | None = None,
) -> nn.Module:
    """The model of ``method``; ``encoders``: pre-trained encoder weights per modality."""
    torch.manual_seed(seed)  # same seed: same encoder weights for every method
    kind = ConcatFusion if method == "concat" else LateFusionTransformer
    model = kind(
        data.input_dims,
        data.lengths,
        data.num_classes,
        dim=cfg.dim,
        depth=cfg.depth,
        heads=cfg.heads,
        unimodal_heads=True,
    )
    for m, state in (encoders or {}).items():
        model.encoders[m].load_state_dict(state)
    return model


class _Unimodal(nn.Module):
    """One modality's encoder with a linear head on its CLS output (pre-training)."""

    def __init__(self, modality: str, encoder: nn.Module, dim: int, num_classes: int) -> None:
        super().__init__()
        self.modalities = (modality,)
        self.encoder = encoder
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.head(self.encoder(x)[:, 0])  # (B, classes) from the CLS row
        return logits


def _only(data: MultimodalDataset, modality: str) -> MultimodalDataset:
    return MultimodalDataset(
        f"{data.name}[{modality}]",
        {modality: data.inputs[modality]},
        data.targets,
        data.num_classes,
        {modality: data.quality[modality]},
    )


def _pretrained(
    cfg: ExampleConfig, seed: int, splits: Splits, out: Path, device: str, progress: bool
) -> dict[str, dict[str, Tensor]] | None:
    """Finetune regime: each encoder of seed ``seed`` trained alone with its own head
    (``pretrain_epochs`` at ``lr``, the rest of the recipe unchanged), made once per seed and
    shared by every method (``pretrained/seed<k>.pt``; a killed pre-training resumes)."""
    if cfg.regime != "finetune":
        return None
    path = out / "pretrained" / f"seed{seed}.pt"
    if path.exists():
        return dict(torch.load(path, weights_only=True))
    train, val, _ = splits
    states = {}
    for m in train.modalities:
        fresh = cast(nn.ModuleDict, _model(cfg, "vanilla", train, seed).encoders)
        encoder = fresh[m]  # the initial weights every method starts from
        torch.manual_seed(seed)
        model = _Unimodal(m, encoder, cfg.dim, train.num_classes).to(device)
        Trainer(
            model,
            _only(train, m),
            modalities=None,
            layer=None,
            eval_data=_only(val, m),
            out_dir=out / "pretrained" / f"seed{seed}-{m}",
            config=_recipe(cfg, seed, cfg.pretrain_epochs, cfg.lr, cfg.pretrain_epochs, progress),
        ).fit()
        states[m] = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    partial = path.with_suffix(".tmp")
    torch.save(states, partial)
    partial.replace(path)  # atomic: a killed run never leaves half a file
    return states


def _corrupted_sets(
    test: MultimodalDataset, levels: Sequence[float], seed: int, protocol: Protocol
) -> dict[tuple[str, float], MultimodalDataset]:
    """The test split with one modality corrupted at each level, drawn once for all methods."""
    offset = 0 if protocol == "mix" else 500_009  # other noise for the other protocol
    sets = {}
    for k, m in enumerate(test.modalities):
        for j, level in enumerate(levels):
            sets[(m, level)] = (
                test
                if level == 0
                else test.corrupted(
                    m, level, seed=seed * 1009 + 31 * k + j + offset, protocol=protocol
                )
            )
    return sets


# -- one run ---------------------------------------------------------------------------------
def _key_result(model: nn.Module, data: MultimodalDataset, limit: int = 1024) -> ap.ProbeResult:
    """Fusion-layer statistics with a key reservoir, model frozen (for the key picture)."""
    device = next(model.parameters()).device
    batches = [
        tuple(x.to(device) for x in inputs)
        for inputs, _ in data.subset(range(min(limit, len(data)))).batches(256)
    ]
    layout = model.fusion_layout()  # type: ignore[operator]
    return run_probed(
        model, batches, modalities=layout, layers="fusion", reservoir_size=256, sync=False
    ).result


def _sweep(
    model: nn.Module,
    method: str,
    sets: dict[tuple[str, float], MultimodalDataset],
    modalities: Sequence[str],
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Accuracy and attention share on every corrupted test set; adaptability scores."""
    levels = sorted({level for _, level in sets})
    device = next(model.parameters()).device
    if method in _ATTENTION:
        batches = list(range(0, len(sets[(modalities[0], 0.0)]), 256))

        def prepare(start: int, m: str | None, level: float, _: Any) -> tuple[Any, Tensor]:
            data = sets[(m or modalities[0], level)]
            part = slice(start, start + 256)
            inputs = tuple(x[part].to(device) for x in data.inputs.values())
            return inputs, data.targets[part].to(device)

        result = ap.noise_sweep(
            model,
            batches,
            prepare,
            modalities=model.fusion_layout(),  # type: ignore[operator]
            corrupted=list(modalities),
            layer="fusion",
            levels=levels,
            logits=lambda output: output.logits,
        )
        return result.to_frame(), result.adaptability()

    def correct(model: nn.Module, batch: tuple[tuple[Tensor, ...], Tensor]) -> Tensor:
        inputs, y = batch
        logits = model(*(x.to(device) for x in inputs)).logits
        hits: Tensor = (logits.argmax(-1) == y.to(device)).double().sum()
        return hits

    rows = []
    for (m, level), data in sets.items():
        hits = run_model(model, data.batches(256), call=correct)
        rows.append((m, level, float(sum(hits) / len(data))))
    return pd.DataFrame(rows, columns=["corrupted", "level", "accuracy"]), None


def _unimodal_accuracy(model: nn.Module, data: MultimodalDataset) -> dict[str, float]:
    """Clean test accuracy of each encoder's detached probe head (does a method train the
    under-attended encoder more?)."""
    device = next(model.parameters()).device

    def correct(model: nn.Module, batch: tuple[tuple[Tensor, ...], Tensor]) -> Tensor:
        inputs, y = batch
        heads = model(*(x.to(device) for x in inputs)).unimodal_logits
        return torch.stack([(h.argmax(-1) == y.to(device)).double().sum() for h in heads.values()])

    hits = sum(run_model(model, data.batches(256), call=correct))
    return {m: float(h) / len(data) for m, h in zip(data.modalities, hits, strict=True)}


def _evaluate(
    cfg: ExampleConfig, model: nn.Module, method: str, test: MultimodalDataset, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame | None, dict[str, float]]:
    """The sweep of every protocol (a ``protocol`` column), adaptability scores and unimodal
    accuracies of one model on the test split."""
    sweeps, scores = [], []
    for protocol in cfg.protocols:
        sets = _corrupted_sets(test, cfg.levels, seed, protocol)  # type: ignore[arg-type]
        sweep, score = _sweep(model, method, sets, test.modalities)
        sweeps.append(sweep.assign(protocol=protocol))
        if score is not None:
            scores.append(score.assign(protocol=protocol))
    adaptability = pd.concat(scores, ignore_index=True) if scores else None
    return pd.concat(sweeps, ignore_index=True), adaptability, _unimodal_accuracy(model, test)


def _train_one(
    cfg: ExampleConfig,
    method: str,
    seed: int,
    folder: Path,
    splits: Splits,
    encoders: Mapping[str, Mapping[str, Tensor]] | None,
    device: str,
    progress: bool,
) -> None:
    train, val, test = splits
    model = _model(cfg, method, train, seed, encoders).to(device)
    rq = None
    if method.startswith("rollingq"):
        gated = method == "rollingq_gated"  # else the reference's defaults: β = 0, one rotation
        rq = ap.RollingQ(
            cfg.dim,
            modalities=train.modalities,
            beta=cfg.gated_beta if gated else 0.0,
            max_rotations=cfg.gated_rotations if gated else 1,
        ).attach(model, "fusion")
    attention = method in _ATTENTION
    trainer = Trainer(
        model,
        train,
        modalities=model.fusion_layout() if attention else None,  # type: ignore[operator]
        layer="fusion" if attention else None,
        eval_data=val,
        rollingq=rq,
        out_dir=folder,
        config=_recipe(cfg, seed, cfg.epochs, cfg.train_lr, _eval_every(cfg), progress),
    )
    if rq is not None:
        _watch_rotation(trainer, rq, train, folder)
    _keep_best(trainer, model, folder)
    start = time.perf_counter()
    metrics = trainer.fit()
    seconds = time.perf_counter() - start
    best = torch.load(folder / _BEST, weights_only=True)
    sweeps, scores, unimodal = [], [], []
    for checkpoint in ("last", "selected"):
        if checkpoint == "selected":
            model.load_state_dict(best["model"])  # the validation-selected weights
        sweep, score, heads = _evaluate(cfg, model, method, test, seed)
        sweeps.append(sweep.assign(checkpoint=checkpoint))
        if score is not None:
            scores.append(score.assign(checkpoint=checkpoint))
        unimodal += [
            {"checkpoint": checkpoint, "modality": m, "accuracy": a} for m, a in heads.items()
        ]
        if checkpoint == "last" and attention:
            _key_result(model, test).save(folder / "keys_final.pt")
    pd.concat(sweeps, ignore_index=True).to_csv(folder / "sweep.csv", index=False)
    if scores:
        pd.concat(scores, ignore_index=True).to_csv(folder / "adaptability.csv", index=False)
    pd.DataFrame(unimodal).to_csv(folder / "unimodal.csv", index=False)
    done = {
        "method": method,
        "seed": seed,
        "epochs": len(metrics),
        "selected_epoch": int(best["epoch"]),
        "train_seconds": seconds,
    }
    (folder / _DONE).write_text(json.dumps(done, indent=1))


def _recipe(
    cfg: ExampleConfig, seed: int, epochs: int, lr: float, eval_every: int, progress: bool
) -> TrainConfig:
    """The example's training recipe (SGD, warm-up then cosine, no TensorBoard) for ``epochs``
    at ``lr``."""
    return TrainConfig(
        epochs=epochs,
        batch_size=cfg.batch_size,
        lr=lr,
        optimizer=cfg.optimizer,  # type: ignore[arg-type]
        seed=seed,
        eval_every=eval_every,
        progress=progress,
        tensorboard=False,
    )


def _eval_every(cfg: ExampleConfig) -> int:
    return cfg.eval_every or max(1, cfg.epochs // 10)


def _keep_best(trainer: Trainer, model: nn.Module, folder: Path) -> None:
    """After every validated epoch with the best validation accuracy so far, save the weights
    (``best.pt``, atomically; kept across a resume): the validation-selected model."""
    path = folder / _BEST
    best = float(torch.load(path, weights_only=True)["accuracy"]) if path.exists() else -1.0

    def on_epoch_end(_: Trainer, row: dict[str, Any]) -> None:
        nonlocal best
        accuracy = row.get("eval_accuracy")
        if accuracy is None or not math.isfinite(float(accuracy)) or float(accuracy) <= best:
            return
        best = float(accuracy)
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        partial = path.with_suffix(".tmp")
        torch.save({"model": state, "epoch": int(row["epoch"]), "accuracy": best}, partial)
        partial.replace(path)

    trainer.add_callback("on_epoch_end", on_epoch_end)


def _watch_rotation(
    trainer: Trainer, rq: ap.RollingQ, train: MultimodalDataset, folder: Path
) -> None:
    """At the epoch of the first rotation, save the fusion-layer statistics on training
    samples with the query before (``keys_before.pt``) and after (``keys_after.pt``) it."""
    before = rq.rotation.detach().clone()

    def on_epoch_end(_: Trainer, row: dict[str, Any]) -> None:
        nonlocal before
        if row.get("rollingq_rotated") and not (folder / "keys_before.pt").exists():
            model = trainer.core
            _key_result(model, train).save(folder / "keys_after.pt")
            after = rq.rotation.detach().clone()
            try:
                with torch.no_grad():
                    rq.rotation.copy_(before)
                _key_result(model, train).save(folder / "keys_before.pt")
            finally:
                with torch.no_grad():
                    rq.rotation.copy_(after)
        before = rq.rotation.detach().clone()

    trainer.add_callback("on_epoch_end", on_epoch_end)


def run(
    out_dir: str | Path,
    config: ExampleConfig | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    device: str = "cpu",
    threads: int | None = None,
) -> Path:
    """Train every (method, seed) of the example into ``out_dir`` and write the report.

    Finished runs are skipped and a killed run resumes from its last epoch, so rerunning the
    same command completes an interrupted example; a folder written with other settings is
    refused.

    Args:
        out_dir: the example folder.
        config: the settings (`ExampleConfig`; `ExampleConfig.quick` for a smoke run).
        progress: show progress bars.
        log: where a line naming each run goes as it starts, with the time spent and an
            estimate of the time left (``print`` on the command line; default: nowhere).
        device: where the models train (``"cpu"``, ``"cuda"``).
        threads: CPU threads of torch during the run (restored afterwards); None: 1 for models
            of width 64 or less (a tiny model gains nothing from more: the threads only
            synchronise, and on a busy machine they fight over the cores), else torch's
            default.

    Returns:
        ``out_dir``.
    """
    cfg = config or ExampleConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = json.loads(json.dumps(dataclasses.asdict(cfg)))
    saved_path = out / "config.json"
    if saved_path.exists():
        saved = json.loads(saved_path.read_text())
        if saved != settings:
            changed = sorted(k for k in settings if saved.get(k) != settings[k])
            raise AttnProbeError(
                f"{out} holds an example run with other settings ({', '.join(changed)}); "
                "choose another --out, or delete the folder to start again."
            )
    else:
        saved_path.write_text(json.dumps(settings, indent=1))
    before = torch.get_num_threads()
    torch.set_num_threads(threads or (1 if cfg.dim <= 64 else before))
    try:
        _run_jobs(cfg, out, progress, log, device)
    finally:
        torch.set_num_threads(before)
    report(out)
    return out


def _run_jobs(
    cfg: ExampleConfig,
    out: Path,
    progress: bool,
    log: Callable[[str], None] | None,
    device: str,
) -> None:
    jobs = [(m, s) for s in range(cfg.seeds) for m in cfg.methods]
    todo = [(m, s) for m, s in jobs if not (out / "runs" / f"{m}-seed{s}" / _DONE).exists()]
    start, done = time.perf_counter(), 0
    for index, (method, seed) in enumerate(jobs):
        folder = out / "runs" / f"{method}-seed{seed}"
        if (folder / _DONE).exists():
            continue
        if log is not None:
            elapsed = time.perf_counter() - start
            left = f", about {_clock(elapsed / done * (len(todo) - done))} left" if done else ""
            log(
                f"[{index + 1}/{len(jobs)}] {cfg.dataset} ({cfg.regime}): {_LABELS[method]}, "
                f"seed {seed} ({_clock(elapsed)} so far{left})"
            )
        splits = _splits(cfg, seed)
        encoders = _pretrained(cfg, seed, splits, out, device, progress)
        folder.mkdir(parents=True, exist_ok=True)
        _train_one(cfg, method, seed, folder, splits, encoders, device, progress)
        done += 1
    if log is not None and todo:
        log(f"{len(todo)} runs in {_clock(time.perf_counter() - start)}")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


# -- the report: the run report (attnprobe.app.report) and what only the example has ------------
def is_example_folder(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` looks like a folder `run` wrote (``config.json`` and ``runs/``)."""
    run_dir = Path(run_dir)
    return (run_dir / "config.json").is_file() and (run_dir / "runs").is_dir()


def report(
    run_dir: str | Path, out: str | Path | None = None, *, progress: bool = False
) -> pd.DataFrame:
    """Rebuild the tables and figures of an example folder from its files (`rebuild`, which
    takes the same arguments); returns the summary (one row per method and metric:
    ``mean``, ``std``, ``num_seeds``)."""
    return rebuild(run_dir, out, progress=progress).summary


def rebuild(
    run_dir: str | Path, out: str | Path | None = None, *, progress: bool = False
) -> RunReport:
    """Rebuild ``runs.csv``, ``summary.csv``, ``paired.csv``, ``summary.md`` and the figures
    of an example folder from its files: the run report (`attnprobe.app.report.write_report`)
    with the example's per-run numbers, paired tests and figures. ``attnprobe report`` calls
    it on an example folder.

    Args:
        run_dir: the folder `run` wrote.
        out: where the tables and ``figures/`` go (default: ``run_dir`` itself).
        progress: a progress bar over the figures.

    Returns:
        An `attnprobe.app.report.RunReport` of kind ``"example"``.

    Raises:
        AttnProbeError: ``run_dir`` is not an example folder, holds no finished run, or a run
            file is corrupt.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AttnProbeError(f"{run_dir} is not a folder; expected an example run folder.")
    found = list(_finished_runs(run_dir))
    if not found:
        raise AttnProbeError(f"{run_dir} has no finished run (no runs/*/{_DONE}).")
    cfg = _read_config(run_dir / "config.json")
    return write_report(
        "example",
        run_dir,
        run_dir if out is None else Path(out),
        found,
        _final_row,
        lambda _, summary, tables: _markdown(summary, tables["paired.csv"], cfg),
        tables={"paired.csv": _paired},
        labels=_LABELS,
        order=METHODS,
        figures=_figures,
        progress=progress,
    )


def _finished_runs(run_dir: Path) -> Iterator[Run]:
    """The finished runs of an example folder; any other folder under ``runs/`` is refused."""
    folders = sorted((run_dir / "runs").glob("*-seed*"))
    if not folders:
        raise AttnProbeError(
            f"{run_dir} has no runs/<method>-seed<k> folders; expected a folder written by "
            "`attnprobe example rollingq`."
        )
    for folder in folders:
        method, seed = folder.name.rsplit("-seed", 1)
        if method not in METHODS or not seed.isdigit():
            raise AttnProbeError(
                f"{folder} is not an example run: expected runs/<method>-seed<k> with a method "
                f"in {list(METHODS)}; move other folders out of {run_dir / 'runs'}."
            )
        if (folder / _DONE).exists():
            yield method, int(seed), folder


def _read_config(path: Path) -> dict[str, Any]:
    """The settings an example folder was written with (empty when ``config.json`` is gone)."""
    try:
        return dict(json.loads(path.read_text())) if path.exists() else {}
    except (ValueError, TypeError) as exc:  # not JSON, not text, not an object
        raise AttnProbeError(
            f"cannot read {path}: {type(exc).__name__}; expected the JSON settings "
            "`attnprobe example rollingq` writes."
        ) from None


def _part(frame: pd.DataFrame, checkpoint: str, protocol: str) -> pd.DataFrame:
    """The rows of one checkpoint (``last``/``selected``) and protocol (``mix``/``add``);
    folders written before these columns existed hold the last epoch's mixing sweep only."""
    keep = pd.Series(True, index=frame.index)
    if "checkpoint" in frame:
        keep &= frame["checkpoint"] == checkpoint
    elif checkpoint != "last":
        return frame.iloc[:0]
    if "protocol" in frame:
        keep &= frame["protocol"] == protocol
    elif protocol != "mix":
        return frame.iloc[:0]
    return frame[keep]


def _accuracies(sweep: pd.DataFrame, suffix: str = "") -> dict[str, float]:
    """Clean accuracy, accuracy under corruption (mean over λ > 0) and per corrupted modality."""
    if sweep.empty:
        return {}
    accuracy = sweep.drop_duplicates(["corrupted", "level"])
    row = {}
    if suffix != "_add":  # the clean accuracy does not depend on the protocol
        row[f"accuracy{suffix}"] = float(accuracy[accuracy["level"] == 0]["accuracy"].iloc[0])
    noisy = accuracy[accuracy["level"] > 0]
    row[f"accuracy_corrupted{suffix}"] = float(noisy["accuracy"].mean())
    for m, part in noisy.groupby("corrupted", sort=False):
        row[f"accuracy_{m}_corrupted{suffix}"] = float(part["accuracy"].mean())
    return row


def _final_row(run: Run) -> dict[str, Any]:
    """The numbers a run ends with: test split, the last epoch's model (``…_selected``: the
    validation-selected one; ``…_add``: the additive corruption)."""
    method, seed, folder = run
    metrics = read_metrics(folder / "metrics.csv")
    sweep = read_csv(folder / "sweep.csv")
    last = metrics.iloc[-1]
    row: dict[str, Any] = {"method": method, "seed": seed}
    main = _part(sweep, "last", "mix")
    row.update(_accuracies(main))
    row.update(_accuracies(_part(sweep, "selected", "mix"), "_selected"))
    row.update(_accuracies(_part(sweep, "last", "add"), "_add"))
    try:
        done = json.loads((folder / _DONE).read_text())
        row["train_seconds"] = done["train_seconds"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise AttnProbeError(
            f"{folder / _DONE} is corrupt: expected the JSON record a finished run writes; "
            "delete it and rerun `attnprobe example rollingq` with the same settings to redo "
            "the run."
        ) from None
    if "selected_epoch" in done:
        row["selected_epoch"] = done["selected_epoch"]
    if (folder / "unimodal.csv").exists():
        heads = read_csv(folder / "unimodal.csv")
        for _, h in heads[heads["checkpoint"] == "last"].iterrows():
            row[f"unimodal_accuracy_{h['modality']}"] = float(h["accuracy"])
    if method not in _ATTENTION:
        return row
    own = main[main["key_modality"] == main["corrupted"]] if "key_modality" in main else main
    top = float(own["level"].max()) if not own.empty else math.nan
    for m, part in own.groupby("corrupted", sort=False):
        # the paper's headline test: m replaced by pure noise at its scale (ΔM is clean − noise)
        row[f"share_clean_{m}"] = float(part[part["level"] == 0]["share"].mean())
        if top == 1.0:
            row[f"share_noise_{m}"] = float(part[part["level"] == 1.0]["share"].mean())
    scores = read_csv(folder / "adaptability.csv")
    for checkpoint, protocol, suffix in (("last", "mix", ""), ("selected", "mix", "_selected"),
                                         ("last", "add", "_add")):  # fmt: skip
        part = _part(scores, checkpoint, protocol)
        if part.empty:
            continue
        row[f"attention_quality_r{suffix}"] = float(part["pearson_r"].mean())
        row[f"delta_mass{suffix}"] = float(part["delta_mass"].mean())
        if suffix == "":
            for _, sc in part.iterrows():
                row[f"attention_quality_r_{sc['corrupted']}"] = float(sc["pearson_r"])
                row[f"delta_mass_{sc['corrupted']}"] = float(sc["delta_mass"])
    row["abs_air"] = float(np.mean([abs(last[c]) for c in air_columns(metrics)]))
    row["key_gap"] = float(np.mean([last[c] for c in key_gap_columns(metrics)]))
    return row


_SUMMARY = (
    ("accuracy", "clean test accuracy"),
    ("accuracy_corrupted", "test accuracy, one modality corrupted (mean over modalities, λ > 0)"),
    ("attention_quality_r", "attention–quality Pearson r (mean over corrupted modalities)"),
    (
        "delta_mass",
        "ΔM = share(clean) − share(pure noise, λ = 1) of the corrupted modality (mean)",
    ),
    ("abs_air", "|AIR| at the last epoch (mean over modality pairs)"),
    ("key_gap", "key gap 1 − cos(μ_a, μ_b) at the last epoch (mean over pairs)"),
    ("accuracy_corrupted_add", "additive noise: test accuracy, one modality corrupted (λ > 0)"),
    ("attention_quality_r_add", "additive noise: attention–quality Pearson r"),
    ("accuracy_selected", "validation-selected epoch: clean test accuracy"),
    ("accuracy_corrupted_selected", "validation-selected epoch: accuracy, one modality corrupted"),
    ("attention_quality_r_selected", "validation-selected epoch: attention–quality Pearson r"),
)
_PAIRS = (
    ("rollingq", "vanilla"),
    ("rollingq_gated", "vanilla"),
    ("vanilla", "concat"),
    ("rollingq", "concat"),
    ("rollingq_gated", "concat"),
)


def _paired(runs: pd.DataFrame) -> pd.DataFrame:
    """Paired differences over seeds: mean, std, paired t-test and Wilcoxon signed-rank."""
    from scipy import stats

    rows = []
    for first, second in _PAIRS:
        a = runs[runs["method"] == first].set_index("seed")
        b = runs[runs["method"] == second].set_index("seed")
        seeds = a.index.intersection(b.index)
        for metric, _ in _SUMMARY:
            if metric not in a or metric not in b or len(seeds) == 0:
                continue
            diff = (a.loc[seeds, metric] - b.loc[seeds, metric]).dropna().to_numpy(float)
            if len(diff) == 0:
                continue
            t_p = w_p = math.nan
            if len(diff) >= 2 and np.ptp(diff) > 0:
                t_p = float(stats.ttest_rel(diff, np.zeros_like(diff)).pvalue)
            if len(diff) >= 2 and np.any(diff != 0):
                w_p = float(stats.wilcoxon(diff).pvalue)
            rows.append(
                {
                    "comparison": f"{first} - {second}",
                    "metric": metric,
                    "mean_difference": float(diff.mean()),
                    "std_difference": float(diff.std(ddof=1)) if len(diff) > 1 else math.nan,
                    "num_seeds": len(diff),
                    "wins": int((diff > 0).sum()),
                    "t_test_p": t_p,
                    "wilcoxon_p": w_p,
                }
            )
    return pd.DataFrame(rows)


def _per_modality_label(metric: str) -> str:
    for suffix, what in (("_selected", ", validation-selected"), ("_add", ", additive noise")):
        if metric.endswith(suffix):
            return _per_modality_label(metric[: -len(suffix)]) + what
    if metric == "delta_mass":
        return "ΔM (mean over corrupted modalities)"
    for prefix, label in (
        ("attention_quality_r_", "attention–quality r, {} corrupted"),
        ("delta_mass_", "ΔM of {}"),
        ("share_clean_", "CLS share of {}, clean"),
        ("share_noise_", "CLS share of {} when it is pure noise (mix λ = 1)"),
        ("unimodal_accuracy_", "unimodal probe accuracy of the {} encoder (clean test)"),
    ):
        if metric.startswith(prefix):
            return label.format(metric[len(prefix) :])
    if metric == "selected_epoch":
        return "validation-selected epoch (from 0)"
    return f"accuracy, {metric[len('accuracy_') : -len('_corrupted')]} corrupted (mean over λ > 0)"


def _cell(row: pd.Series) -> str:
    return f"{row['mean']:.3f} ± {row['std']:.3f}"


def _markdown(summary: pd.DataFrame, paired: pd.DataFrame, cfg: Mapping[str, Any]) -> str:
    present = set(summary["method"])
    columns = {m: _LABELS[m] for m in METHODS if m in present}
    main = {metric for metric, _ in _SUMMARY}
    per_modality = [
        (metric, _per_modality_label(metric))
        for metric in dict.fromkeys(summary["metric"])
        if metric not in main and metric != "train_seconds"
    ]
    times = summary[summary["metric"] == "train_seconds"]
    timing = ", ".join(
        f"{_LABELS[str(r['method'])]} {r['mean']:.0f} ± {r['std']:.0f} s"
        for _, r in times.iterrows()
    )
    measured = [m for m in _SUMMARY if m[0] in set(summary["metric"])]
    lines = [
        f"# RollingQ example: {cfg.get('dataset')}, {cfg.get('regime', 'scratch')} regime, "
        f"{cfg.get('seeds')} seeds, {cfg.get('epochs')} epochs",
        "",
        "Mean ± std over seeds (test split; the last epoch's model unless marked "
        "validation-selected).",
        "",
        *markdown_table(summary, columns, measured, _cell),
        "",
        "Per modality:",
        "",
        *markdown_table(summary, columns, per_modality, _cell),
        "",
        f"Training time per run (a timing of this machine, not a result): {timing}.",
        "",
        "Paired differences over seeds (first − second): mean ± std, seeds where the first "
        "is larger, paired t-test p, Wilcoxon signed-rank p.",
        "",
        "| comparison | metric | difference | larger | t-test p | Wilcoxon p |",
        "|---|---|---|---|---|---|",
    ]
    for _, r in paired.iterrows():
        lines.append(
            f"| {r['comparison']} | {r['metric']} | {r['mean_difference']:+.3f} ± "
            f"{r['std_difference']:.3f} | {r['wins']}/{r['num_seeds']} | {r['t_test_p']:.3g} | "
            f"{r['wilcoxon_p']:.3g} |"
        )
    return "\n".join(lines) + "\n"


# -- the example's own figures (after the run report's training figures) ------------------------
_KEY_FILES = (
    ("keys_before.pt", "before its first rotation"),
    ("keys_after.pt", "just after it"),
    ("keys_final.pt", "end of training"),
)


def _figures(found: Sequence[Run], style: Style) -> list[Job]:
    """The key distributions and, where the runs wrote ``sweep.csv``, the noise sweep."""
    jobs: list[Job] = [(FIGURES[3], lambda p: _key_distribution(found, p, style))]
    sweep = stack(found, "sweep.csv")
    if not sweep.empty:
        jobs.append((FIGURES[4], lambda p: _share_vs_noise(sweep, p, style)))
        jobs.append((FIGURES[5], lambda p: _accuracy_vs_noise(sweep, p, style)))
    return jobs


def _key_distribution(found: Sequence[Run], path: Path, style: Style) -> bool:
    """The first seed's fusion keys and CLS query from the ``keys_*.pt`` probe results: each
    RollingQ run just before and just after its first rotation, then every run at the end of
    training (runs that rotated first)."""
    seeds = [s for _, s, f in found if any((f / name).exists() for name, _ in _KEY_FILES)]
    if not seeds:
        return False
    seed = min(seeds)
    runs = sorted(
        ((m, f) for m, s, f in found if s == seed),
        key=lambda run: (not (run[1] / _KEY_FILES[0][0]).exists(), style.order.index(run[0])),
    )
    present = [
        (folder / name, f"{method}\n{when}")
        for method, folder in runs
        for name, when in _KEY_FILES
        if (folder / name).exists()
    ]
    fig, axes = facets(len(present), size=(4.6, 4.6))
    result = None
    for ax, (file, title) in zip(axes, present, strict=True):
        result = ap.ProbeResult.load(file)
        plot.key_distribution(result, query="cls", ax=ax, max_points=200, legend=False)
        ax.set_title(f"{title}, seed {seed}", fontsize=10)
        ax.xaxis.label.set_fontsize(8)
    _common_box(axes)
    assert result is not None
    plot.key_distribution_legend(fig, result, query="cls")
    fig.suptitle("Fusion-layer keys per modality and the CLS query direction (one scale)")
    save(fig, path)
    return True


def _common_box(axes: Sequence[Axes]) -> None:
    """One square data box for every panel (equal aspect), so that lengths compare across
    panels."""
    boxes = [ax.dataLim for ax in axes]
    low = min(min(b.x0, b.y0) for b in boxes)
    high = max(max(b.x1, b.y1) for b in boxes)
    pad = 0.05 * (high - low)
    for ax in axes:
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlim(low - pad, high + pad)
        ax.set_ylim(low - pad, high + pad)


def _by_corrupted(
    frame: pd.DataFrame, y: str, ylabel: str, title: str, path: Path, style: Style
) -> None:
    """One panel per corrupted modality: ``y`` against the noise level, one line per method
    (``ylabel`` may name the modality as ``{m}``)."""
    names = list(dict.fromkeys(frame["corrupted"]))
    fig, axes = facets(len(names))
    for ax, m in zip(axes, names, strict=True):
        style.lines(frame[frame["corrupted"] == m], "level", y, ax, marker="o")
        ax.set_title(f"{m} corrupted")
        ax.set_xlabel("noise level λ")
        ax.set_ylabel(ylabel.format(m=m))
    _same_y(axes)
    one_legend(fig, axes)
    fig.suptitle(title)
    save(fig, path)


def _same_y(axes: Sequence[Axes]) -> None:
    """One y range for panels of the same quantity (a wobble must not look like a drop)."""
    low = min(ax.get_ylim()[0] for ax in axes)
    high = max(ax.get_ylim()[1] for ax in axes)
    for ax in axes:
        ax.set_ylim(low, high)


def _share_vs_noise(sweep: pd.DataFrame, path: Path, style: Style) -> bool:
    sweep = _part(sweep, "last", "mix")
    if "key_modality" not in sweep:
        return False
    own = sweep[sweep["key_modality"] == sweep["corrupted"]]
    title = "Does attention leave a corrupted modality? (test split, mean ± sd over seeds)"
    _by_corrupted(own, "share", "CLS share of {m}", title, path, style)
    return True


def _accuracy_vs_noise(sweep: pd.DataFrame, path: Path, style: Style) -> None:
    sweep = _part(sweep, "last", "mix")
    rows = sweep.drop_duplicates(["method", "seed", "corrupted", "level"])
    title = "Accuracy with one modality corrupted (test split, mean ± sd over seeds)"
    _by_corrupted(rows, "accuracy", "test accuracy", title, path, style)
