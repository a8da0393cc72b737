"""Probe overhead of this checkout against another version of attnprobe, side by side in one run.

``probe_overhead.py`` compares each probe variant with the plain forward *within* one version.
To tell whether a change made the probe slower or faster, both versions have to be timed in the
same run, under the same machine noise. This script starts two worker processes, one importing
attnprobe from a baseline checkout and one from this checkout; both build
``probe_overhead.py``'s model and input (this checkout's benchmark code, so the model is the same)
and its probe variants. The parent then asks them for one timed forward at a time, round-robin
over (version, variant), the starting point rotated each round; only one worker computes at a
time, so they never compete for the cores.

For each version the table gives the median of each variant and its ratio to *that version's*
plain forward (the number ``probe_overhead.py``'s targets use), then the change of the ratio
(this − baseline). The plain forwards of both versions are the same computation; their ratio is
printed as a check on the setup (it should be near 1.00).

The workers run with ``MALLOC_MMAP_THRESHOLD_=131072`` (glibc), as ``probe_overhead.py``'s
memory children do: every large block is its own ``mmap``. With glibc's default dynamic
threshold, whether a forward's large tensors reuse heap pages or fault in fresh ones depends on
the process's allocation history, and memory-bound operations of the *plain* forward (GELU,
copies) were seen to take 3× longer in one process than in another; at L = 512 that moved the
ratios by ±0.1 between runs. ``--default-malloc`` measures that way anyway.

Usage::

    python benchmarks/versus.py --baseline 5ad7217          # a git revision (temporary worktree)
    python benchmarks/versus.py --baseline ../attnprobe-0.3 # another checkout's root
    python benchmarks/versus.py --baseline HEAD~3 --lengths 512 2048 --rounds 9
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
THREADS = 2


# -- worker -----------------------------------------------------------------------------------
def worker() -> None:
    """Serve requests from stdin, one JSON line each, answering one JSON line on stdout.

    ``{"build": L}`` builds the model, input and runners at length L (one untimed forward of each
    variant as a warm-up) and answers the module path of attnprobe; ``{"time": key}`` answers the
    seconds of one forward of that variant.
    """
    import torch

    sys.path.insert(0, str(HERE))
    import probe_overhead as po

    import attnprobe as ap

    torch.set_num_threads(THREADS)
    takes_capture = "capture" in inspect.signature(ap.Probe.__init__).parameters
    runners: dict[str, Any] = {}
    out: IO[str] = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        if "build" in request:
            model, x, layout = po.build(int(request["build"]))
            runners = {}
            for variant in po.VARIANTS:
                if variant.kind == "eager":
                    continue
                options = dict(variant.options)
                if not takes_capture and "capture" in options:
                    options["method"] = options.pop("capture")
                spec = po.Variant(variant.key, variant.label, variant.kind, options)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    runners[variant.key] = po.Runner(spec, model, x, layout)
                    runners[variant.key].timed()  # warm-up: label caches, allocator
            reply: dict[str, Any] = {"attnprobe": str(Path(ap.__file__).parent)}
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reply = {"seconds": runners[request["time"]].timed()}
        out.write(json.dumps(reply) + "\n")
        out.flush()


class Worker:
    def __init__(self, name: str, root: Path, default_malloc: bool) -> None:
        self.name = name
        env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS=str(THREADS))
        if not default_malloc:
            env["MALLOC_MMAP_THRESHOLD_"] = "131072"
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} worker exited with {self.proc.wait()}")
        return dict(json.loads(line))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait()


# -- parent -----------------------------------------------------------------------------------
def checkout(baseline: str, scratch: Path) -> tuple[Path, bool]:
    """The baseline's root: a directory as given, or a temporary worktree of a git revision."""
    path = Path(baseline)
    if path.is_dir():
        return path.resolve(), False
    target = scratch / "baseline"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(target), baseline],
        check=True,
    )
    return target, True


def bench(workers: list[Worker], keys: list[str], length: int, rounds: int) -> None:
    for w in workers:
        print(f"  {w.name}: attnprobe from {w.ask({'build': length})['attnprobe']}", flush=True)
    slots = [(w, k) for k in keys for w in workers]  # interleaved: versions alternate
    times: dict[tuple[str, str], list[float]] = {(w.name, k): [] for w, k in slots}
    for r in range(rounds):
        shift = (r * len(workers)) % len(slots)
        for w, key in slots[shift:] + slots[:shift]:
            times[(w.name, key)].append(float(w.ask({"time": key})["seconds"]))
    base, this = (w.name for w in workers)
    med = {slot: statistics.median(v) for slot, v in times.items()}
    print(f"\nL = {length}, {rounds} rounds (median seconds; ratio to the same version's plain)")
    header = f"{'variant':<18}{base + ' s':>14}{'×plain':>9}{this + ' s':>14}{'×plain':>9}"
    header += f"{'change':>9}"
    print(header)
    print("-" * len(header))
    for key in keys:
        rb = med[(base, key)] / med[(base, "plain")]
        rt = med[(this, key)] / med[(this, "plain")]
        print(
            f"{key:<18}{med[(base, key)]:>14.4f}{rb:>8.2f}×"
            f"{med[(this, key)]:>14.4f}{rt:>8.2f}×{rt - rb:>+9.2f}"
        )
    check = med[(this, "plain")] / med[(base, "plain")]
    print(f"plain forward, {this} / {base}: {check:.3f} (same computation: should be near 1)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--baseline", help="a git revision or the root of another checkout")
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--default-malloc", action="store_true", help="glibc's dynamic mmap threshold: noisy"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker()
        return
    if not args.baseline:
        parser.error("--baseline is required (a git revision or a checkout's root)")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")

    sys.path.insert(0, str(HERE))
    from probe_overhead import VARIANTS

    keys = [v.key for v in VARIANTS if v.kind != "eager"]
    with tempfile.TemporaryDirectory() as scratch:
        root, temporary = checkout(args.baseline, Path(scratch))
        print(f"# attnprobe probe overhead: baseline ({args.baseline}) vs this checkout")
        workers = [
            Worker("baseline", root, args.default_malloc),
            Worker("this", ROOT, args.default_malloc),
        ]
        try:
            for length in args.lengths:
                bench(workers, keys, length, args.rounds)
        finally:
            for w in workers:
                w.close()
            if temporary:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(root)],
                    check=False,
                )


if __name__ == "__main__":
    main()
