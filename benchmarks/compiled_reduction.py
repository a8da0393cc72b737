"""The probe's per-call reduction compiled (``compile_reduction=True``) or not: compile time,
steady-state forward time and, on a GPU, kernels per forward.

On ``probe_overhead.py``'s model (6 blocks, d = 512, 8 heads; causal) at one length, with the
probe's defaults (all queries, key statistics): the first probed forward with
``compile_reduction=True`` compiles the two pure reduction functions (the time above a first
forward without it is the compile time); then ``plain``, ``eager`` (the default) and
``compiled`` run round-robin for ``--rounds`` rounds, medians and ratios to ``plain`` printed
side by side. On CUDA the profiler also counts the kernels each variant launches per forward.

Usage::

    python benchmarks/compiled_reduction.py                     # CPU, L = 2048
    python benchmarks/compiled_reduction.py --device cuda --dtype bfloat16 --length 4096
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import round_robin
from probe_overhead import THREADS, build

import attnprobe as ap


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    cuda = args.device == "cuda"
    model, x, layout = build(args.length)
    model, x = model.to(args.device, getattr(torch, args.dtype)), x.to(args.device)
    x = x.to(getattr(torch, args.dtype))

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    probes = {
        "plain": None,
        "eager": ap.probe(model, modalities=layout),
        "compiled": ap.probe(model, modalities=layout, compile_reduction=True),
    }

    def timed(probe: ap.Probe | None) -> float:
        if probe is not None:
            probe.attach()
        try:
            sync()
            start = time.perf_counter()
            with torch.no_grad():
                model(x)
            sync()
            return time.perf_counter() - start
        finally:
            if probe is not None:
                probe.close()
                probe.reset()

    print(f"# compiled reduction: {args.device}, {args.dtype}, L = {args.length}")
    first = {name: timed(probe) for name, probe in probes.items()}
    print(
        f"first forward: eager {first['eager']:.2f} s, compiled {first['compiled']:.2f} s "
        f"(compile time ≈ {first['compiled'] - first['eager']:.1f} s)"
    )
    times = round_robin({n: (lambda p=p: timed(p)) for n, p in probes.items()}, args.rounds)
    base = statistics.median(times["plain"])
    for name, samples in times.items():
        med = statistics.median(samples)
        print(f"{name:10s} median {med * 1000:9.2f} ms  {med / base:5.3f}× plain")
    if cuda:
        from torch.profiler import ProfilerActivity, profile

        for name, probe in probes.items():
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                timed(probe)
            kernels = sum(e.count for e in prof.key_averages() if e.device_type.name == "CUDA")
            print(f"{name:10s} {kernels} CUDA kernels per forward")


if __name__ == "__main__":
    main()
