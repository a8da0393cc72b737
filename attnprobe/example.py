"""The bundled RollingQ example: vanilla attention fusion, the same with RollingQ, and the
concatenation baseline, trained over several seeds on bundled data, compared with paired
statistics (``attnprobe example rollingq``; ``shared/design/ROLLINGQ.md`` and ``DATA.md``).

`run` trains and evaluates, one run folder per (method, seed); `report` rebuilds every table
and figure from the files alone. Layout of an example folder::

    config.json                      the settings (a rerun with other settings is refused)
    runs/<method>-seed<k>/
        metrics.csv, attention.csv, checkpoint.pt    the training wrapper's files
        sweep.csv                    accuracy and attention share per corrupted modality and
                                     noise level on the test split
        adaptability.csv             attention–quality correlations and ΔM (attention runs)
        keys_*.pt                    fusion-layer probe results for the key-distribution figure
        done.json                    written last: the run is complete
    runs.csv                         one row of final numbers per run
    summary.csv, paired.csv, summary.md   mean ± std per method; paired differences and tests
    figures/*.png

Protocol: the test split is never used for training or selection; numbers are those of the
last epoch. Corrupted test sets are drawn once per (seed, modality, level) and shared by every
method, so the comparisons are paired sample by sample. RollingQ runs with the reference's
defaults (β = 0, ρ = 0, one rotation after the first epoch), and once more gated by the
imbalance (β = 0.5, up to three rotations), the same on every dataset: nothing is tuned per
dataset.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from attnprobe._errors import AttnProbeError
from attnprobe._runs import read_csv, read_metrics, summarise
from attnprobe.analysis.adaptability import noise_sweep
from attnprobe.datasets import MultimodalDataset, SyntheticConfig, mfeat, synthetic
from attnprobe.models import ConcatFusion, LateFusionTransformer
from attnprobe.probe import probe
from attnprobe.results import ProbeResult
from attnprobe.rollingq import RollingQ
from attnprobe.training import TrainConfig, Trainer

__all__ = ["DATASETS", "METHODS", "ExampleConfig", "report", "run"]

METHODS = ("vanilla", "rollingq", "rollingq_gated", "concat")
"""Vanilla MT (fusion attention); + RollingQ with the reference's defaults (β = 0, one
rotation after the first epoch); + RollingQ gated by the imbalance (β = 0.5, up to three
rotations: it waits until ``|AIR| ≥ β``); and the static concatenation."""
DATASETS = ("synthetic", "mfeat")
_ATTENTION = ("vanilla", "rollingq", "rollingq_gated")
_LABELS = {
    "vanilla": "Vanilla MT",
    "rollingq": "MT + RollingQ",
    "rollingq_gated": "MT + RollingQ (β=0.5, ≤3)",
    "concat": "Concat",
}
_DONE = "done.json"


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

    @classmethod
    def quick(cls, dataset: str = "synthetic", seeds: int = 2) -> ExampleConfig:
        """A smoke run (under a minute on 2 CPU cores for the synthetic data, about two for
        mfeat): fewer training samples (synthetic only), epochs and seeds."""
        return cls(dataset=dataset, seeds=seeds, epochs=8, train_samples=1024)

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
        if cfg.train_samples is not None:
            data = dataclasses.replace(data, sizes=(cfg.train_samples, *data.sizes[1:]))
        return (
            synthetic("train", seed=seed, config=data),
            synthetic("val", seed=seed, config=data),
            synthetic("test", seed=seed, config=data),
        )
    return mfeat("train", seed=seed), mfeat("val", seed=seed), mfeat("test", seed=seed)


def _model(cfg: ExampleConfig, method: str, data: MultimodalDataset, seed: int) -> nn.Module:
    torch.manual_seed(seed)  # same seed: same encoder weights for every method
    kind = ConcatFusion if method == "concat" else LateFusionTransformer
    return kind(
        data.input_dims,
        data.lengths,
        data.num_classes,
        dim=cfg.dim,
        depth=cfg.depth,
        heads=cfg.heads,
        unimodal_heads=True,
    )


def _corrupted_sets(
    test: MultimodalDataset, levels: Sequence[float], seed: int
) -> dict[tuple[str, float], MultimodalDataset]:
    """The test split with one modality corrupted at each level, drawn once for all methods."""
    sets = {}
    for k, m in enumerate(test.modalities):
        for j, level in enumerate(levels):
            sets[(m, level)] = (
                test if level == 0 else test.corrupted(m, level, seed=seed * 1009 + 31 * k + j)
            )
    return sets


# -- one run ---------------------------------------------------------------------------------
def _key_result(model: nn.Module, data: MultimodalDataset, limit: int = 1024) -> ProbeResult:
    """Fusion-layer statistics with a key reservoir, model frozen (for the key picture)."""
    was_training = model.training
    model.eval()
    try:
        layout = model.fusion_layout()  # type: ignore[operator]
        with (
            probe(model, modalities=layout, layers="fusion", reservoir_size=256) as p,
            torch.no_grad(),
        ):
            for inputs, _ in data.subset(range(min(limit, len(data)))).batches(256):
                model(*inputs)
        return p.result()
    finally:
        model.train(was_training)


def _sweep(
    model: nn.Module,
    method: str,
    sets: dict[tuple[str, float], MultimodalDataset],
    modalities: Sequence[str],
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Accuracy and attention share on every corrupted test set; adaptability scores."""
    levels = sorted({level for _, level in sets})
    if method in _ATTENTION:
        batches = list(range(0, len(sets[(modalities[0], 0.0)]), 256))

        def prepare(start: int, m: str | None, level: float, _: Any) -> tuple[Any, Tensor]:
            data = sets[(m or modalities[0], level)]
            part = slice(start, start + 256)
            return tuple(x[part] for x in data.inputs.values()), data.targets[part]

        result = noise_sweep(
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
    rows = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for (m, level), data in sets.items():
                hits = [
                    (model(*inputs).logits.argmax(-1) == y).double().sum()
                    for inputs, y in data.batches(256)
                ]
                rows.append((m, level, float(sum(hits) / len(data))))
    finally:
        model.train(was_training)
    return pd.DataFrame(rows, columns=["corrupted", "level", "accuracy"]), None


def _train_one(cfg: ExampleConfig, method: str, seed: int, folder: Path, progress: bool) -> None:
    train, val, test = _splits(cfg, seed)
    model = _model(cfg, method, train, seed)
    rq = None
    if method.startswith("rollingq"):
        gated = method == "rollingq_gated"  # else the reference's defaults: β = 0, one rotation
        rq = RollingQ(
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
        config=TrainConfig(
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            optimizer=cfg.optimizer,  # type: ignore[arg-type]
            seed=seed,
            eval_every=max(1, cfg.epochs // 10),
            progress=progress,
            tensorboard=False,
        ),
    )
    if rq is not None:
        _watch_rotation(trainer, rq, train, folder)
    start = time.perf_counter()
    metrics = trainer.fit()
    seconds = time.perf_counter() - start
    sets = _corrupted_sets(test, cfg.levels, seed)
    sweep, scores = _sweep(model, method, sets, train.modalities)
    sweep.to_csv(folder / "sweep.csv", index=False)
    if scores is not None:
        scores.to_csv(folder / "adaptability.csv", index=False)
        _key_result(model, test).save(folder / "keys_final.pt")
    done = {"method": method, "seed": seed, "epochs": len(metrics), "train_seconds": seconds}
    (folder / _DONE).write_text(json.dumps(done, indent=1))


def _watch_rotation(trainer: Trainer, rq: RollingQ, train: MultimodalDataset, folder: Path) -> None:
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
    log: Callable[[str], None] = print,
) -> Path:
    """Train every (method, seed) of the example into ``out_dir`` and write the report.

    Finished runs are skipped and a killed run resumes from its last epoch, so rerunning the
    same command completes an interrupted example; a folder written with other settings is
    refused.

    Args:
        out_dir: the example folder.
        config: the settings (`ExampleConfig`; `ExampleConfig.quick` for a smoke run).
        progress: show progress bars.
        log: where progress lines go.

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
    jobs = [(m, s) for s in range(cfg.seeds) for m in cfg.methods]
    for index, (method, seed) in enumerate(jobs):
        folder = out / "runs" / f"{method}-seed{seed}"
        if (folder / _DONE).exists():
            continue
        log(f"[{index + 1}/{len(jobs)}] {cfg.dataset}: {_LABELS[method]}, seed {seed}")
        folder.mkdir(parents=True, exist_ok=True)
        _train_one(cfg, method, seed, folder, progress)
    report(out)
    return out


# -- the report --------------------------------------------------------------------------------
def _runs(run_dir: Path) -> Iterator[tuple[str, int, Path]]:
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


def _final_row(method: str, seed: int, folder: Path) -> dict[str, Any]:
    """The numbers a run ends with (last epoch; test split for the sweep)."""
    metrics = read_metrics(folder / "metrics.csv")
    sweep = read_csv(folder / "sweep.csv")
    last = metrics.iloc[-1]
    row: dict[str, Any] = {"method": method, "seed": seed}
    accuracy = sweep.drop_duplicates(["corrupted", "level"])
    row["accuracy"] = float(accuracy[accuracy["level"] == 0]["accuracy"].iloc[0])
    noisy = accuracy[accuracy["level"] > 0]
    row["accuracy_corrupted"] = float(noisy["accuracy"].mean())
    for m, part in noisy.groupby("corrupted", sort=False):
        row[f"accuracy_{m}_corrupted"] = float(part["accuracy"].mean())
    try:
        row["train_seconds"] = json.loads((folder / _DONE).read_text())["train_seconds"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise AttnProbeError(
            f"{folder / _DONE} is corrupt: expected the JSON record a finished run writes; "
            "delete it and rerun `attnprobe example rollingq` with the same settings to redo "
            "the run."
        ) from None
    if method not in _ATTENTION:
        return row
    scores = read_csv(folder / "adaptability.csv")
    row["attention_quality_r"] = float(scores["pearson_r"].mean())
    row["delta_mass"] = float(scores["delta_mass"].mean())
    for _, s in scores.iterrows():
        row[f"attention_quality_r_{s['corrupted']}"] = float(s["pearson_r"])
        row[f"delta_mass_{s['corrupted']}"] = float(s["delta_mass"])
    air = [c for c in metrics.columns if c == "air" or c.startswith("air_")]
    gap = [c for c in metrics.columns if c == "key_gap" or c.startswith("key_gap_")]
    row["abs_air"] = float(np.mean([abs(last[c]) for c in air]))
    row["key_gap"] = float(np.mean([last[c] for c in gap]))
    return row


_SUMMARY = (
    ("accuracy", "clean test accuracy"),
    ("accuracy_corrupted", "test accuracy, one modality corrupted (mean over modalities, λ > 0)"),
    ("attention_quality_r", "attention–quality Pearson r (mean over corrupted modalities)"),
    ("delta_mass", "ΔM = share(clean) − share(λ = 1) of the corrupted modality (mean)"),
    ("abs_air", "|AIR| at the last epoch (mean over modality pairs)"),
    ("key_gap", "key gap 1 − cos(μ_a, μ_b) at the last epoch (mean over pairs)"),
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
    for prefix, label in (
        ("attention_quality_r_", "attention–quality r, {} corrupted"),
        ("delta_mass_", "ΔM of {}"),
    ):
        if metric.startswith(prefix):
            return label.format(metric[len(prefix) :])
    return f"accuracy, {metric[len('accuracy_') : -len('_corrupted')]} corrupted (mean over λ > 0)"


def _markdown(summary: pd.DataFrame, paired: pd.DataFrame, cfg: dict[str, Any]) -> str:
    methods = [m for m in METHODS if m in set(summary["method"])]
    header = ["| metric | " + " | ".join(_LABELS[m] for m in methods) + " |"]
    header.append("|---|" + "---|" * len(methods))

    def row(metric: str, label: str) -> str:
        cells = []
        for m in methods:
            part = summary[(summary["method"] == m) & (summary["metric"] == metric)]
            cells.append(
                "–" if part.empty else f"{part['mean'].iloc[0]:.3f} ± {part['std'].iloc[0]:.3f}"
            )
        return f"| {label} | " + " | ".join(cells) + " |"

    main = {metric for metric, _ in _SUMMARY}
    per_modality = [
        metric
        for metric in dict.fromkeys(summary["metric"])
        if metric not in main and metric != "train_seconds"
    ]
    lines = [
        f"# RollingQ example: {cfg.get('dataset')}, {cfg.get('seeds')} seeds, "
        f"{cfg.get('epochs')} epochs",
        "",
        "Mean ± std over seeds (test split, last epoch).",
        "",
        *header,
        *(row(metric, label) for metric, label in _SUMMARY),
        "",
        "Per corrupted modality:",
        "",
        *header,
        *(row(metric, _per_modality_label(metric)) for metric in per_modality),
        row("train_seconds", "training time per run (s)"),
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


def _is_example_folder(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` looks like a folder `run` wrote (``config.json`` and ``runs/``)."""
    run_dir = Path(run_dir)
    return (run_dir / "config.json").is_file() and (run_dir / "runs").is_dir()


def report(
    run_dir: str | Path, out: str | Path | None = None, *, progress: bool = False
) -> pd.DataFrame:
    """Rebuild ``runs.csv``, ``summary.csv``, ``paired.csv``, ``summary.md`` and the figures
    of an example folder from its files; returns the summary (one row per method and
    metric: ``mean``, ``std``, ``num_seeds``).

    Args:
        run_dir: the folder `run` wrote.
        out: where the tables and ``figures/`` go (default: ``run_dir`` itself).
        progress: a progress bar over the figures.
    """
    return _report(Path(run_dir), None if out is None else Path(out), progress=progress)[0]


def _report(
    run_dir: Path, out: Path | None, *, progress: bool
) -> tuple[pd.DataFrame, pd.DataFrame, list[Path]]:
    """`report`, also returning the per-run table and the figures written."""
    if not run_dir.is_dir():
        raise AttnProbeError(f"{run_dir} is not a folder; expected an example run folder.")
    found = list(_runs(run_dir))
    if not found:
        raise AttnProbeError(f"{run_dir} has no finished run (no runs/*/{_DONE}).")
    out = run_dir if out is None else out
    out.mkdir(parents=True, exist_ok=True)
    runs = pd.DataFrame([_final_row(*item) for item in found])
    runs.to_csv(out / "runs.csv", index=False)
    summary = summarise(runs)
    summary.to_csv(out / "summary.csv", index=False)
    paired = _paired(runs)
    paired.to_csv(out / "paired.csv", index=False)
    config_path = run_dir / "config.json"
    try:
        cfg = json.loads(config_path.read_text()) if config_path.exists() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AttnProbeError(
            f"cannot read {config_path}: {type(exc).__name__}; expected the JSON settings "
            "`attnprobe example rollingq` writes."
        ) from None
    (out / "summary.md").write_text(_markdown(summary, paired, cfg))
    from attnprobe import _run_figures

    labelled = [(_LABELS[m], seed, folder) for m, seed, folder in found]
    order = [_LABELS[m] for m in METHODS]
    figures = _run_figures.draw(out / "figures", labelled, order, progress=progress)
    return summary, runs, figures
