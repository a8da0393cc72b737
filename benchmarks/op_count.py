"""Aten operations dispatched by one forward of ``probe_overhead.py``'s model, per probe variant.

Every aten operation is at least one kernel launch on a GPU, so the operations a probe adds per
attention call are its fixed cost there, and they can be counted on the CPU. A
``TorchDispatchMode`` counts the operations of the third forward with each variant attached
(label caches warm), at L = 256 by default; the count is deterministic.

Run ``python benchmarks/op_count.py`` (``--length``). With ``PYTHONPATH`` pointing at another
checkout it counts that version (variants are spelled for both ``capture=`` and the older
``method=``).
"""

from __future__ import annotations

import argparse
import inspect
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_overhead import DEPTH, VARIANTS, build

import attnprobe as ap


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops += 1
        return func(*args, **(kwargs or {}))


def count(length: int) -> dict[str, int]:
    """Operations of one forward per variant (``plain``: nothing attached)."""
    takes_capture = "capture" in inspect.signature(ap.Probe.__init__).parameters
    model, x, layout = build(length)
    out = {}
    for variant in VARIANTS:
        if variant.kind == "eager":
            continue
        options = dict(variant.options)
        if not takes_capture and "capture" in options:
            options["method"] = options.pop("capture")
        probe = None
        if variant.kind == "probe":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                probe = ap.probe(model, modalities=layout, **options).attach()
        try:
            for _ in range(3):
                counter = _Count()
                with torch.no_grad(), counter:
                    model(x)
        finally:
            if probe is not None:
                probe.close()
        out[variant.key] = counter.ops
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--length", type=int, default=256)
    args = parser.parse_args()
    ops = count(args.length)
    print(f"attnprobe {ap.__version__} from {Path(ap.__file__).parent}; L = {args.length}")
    for key, n in ops.items():
        extra = (n - ops["plain"]) / DEPTH
        print(f"{key:16s} {n:6d} ops   +{extra:5.1f} per probed attention call")


if __name__ == "__main__":
    main()
