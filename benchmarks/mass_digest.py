"""The masses the probe gives on ``benchmarks/probe_overhead.py``'s model, saved to a file, so
that two versions of attnprobe can be compared bit for bit.

Run it once per version (e.g. with ``PYTHONPATH`` pointing at another checkout) and compare::

    python benchmarks/mass_digest.py --out new.pt
    PYTHONPATH=/path/to/other/checkout python benchmarks/mass_digest.py --out old.pt
    python benchmarks/mass_digest.py --compare old.pt new.pt

Every probe variant of ``probe_overhead.py`` (second pass with and without key statistics, all
queries or the CLS query, the fused call) runs once at each length; the file holds every
layer's ``mass_total`` and ``num_queries`` (and the key/query sums where kept) per variant.
``--compare`` prints, per variant, whether every tensor is ``torch.equal`` in both files.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_overhead import VARIANTS, build

import attnprobe as ap

STATES = ("mass_total", "num_queries", "key_total", "key_total_sq", "query_total", "cosine_total")


def digest(lengths: list[int]) -> dict[str, torch.Tensor]:
    """``"L/variant/layer/state" -> tensor`` for every probe variant and length."""
    takes_capture = "capture" in inspect.signature(ap.Probe.__init__).parameters
    out: dict[str, torch.Tensor] = {}
    for length in lengths:
        model, x, layout = build(length)
        for variant in VARIANTS:
            if variant.kind != "probe":
                continue
            options = dict(variant.options)
            if not takes_capture and "capture" in options:  # attnprobe before `capture=`
                options["method"] = options.pop("capture")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with ap.probe(model, modalities=layout, **options) as p, torch.no_grad():
                    model(x)
            for layer in p.result().layers:
                for state in STATES:
                    value = getattr(layer, state)
                    if value is not None:
                        out[f"{length}/{variant.key}/{layer.name}/{state}"] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--out", type=Path, help="write the digest here")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("A", "B"))
    args = parser.parse_args()
    if args.compare:
        a, b = (torch.load(p, weights_only=True) for p in args.compare)
        if set(a) != set(b):
            print(f"different entries: {sorted(set(a) ^ set(b))[:8]}")
        variants = sorted({k.split("/")[1] for k in a})
        for variant in variants:
            keys = [k for k in a if k.split("/")[1] == variant and k in b]
            same = all(torch.equal(a[k], b[k]) for k in keys)
            print(f"{variant:16s} {len(keys):4d} tensors  torch.equal: {same}")
        return
    torch.set_num_threads(2)
    torch.save(digest(args.lengths), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
