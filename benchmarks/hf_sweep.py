"""Sweep attnprobe over every multimodal / seq2seq architecture of the installed transformers.

For each architecture that `tests.hf_zoo` can build as a tiny random model (nothing is
downloaded), on each backend of ``--backends`` (``model.set_attn_implementation``), the checks
of `tests.hf_checks.sweep_one` (outputs unchanged by the probe, masses against the model's own
eager attention weights, no attention layer left out; the module's docstring says how). One
CSV row per architecture: model_type, class, mapping, kind, status (``exact``, ``partial``,
``mismatch``, ``output-changed``, ``probe-error``, ``reference-error``, ``skipped``), detail
(max difference, first error line or skip reason), layers probed, build profile, seconds.
Errors from attnprobe are recorded, not raised: the table is the point.

The same checks run in the test suite (``tests/test_hf_sweep.py``, one test per architecture)
and generate ``docs/reference/hf-architectures.md`` (``docs/scripts/hf_support_table.py``).

Usage::

    python benchmarks/hf_sweep.py --out /tmp/hf_sweep.csv
    python benchmarks/hf_sweep.py --family speech --limit 5
    python benchmarks/hf_sweep.py --only llava --only whisper
"""

from __future__ import annotations

import argparse
import collections
import csv
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/hf_sweep.py`
    sys.path.insert(0, str(ROOT))

from tests import hf_zoo  # noqa: E402
from tests.hf_checks import ATOL, BACKENDS, CAP, FIELDS, Row, sweep_one  # noqa: E402


# -- command line --------------------------------------------------------------------------------
def select(
    entries: Iterable[hf_zoo.Entry], family: str | None, only: Sequence[str], limit: int | None
) -> list[hf_zoo.Entry]:
    chosen = [
        e
        for e in entries
        if (family is None or family.upper().replace("-", "_") in e.mapping)
        and (not only or e.model_type in only)
    ]
    return chosen[:limit] if limit is not None else chosen


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--family", help="part of a mapping name: image_text, multimodal, speech, seq_to_seq, …"
    )
    parser.add_argument("--limit", type=int, help="first N architectures after filtering")
    parser.add_argument(
        "--only", action="append", default=[], metavar="MODEL_TYPE", help="repeatable"
    )
    parser.add_argument("--out", type=Path, help="CSV file to write (rows appear as they finish)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated")
    parser.add_argument("--cap", type=float, default=CAP, help="wall-clock seconds per model")
    parser.add_argument("--atol", type=float, default=ATOL)
    parser.add_argument(
        "--all-mappings",
        action="store_true",
        help="keep an architecture once per mapping (default: once per model type and class)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    entries = hf_zoo.families(unique=not args.all_mappings)
    per_mapping = collections.Counter(e.mapping for e in hf_zoo.families(unique=False))
    print("architectures per mapping:", dict(per_mapping), flush=True)
    chosen = select(entries, args.family, args.only, args.limit)
    print(f"sweeping {len(chosen)} of {len(entries)} architectures", flush=True)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    rows: list[Row] = []
    handle = args.out.open("w", newline="") if args.out else None
    writer = csv.DictWriter(handle, fieldnames=FIELDS) if handle else None
    if writer:
        writer.writeheader()
    try:
        for i, entry in enumerate(chosen, 1):
            row = sweep_one(entry, backends, args.cap, args.atol)
            rows.append(row)
            print(
                f"[{i}/{len(chosen)}] {row.model_type:28s} {row.kind or '-':22s} "
                f"{row.status:15s} {row.detail[:110]} ({row.seconds:.1f} s)",
                flush=True,
            )
            if writer and handle:
                writer.writerow(row.as_dict())
                handle.flush()
    finally:
        if handle:
            handle.close()
    summarize(rows)
    return 0


def summarize(rows: Sequence[Row]) -> None:
    print("\nstatus counts:", dict(collections.Counter(r.status for r in rows)))
    by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for row in rows:
        by_kind[row.kind or "(not built)"][row.status] += 1
    for kind, counts in sorted(by_kind.items()):
        print(f"  {kind:24s} {dict(counts)}")
    built = sum(r.status != "skipped" for r in rows)
    print(f"built {built} of {len(rows)}; exact {sum(r.status == 'exact' for r in rows)}")


if __name__ == "__main__":
    sys.exit(main())
