"""The ``attnprobe`` command (`main`; ``python -m attnprobe`` runs it too).

``attnprobe demo`` probes the bundled reference fusion model (random weights) on a generated
batch and prints the per-modality attention mass table of its fusion layer.

``attnprobe example rollingq`` trains vanilla attention fusion, the same with RollingQ and the
concatenation baseline over several seeds on bundled data (`attnprobe.app.example`), and
writes a run folder with per-run metrics, a summary table with paired tests, and figures.

``attnprobe report RUN_DIR`` rebuilds the figures and summary tables of a run folder from its
files (`attnprobe.app.report`): an example folder, a training wrapper's ``out_dir``, or a
folder of them.

This module is the only one that prints. Bad input (a missing folder, a corrupt run file,
settings that do not match a folder) ends with one line on standard error, ``attnprobe
COMMAND: what is wrong and how to fix it``, and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    import pandas as pd
    import torch

    import attnprobe as ap
    from attnprobe.models import LateFusionTransformer

    torch.manual_seed(args.seed)
    lengths = {"audio": 16, "video": 24}
    model = LateFusionTransformer({"audio": 20, "video": 32}, lengths, num_classes=6).eval()
    audio = torch.randn(args.batch, lengths["audio"], 20)  # (B, La, 20)
    video = torch.randn(args.batch, lengths["video"], 32)  # (B, Lv, 32)
    layout = model.fusion_layout()
    print(f"model: LateFusionTransformer (random weights, seed {args.seed})")
    print(f"fusion layer sees {layout}")
    with torch.no_grad():
        reference = model(audio, video)
        with ap.probe(model, modalities=layout, layers="fusion") as p:
            probed = model(audio, video)
    result = p.result()
    print(f"outputs with and without the probe identical: {bool(torch.equal(reference, probed))}")
    frame = result.to_frame()
    table = frame.pivot_table(
        index="query_modality", columns="key_modality", values="mass", sort=False
    )
    with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 120):
        print("\nattention mass of the fusion layer (rows: query group, columns: key group)")
        print(table.to_string())
        layer = result["fusion"]
        residual = float(layer.residual.abs().max())
        print(f"\nlargest row residual (mass outside every group): {residual:.2e}")
        fair = {g: n / layout.length for g, n in layout.counts.items()}
        print("fair share by token count:", {g: round(v, 4) for g, v in fair.items()})
    return 0


def _fail(command: str, exc: Exception) -> int:
    """One line on stderr, exit status 2."""
    print(f"attnprobe {command}: {' '.join(str(exc).split())}", file=sys.stderr)
    return 2


def _example(args: argparse.Namespace) -> int:
    from attnprobe import AttnProbeError
    from attnprobe.app import example

    regime = "" if args.regime == "scratch" else f"-{args.regime}"
    quick = "-quick" if args.quick else ""
    out = args.out or f"attnprobe-runs/rollingq-{args.dataset}{regime}{quick}"
    start = time.perf_counter()
    try:
        if args.quick:
            seeds = 2 if args.seeds is None else args.seeds
            config = example.ExampleConfig.quick(args.dataset, seeds=seeds, regime=args.regime)
        else:
            seeds = 5 if args.seeds is None else args.seeds
            config = example.ExampleConfig(dataset=args.dataset, seeds=seeds, regime=args.regime)
        example.run(
            out,
            config,
            progress=not args.no_progress,
            log=print,
            device=args.device,
            threads=args.threads,
        )
    except AttnProbeError as exc:
        return _fail("example rollingq", exc)
    print()
    print((Path(out) / "summary.md").read_text())
    figures = sorted((Path(out) / "figures").glob("*.png"))
    print(f"finished in {time.perf_counter() - start:.0f} s. Results in {out}:")
    print(f"  {Path(out) / 'summary.md'}  the tables above (a Markdown file)")
    print(
        f"  {Path(out) / 'figures'}/  {len(figures)} figures (PNG): "
        + ", ".join(f.stem for f in figures)
    )
    print(f"  {out}/*.csv  every number, one row per run, epoch or noise level")
    print(f"`attnprobe report {out}` rebuilds the tables and figures from the files.")
    return 0


def _report(args: argparse.Namespace) -> int:
    from attnprobe import AttnProbeError
    from attnprobe.app.report import report

    start = time.perf_counter()
    try:
        result = report(args.run_dir, args.out, progress=not args.no_progress)
    except AttnProbeError as exc:
        return _fail("report", exc)
    print((result.out / "summary.md").read_text())
    kind = "example folder" if result.kind == "example" else "training runs"
    count = len(result.runs)
    print(f"{kind}: {count} run{'s' * (count != 1)} read from {result.run_dir}")
    for path in result.figures:
        print(f"  {path}")
    print(
        f"tables and {len(result.figures)} figures written to {result.out} in "
        f"{time.perf_counter() - start:.1f} s"
    )
    return 0


_EPILOG = """\
examples:
  attnprobe demo                          probe a fusion model, print its attention masses
  attnprobe example rollingq --quick      the RollingQ example in about 20 seconds
  attnprobe example rollingq              the full example (5 seeds, about 10 min on 2 cores)
  attnprobe report attnprobe-runs/rollingq-synthetic
                                          rebuild its tables and figures from the files
  attnprobe report runs/ --out report/    the same for your own Trainer runs

Run `attnprobe COMMAND --help` for a command's options, and `python -m pydoc attnprobe`
(or any module or name in it) for the API. Guides, concepts and the API reference: the
documentation site (`make docs` in the source builds it; docs/ holds its pages).
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attnprobe`` command."""
    from attnprobe import __version__

    parser = argparse.ArgumentParser(
        prog="attnprobe",
        description="Which modality does a multimodal Transformer listen to?\n"
        "Probe attention, run the bundled RollingQ example, report on training runs.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"attnprobe {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="probe the reference fusion model on a generated batch and print the mass table",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    example = commands.add_parser(
        "example",
        help="run a bundled example (rollingq: vanilla vs RollingQ vs concat over seeds)",
        description="Run a bundled example end to end and write its run folder. rollingq: "
        "vanilla fusion attention, the same with RollingQ (reference defaults, and gated by "
        "the imbalance) and a concatenation baseline, trained over seeds on bundled data, "
        "then a summary table with paired tests and six figures.",
        epilog="The run folder holds config.json, runs/<method>-seed<k>/ (metrics.csv, "
        "checkpoint.pt, sweep.csv, ...), runs.csv, summary.csv, paired.csv, summary.md and "
        "figures/; `attnprobe report RUN_DIR` rebuilds the tables and figures from it.",
    )
    example.add_argument("name", choices=["rollingq"], help="the example to run")
    example.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: fewer samples, epochs and seeds (about 20 s on synthetic data)",
    )
    example.add_argument(
        "--dataset",
        choices=["synthetic", "mfeat"],
        default="synthetic",
        help="bundled data: the synthetic benchmark or UCI Multiple Features (default synthetic)",
    )
    example.add_argument(
        "--regime",
        choices=["scratch", "finetune"],
        default="scratch",
        help="scratch: every model from random weights at lr 0.05; finetune (the paper's "
        "regime): each encoder pre-trained alone, then the whole model fine-tuned at lr 5e-3",
    )
    example.add_argument(
        "--seeds", type=int, default=None, help="number of seeds (default 5; 2 with --quick)"
    )
    example.add_argument(
        "--device", default="cpu", help="where the models train (default cpu; e.g. cuda)"
    )
    example.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: 1 for the example's small models, which gain nothing from "
        "more)",
    )
    example.add_argument(
        "--out",
        default=None,
        help="run folder (default attnprobe-runs/rollingq-<dataset>[-finetune][-quick]); "
        "rerunning the "
        "same command resumes an interrupted run",
    )
    example.add_argument("--no-progress", action="store_true", help="no progress bars")
    report = commands.add_parser(
        "report",
        help="rebuild the figures and summary tables of a run folder from its files",
        description="Rebuild runs.csv, summary.csv, summary.md and figures/*.png from the files "
        "of a run folder: one written by `attnprobe example rollingq` (also paired.csv), the "
        "out_dir of an attnprobe.training.Trainer or attnprobe.callbacks.RunFiles "
        "(metrics.csv), a Lightning CSVLogger folder or a HuggingFace Trainer output_dir with "
        "attnprobe's columns, or a folder whose subfolders are such runs. Subfolders named "
        "<method>-seed<k> are grouped by method and shown as mean ± std over seeds.",
        epilog="Bad input (a missing folder, a corrupt metrics file) prints one line on stderr "
        "and exits with status 2.",
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="the run folder to read")
    report.add_argument(
        "--out", default=None, help="where to write the tables and figures (default: RUN_DIR)"
    )
    report.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    if args.command == "example":
        return _example(args)
    if args.command == "report":
        return _report(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
