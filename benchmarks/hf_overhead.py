"""Overhead of ``attnprobe.probe`` on a HuggingFace Llama model: time and peak memory, side by side.

What is measured
----------------
A ``transformers`` ``LlamaModel`` (no LM head, so no logits) built from a config with random
weights, nothing downloaded: 6 layers, hidden size 512, 8 query heads and 4 key/value heads of 64
(grouped-query attention), MLP 1376, RoPE, vocabulary 1000; seeded, ``model.eval()``,
``torch.no_grad()``, float32, batch 1, causal attention, ``--threads`` threads. The input is
``L`` random token ids with the VLM-style layout ``{"bos": 1, "image": L // 2 - 1,
"text": L - L // 2}`` (a fixed ``attnprobe.ModalityLayout``). At every sequence length ``L``
(``--lengths``, default 2048 and 8192) these variants run on the same weights and input:

1. ``sdpa``: ``model.set_attn_implementation("sdpa")``, the plain forward (the baseline of every
   ratio);
2. ``sdpa + attnprobe``: the same, inside ``attnprobe.probe(model, modalities=layout)`` with the
   defaults (``capture="second_pass"``, ``key_stats=True``, all queries), attached once for the
   whole run and closed at the end;
3. ``eager + output_attentions``, what users do today: ``set_attn_implementation("eager")``,
   a forward with ``output_attentions=True``, then the per-group masses of every layer computed
   by hand from the returned ``[B, H, L, L]`` weights: sum over each group's key columns, mean
   over each group's query rows (timed together with the forward). This keeps every layer's
   ``L × L`` maps alive, ``6 × 8 × L² × 4`` bytes (12.9 GB at L = 8192): before it runs, its
   peak is estimated as ``layers + 2`` maps (the kept ones and two softmax temporaries) plus
   the ``L × L`` float mask, 17.7 GB at L = 8192 (measured peaks at L = 512 to 2048 are within
   about 10 % of this estimate, on either side; the table prints it next to them), and the
   variant is skipped, with the estimate printed, when that exceeds ``--max-eager-gb``;
4. with ``--with-mass-only``: ``sdpa + attnprobe`` with ``key_stats=False`` (attention mass only);
5. with ``--with-fused``: ``sdpa + attnprobe`` with ``capture="fused"`` (one kernel call with
   ``V' = [V, E]``: masses exact, outputs equal up to rounding, no second ``q kᵀ``).

Each variant has its own copy of the model (``copy.deepcopy`` of one seeded build, so the weights
are identical), so that the probe stays attached throughout and the variants can interleave.
Before timing, one forward of every variant (also its warm-up) is checked: the probe's output
must be ``torch.equal`` to the plain ``sdpa`` one (``second_pass`` leaves it bit-identical), and
its per-(layer, head, query group, key group) mass is compared with the eager hand-sliced one.

Time
----
After the check pass, ``--repeats`` rounds (``--repeats-long`` for L > 2048) run every variant
once each, round-robin with the starting variant rotated each round. Only the forward (and, for
eager, the slicing) is timed, with ``torch.cuda.synchronize()`` around it on CUDA; ``gc.collect()``
runs outside. The table reports the median over rounds and its ratio to the median of ``sdpa``
(the number the target uses), the fastest round's ratio to the fastest ``sdpa`` round (less
sensitive to other processes) and the spread ``(max − min) / median``. A line per length says
how much CPU other processes took meanwhile (``/proc/stat``): when it is not near 0 %, the
times are noisy.

Peak memory
-----------
Each (variant, L) runs in a fresh child process (this script with the hidden ``--worker``
option), so that one variant's peak or allocator state cannot hide another's. The child builds
the model and the input, attaches the probe if any, runs one warm-up forward, frees its output,
then measures: on the CPU, the peak resident set size during a forward above the RSS just before
it (``VmHWM − VmRSS``, the high-water mark reset first with ``echo 5 > /proc/self/clear_refs``;
where that is unavailable, ``ru_maxrss`` from ``resource.getrusage`` after minus before),
median of ``MEM_REPEATS`` forwards (1 for L > 2048). The child runs with glibc's
``MALLOC_MMAP_THRESHOLD_=131072``, so that large freed blocks go back to the system and RSS
follows live memory. On CUDA: ``torch.cuda.max_memory_allocated()`` minus
``torch.cuda.memory_allocated()`` before the forward, after ``reset_peak_memory_stats()``. The
baseline thus holds the model, the input and what the warm-up left (the probe's fixed-size
statistics); the output tensor and the hand-sliced masses count towards the peak.

Targets, evaluated at L = 2048 and printed as PASS/FAIL (the script always exits 0):
``sdpa + attnprobe`` ≤ 1.4× the time and ≤ 1.1× the peak memory of ``sdpa``.

Usage::

    python benchmarks/hf_overhead.py                      # L = 2048 and 8192 (about 3 min, 2 CPUs)
    python benchmarks/hf_overhead.py --quick              # smoke test: L = 512 and 1024
    python benchmarks/hf_overhead.py --lengths 4096 --repeats 3
    python benchmarks/hf_overhead.py --with-mass-only     # also the probe with key_stats=False
    python benchmarks/hf_overhead.py --max-eager-gb 20    # let the eager variant use more RAM
    python benchmarks/hf_overhead.py --device cuda        # on a GPU (memory from the allocator)
    python benchmarks/hf_overhead.py --markdown           # tables in Markdown, for the docs
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from transformers import PreTrainedModel

from _common import contention as _contention
from _common import cpu_snapshot as _cpu_snapshot
from _common import fmt as _fmt
from _common import ratio as _ratio
from _common import release_free_memory as _release_free_memory
from _common import round_robin, spans
from _common import status_kib as _status_kib

import attnprobe as ap

HIDDEN = 512
LAYERS = 6
HEADS = 8
KV_HEADS = 4
INTERMEDIATE = 1376  # 4 * 512 * 2 / 3, rounded up to a multiple of 32
VOCAB = 1000
SEED = 0
MIB = 2**20
GB = 1e9
TARGET_LENGTH = 2048
TIME_TARGET = 1.4
MEMORY_TARGET = 1.1
MEM_REPEATS = 3
BASE = "sdpa"


# -- model, input, layout ---------------------------------------------------------------------
def build(length: int, device: str) -> tuple[PreTrainedModel, Tensor]:
    """The seeded ``LlamaModel`` (eval mode, float32, SDPA) and ``(1, L)`` input ids."""
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(SEED)
    config = LlamaConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        intermediate_size=INTERMEDIATE,
        vocab_size=VOCAB,
        max_position_embeddings=max(8192, length),
    )
    model = LlamaModel(config)  # float32
    model.to(device)  # type: ignore[arg-type]  # transformers types .to() too narrowly
    model.train(False)  # eval mode
    if next(model.parameters()).dtype != torch.float32:
        raise RuntimeError(f"expected float32 weights, got {next(model.parameters()).dtype}")
    model.set_attn_implementation("sdpa")
    generator = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, VOCAB, (1, length), generator=generator).to(device)  # (B, L)
    return model, ids


def layout(length: int) -> ap.ModalityLayout:
    """What a VLM user sees: a BOS token, the image tokens, then the text tokens."""
    return ap.ModalityLayout({"bos": 1, "image": length // 2 - 1, "text": length - length // 2})


def eager_estimate(length: int, batch: int = 1) -> float:
    """Estimated peak bytes of the eager variant: every layer's kept ``(B, H, L, L)`` float32
    map, two more for the temporaries of the last layer's softmax, and the float mask."""
    one_map = 4.0 * batch * HEADS * length * length
    return (LAYERS + 2) * one_map + 8.0 * batch * length * length


# -- variants ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    kind: str  # "plain" | "probe" | "eager"
    options: tuple[tuple[str, Any], ...] = ()


VARIANTS: tuple[Variant, ...] = (
    Variant("sdpa", "sdpa", "plain"),
    Variant("probe", "sdpa + attnprobe", "probe"),
    Variant("probe_mass", "sdpa + attnprobe (key_stats=False)", "probe", (("key_stats", False),)),
    Variant("probe_fused", "sdpa + attnprobe (capture='fused')", "probe", (("capture", "fused"),)),
    Variant("eager", "eager + output_attentions + slicing", "eager"),
)
BY_KEY = {v.key: v for v in VARIANTS}


def eager_masses(attentions: Sequence[Tensor], length: int) -> list[Tensor]:
    """The hand-written reduction: per layer, ``[H, Gq, Gk]`` mean over each query group's rows
    of the weights summed over each key group's columns (batch mean)."""
    groups = spans(layout(length).counts.values())
    out = []
    for weights in attentions:  # (B, H, L, L) each
        per_key = torch.stack([weights[..., s:e].sum(-1) for s, e in groups], -1)  # (B, H, L, G)
        per_query = torch.stack(
            [per_key[:, :, s:e].mean(2) for s, e in groups], 2
        )  # (B, H, Gq, Gk)
        out.append(per_query.mean(0))  # (H, Gq, Gk)
    return out


class Runner:
    """One variant's model (its own copy), input and probe; `forward` runs what is timed."""

    def __init__(self, variant: Variant, model: PreTrainedModel, ids: Tensor, device: str) -> None:
        self.variant, self.model, self.ids, self.device = variant, model, ids, device
        self.probe: ap.Probe | None = None
        self.masses: list[Tensor] | None = None
        if variant.kind == "eager":
            model.set_attn_implementation("eager")
        elif variant.kind == "probe":
            options = dict(variant.options)
            self.probe = ap.probe(model, modalities=layout(ids.shape[1]), **options).attach()

    def forward(self) -> Tensor:
        """The forward (and for eager the slicing); returns ``last_hidden_state`` ``(B, L, d)``."""
        with torch.no_grad():
            if self.variant.kind == "eager":
                out = self.model(input_ids=self.ids, output_attentions=True)
                self.masses = eager_masses(out.attentions, self.ids.shape[1])
                return out.last_hidden_state  # type: ignore[no-any-return]
            return self.model(input_ids=self.ids).last_hidden_state  # type: ignore[no-any-return]

    def mass(self) -> list[Tensor] | None:
        """Per layer ``[H, Gq, Gk]`` mass of the last forward(s), or None for plain SDPA."""
        if self.probe is not None:
            return [layer.mass for layer in self.probe.result().layers]
        return self.masses

    def timed(self) -> float:
        gc.collect()
        sync(self.device)
        start = time.perf_counter()
        out = self.forward()
        sync(self.device)
        elapsed = time.perf_counter() - start
        del out
        return elapsed

    def close(self) -> None:
        if self.probe is not None:
            self.probe.close()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# -- correctness check and timing (this process) ----------------------------------------------
def check(runners: dict[str, Runner], length: int) -> list[str]:
    """One forward of every variant (the warm-up): outputs and masses compared."""
    outputs: dict[str, Tensor] = {}
    masses: dict[str, list[Tensor] | None] = {}
    for key, runner in runners.items():
        outputs[key] = runner.forward()
        masses[key] = runner.mass()
    lines = []
    plain = outputs[BASE]
    reference = masses.get("eager")
    for key, runner in runners.items():
        if key == BASE:
            continue
        parts = [f"{runner.variant.label}:"]
        out = outputs[key]
        if torch.equal(out, plain):
            parts.append("last_hidden_state torch.equal to sdpa: True;")
        else:
            diff = (out - plain).abs().max().item()
            tag = " (MISMATCH: second_pass must not change outputs)" if runner.probe else ""
            parts.append(
                f"last_hidden_state torch.equal to sdpa: False, max |diff| {diff:.2e}{tag};"
            )
        got = masses[key]
        if runner.probe is not None and got is not None:
            if reference is None:
                parts.append("mass not compared (eager skipped)")
            else:
                diff = max(
                    (g.double().cpu() - r.double().cpu()).abs().max().item()
                    for g, r in zip(got, reference, strict=True)
                )  # over (layer, head, query group, key group)
                tag = "" if diff < 1e-4 else " (MISMATCH)"
                parts.append(f"mass max |diff| vs eager slicing {diff:.2e}{tag}")
        lines.append(" ".join(parts))
    del outputs
    return lines


# -- peak memory (child processes) ------------------------------------------------------------


def _maxrss_bytes() -> float:
    scale = 1.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _peak_growth(runner: Runner) -> tuple[float, str]:
    """Peak bytes above the starting level during one forward, and how it was measured."""
    if runner.device.startswith("cuda"):
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        allocated = torch.cuda.memory_allocated()
        out = runner.forward()
        torch.cuda.synchronize()
        top = torch.cuda.max_memory_allocated()
        del out
        return float(top - allocated), "cuda.max_memory_allocated"
    _release_free_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark VmHWM to the current VmRSS
        before_kib = _status_kib("VmRSS")
    except (OSError, RuntimeError):
        before = _maxrss_bytes()  # the peak so far: growth shows only above it
        out = runner.forward()
        del out
        return _maxrss_bytes() - before, "ru_maxrss"
    out = runner.forward()
    peak_kib = _status_kib("VmHWM")
    del out
    return (peak_kib - before_kib) * 1024.0, "VmHWM"


def worker_main(key: str, length: int, threads: int, device: str) -> None:
    """Entry point of a memory child: prints one JSON line ``{"peak": bytes, "how": str}``."""
    torch.set_num_threads(threads)
    model, ids = build(length, device)
    runner = Runner(BY_KEY[key], model, ids, device)
    runner.forward()  # warm-up (lazy initialisation, allocator growth); output dropped
    repeats = MEM_REPEATS if length <= TARGET_LENGTH else 1
    growths = [_peak_growth(runner) for _ in range(repeats)]
    runner.close()
    peak = statistics.median(g for g, _ in growths)
    print(json.dumps({"peak": peak, "how": growths[0][1]}))


def measure_memory(key: str, length: int, threads: int, device: str) -> tuple[float | None, str]:
    """Run a fresh child for (variant, L); returns the peak growth in bytes and how (or the
    error text with None)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", key, "--length", str(length)]
    cmd += ["--threads", str(threads), "--device", device]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MALLOC_MMAP_THRESHOLD_="131072")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return (
            None,
            f"memory child {key} L={length} exited {proc.returncode}:\n{proc.stderr[-4000:]}",
        )
    result = json.loads(lines[-1])
    return float(result["peak"]), str(result["how"])


# -- reporting --------------------------------------------------------------------------------
@dataclass
class Row:
    length: int
    key: str
    label: str
    median: float | None = None
    fastest: float | None = None
    spread: float | None = None
    peak: float | None = None
    note: str = ""


def table(rows: list[Row], markdown: bool) -> str:
    base = {(r.length, r.key): r for r in rows}
    header = [
        "L",
        "variant",
        "time s",
        "time ×sdpa",
        "min ×sdpa",
        "spread",
        "peak MiB",
        "peak ×sdpa",
        "note",
    ]
    body = []
    for r in rows:
        b = base.get((r.length, BASE), Row(r.length, BASE, ""))
        body.append(
            [
                str(r.length),
                r.label,
                _fmt(r.median, ".3f"),
                _fmt(_ratio(r.median, b.median), ".2f", "×"),
                _fmt(_ratio(r.fastest, b.fastest), ".2f", "×"),
                _fmt(None if r.spread is None else 100 * r.spread, ".0f", "%"),
                _fmt(None if r.peak is None else r.peak / MIB, ".1f"),
                _fmt(_ratio(r.peak, b.peak), ".2f", "×"),
                r.note,
            ]
        )
    if markdown:
        lines = ["| " + " | ".join(header) + " |"]
        lines.append(
            "|" + "|".join(["---:", ":---"] + ["---:"] * (len(header) - 3) + [":---"]) + "|"
        )
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(c[i]) for c in [header, *body]) for i in range(len(header))]
    left = {1, len(header) - 1}

    def line(cells: Sequence[str]) -> str:
        out = [
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(c) for c in body)])


def verdicts(rows: list[Row]) -> list[str]:
    by = {r.key: r for r in rows}
    base = by.get(BASE)
    out = []
    for key in ("probe", "probe_mass", "probe_fused"):
        row = by.get(key)
        if row is None:
            continue
        if base is None or row.median is None:
            out.append(f"{row.label}: not measured")
            continue
        checks = [
            ("time", _ratio(row.median, base.median), TIME_TARGET),
            ("peak memory", _ratio(row.peak, base.peak), MEMORY_TARGET),
        ]
        for name, ratio, limit in checks:
            if ratio is None:
                out.append(f"{row.label}: {name} ratio n/a")
                continue
            verdict = "PASS" if ratio <= limit else "FAIL"
            line = f"{row.label}: {name} ratio {ratio:.2f}x <= {limit:.2f}x {verdict}"
            fastest = _ratio(row.fastest, base.fastest)
            if name == "time" and fastest is not None:
                line += f" (fastest rounds: {fastest:.2f}x)"
            out.append(line)
    return out


def describe_machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import transformers

    text = (
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"python {platform.python_version()}, {cpu}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs visible"
    )
    if device.startswith("cuda"):
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def bench_length(length: int, keys: list[str], rounds: int, args: argparse.Namespace) -> list[Row]:
    groups = layout(length).counts
    print(
        f"\n## L = {length} (layout {' / '.join(f'{k} {v}' for k, v in groups.items())}; "
        f"B=1, fp32, {LAYERS} layers, d={HIDDEN}, {HEADS} heads / {KV_HEADS} kv heads, "
        f"{args.device})\n",
        flush=True,
    )
    estimate = eager_estimate(length)
    skip_eager = "eager" in keys and estimate > args.max_eager_gb * GB
    notes: dict[str, str] = {}
    if "eager" in keys:
        verdict = (
            f"skipped (estimated {estimate / GB:.1f} GB > limit {args.max_eager_gb:g} GB)"
            if skip_eager
            else f"runs (<= limit {args.max_eager_gb:g} GB)"
        )
        print(f"eager variant: estimated peak {estimate / GB:.2f} GB, {verdict}")
        if skip_eager:
            notes["eager"] = f"skipped (estimated {estimate / GB:.1f} GB > limit)"
        else:
            notes["eager"] = f"est. {estimate / MIB:.0f} MiB"
    active = [k for k in keys if not (k == "eager" and skip_eager)]

    model, ids = build(length, args.device)
    runners: dict[str, Runner] = {}
    errors: dict[str, str] = {}
    for key in active:
        try:
            runners[key] = Runner(BY_KEY[key], copy.deepcopy(model), ids, args.device)
        except Exception:
            errors[key] = traceback.format_exc()
    del model
    try:
        print("checks (one forward each, also the warm-up):")
        for line in check(runners, length):
            print(f"  {line}")
        print(flush=True)
        before = _cpu_snapshot()
        times = round_robin({k: r.timed for k, r in runners.items()}, rounds)
        print(f"during timing ({rounds} rounds): {_contention(before, _cpu_snapshot())}")
    finally:
        for runner in runners.values():
            runner.close()
    runners.clear()
    gc.collect()

    rows = []
    hows = set()
    for key in keys:
        row = Row(length, key, BY_KEY[key].label, note=notes.get(key, ""))
        rows.append(row)
        if key in errors:
            print(f"ERROR in variant {row.label!r}:\n{errors[key]}", flush=True)
            row.note = "error"
            continue
        if key not in times:
            continue
        samples = times[key]
        row.median, row.fastest = statistics.median(samples), min(samples)
        row.spread = (max(samples) - min(samples)) / row.median
        peak, how = measure_memory(key, length, args.threads, args.device)
        if peak is None:
            print(how, flush=True)
            row.note = (row.note + "; " if row.note else "") + "memory child failed"
        else:
            row.peak = peak
            hows.add(how)
    print(f"peak memory measured in fresh children with: {', '.join(sorted(hows)) or 'n/a'}")
    print(table(rows, args.markdown))
    print(flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[TARGET_LENGTH, 8192])
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds for L <= 2048")
    parser.add_argument("--repeats-long", type=int, default=2, help="timed rounds for L > 2048")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: L = 512 and 1024, 2 rounds"
    )
    parser.add_argument("--markdown", action="store_true", help="print tables in Markdown")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch threads"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--max-eager-gb",
        type=float,
        default=16.0,
        help="skip the eager variant where its estimated peak exceeds this (GB)",
    )
    parser.add_argument(
        "--with-mass-only",
        action="store_true",
        help="also time sdpa + attnprobe with key_stats=False",
    )
    parser.add_argument(
        "--with-fused",
        action="store_true",
        help="also time sdpa + attnprobe with capture='fused'",
    )
    parser.add_argument("--worker", choices=list(BY_KEY), help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args.threads < 1:
        parser.error("--threads must be >= 1")

    if args.worker:
        worker_main(args.worker, args.length, args.threads, args.device)
        return
    if args.quick:
        lengths, short, long = [512, 1024], 2, 1
    else:
        lengths, short, long = args.lengths, args.repeats, args.repeats_long
    if short < 1 or long < 1:
        parser.error("--repeats and --repeats-long must be >= 1")

    torch.set_num_threads(args.threads)
    optional = {"probe_mass": args.with_mass_only, "probe_fused": args.with_fused}
    keys = [v.key for v in VARIANTS if optional.get(v.key, True)]
    print(f"# attnprobe overhead on a HuggingFace LlamaModel ({args.device}, causal, fp32)")
    print(describe_machine(args.device))
    print(
        f"timed rounds: {short} for L <= {TARGET_LENGTH}, {long} above (round-robin, median); "
        "peak memory in fresh children (MALLOC_MMAP_THRESHOLD_=131072)"
    )
    started = time.perf_counter()
    results: dict[int, list[Row]] = {}
    for length in lengths:
        rounds = short if length <= TARGET_LENGTH else long
        results[length] = bench_length(length, keys, rounds, args)
    print(f"total wall time {time.perf_counter() - started:.0f} s\n")

    print("## summary\n")
    print(table([r for rows in results.values() for r in rows], args.markdown))
    print(f"\ntargets at L = {TARGET_LENGTH}, from the numbers above:")
    if TARGET_LENGTH not in results:
        print(f"  not evaluated: L = {TARGET_LENGTH} was not measured in this run")
        return
    for line in verdicts(results[TARGET_LENGTH]):
        print(f"  {line}")


if __name__ == "__main__":
    main()
