"""Overhead of ``attnprobe.probe`` on a forward pass: time and peak memory, side by side.

What is measured
----------------
A 6-layer stack of pre-norm Transformer blocks (d = 512, 8 heads of 64, MLP 4×, self-attention
written as a small ``nn.Module`` that calls ``F.scaled_dot_product_attention``; causal, as in the
measurement in ``docs/concepts/attention-mass.md``, or non-causal with ``--no-causal``),
batch 1, float32, CPU, ``torch.set_num_threads(2)``, ``model.eval()`` and ``torch.no_grad()``.
The token layout is ``{"cls": 1, "audio": L // 4, "video": L - 1 - L // 4}``. At every sequence
length ``L`` these variants run on the same model and the same input:

1. ``plain``: the forward pass, nothing attached (the baseline of every ratio);
2. ``second_pass``, all queries, ``key_stats=False`` (attention mass only);
3. ``second_pass``, all queries, ``key_stats=True`` (the probe's default);
4. ``second_pass``, ``queries=["cls"]``, ``key_stats=False``;
5. ``second_pass``, ``queries=["cls"]``, ``key_stats=True``;
6. ``fused``, all queries, ``key_stats=False``;
7. ``eager + hook``, what users do today: the same blocks switched to an explicit eager attention
   (``softmax(q kᵀ/√d)`` materialised as ``(B, H, L, L)`` and returned next to the output, as
   HF models do with ``output_attentions=True``); a forward hook on each attention module slices
   the weights per modality span and immediately reduces them to float64 sums of mass per
   (head, query group, key group), all queries.

Before timing, one forward of every variant is checked: the probe's per-(layer, head, query
group, key group) mean mass is compared with the eager reference of variant 7, and the model's
output with the plain forward's (``second_pass`` must leave it bit-identical). A variant that
raises is reported with its traceback and left out of the tables.

Time
----
After the check pass and one warm-up round, ``--rounds`` rounds run every variant once each,
round-robin, with the starting variant rotated each round, so that machine noise and position
effects hit all variants alike. The table reports the median over rounds and its ratio to the
median of ``plain`` (the numbers the targets use), the fastest round and its ratio to the
fastest ``plain`` (less sensitive to other processes), and the spread ``(max − min) / median``.
Only the forward call is timed: probes are built beforehand and attached (hooks installed)
before the clock starts; ``reset()`` and ``gc.collect()`` run outside the timed region. A line
per length says how much CPU time other processes (and the hypervisor, as steal) took while the
rounds ran, from ``/proc/stat``: when it is not near 0 %, the times are noisy.

Peak memory
-----------
Each (variant, L) is measured in a fresh child process (this script run with ``--child``), so
that no variant inherits another's allocator state. The child builds the same model and input,
runs the variant's forward once as a warm-up (lazy initialisation, allocator growth), then
measures forwards in two ways:

* ``tensor peak``: the peak of live tensor bytes allocated during the forward above the level
  before it, from torch's CPU memory profiler (``torch.profiler.profile(profile_memory=True)``:
  the running sum of the allocation/free events, maximum over the forward). Exact and
  deterministic, it sees every tensor torch allocates (the kernels' scratch buffers included)
  but not memory allocated outside torch's allocator (e.g. BLAS workspaces).
* ``RSS peak``: ``VmHWM − VmRSS`` around the forward, after ``gc.collect()``, ``malloc_trim(0)``
  and a reset of the high-water mark (``echo 5 > /proc/self/clear_refs``, Linux only), median
  of ``RSS_REPEATS`` forwards. It counts everything the process touches, allocations outside
  torch included. The child runs with ``MALLOC_MMAP_THRESHOLD_=131072`` (glibc): every large
  block is then its own ``mmap``, returned to the system when freed, so RSS follows live memory.
  With glibc's default dynamic threshold, freed blocks stay in the heap and the RSS growth of
  the same variant differs between identical fresh processes by tens of MiB at L = 2048
  (observed: 45 to 100 MiB for one variant whose live tensors peak at 44 MiB), which hides the
  effect being measured; ``--default-malloc`` measures that way anyway.

The memory ratio of a variant is ``(its peak growth during the forward) / (the plain forward's
peak growth)``, both measured from the same starting point (model and input allocated, nothing
else), for each of the two measures. The result tensors a probe keeps are live at the end of the
forward and count towards its peak.

Targets (the project's, in ``docs/benchmarks.md``), evaluated at L = 2048 and printed with
PASS/FAIL from the measured numbers: exact capture of all queries (variants 2 and 3) ≤ 1.35×
time, CLS-only capture (variants 4 and 5) ≤ 1.05× time, and both ≤ 1.05× peak memory (by either
measure). The script reports; it does not tune anything to meet them.

Usage::

    python benchmarks/probe_overhead.py                   # L = 512 and 2048, 7 rounds, causal
    python benchmarks/probe_overhead.py --no-causal       # bidirectional attention
    python benchmarks/probe_overhead.py --lengths 1024 --rounds 5
    python benchmarks/probe_overhead.py --quick           # smoke test: L = 256, 2 rounds
    python benchmarks/probe_overhead.py --markdown        # tables in Markdown, for the docs
    python benchmarks/probe_overhead.py --default-malloc  # RSS with glibc's default threshold
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from _common import contention as _contention
from _common import cpu_snapshot as _cpu_snapshot
from _common import fmt as _fmt
from _common import ratio as _ratio
from _common import release_free_memory as _release_free_memory
from _common import round_robin, spans
from _common import status_kib as _status_kib
from torch import Tensor, nn

import attnprobe as ap
from attnprobe.errors import AttnProbeWarning

DIM = 512
HEADS = 8
DEPTH = 6
MLP_RATIO = 4
THREADS = 2
SEED = 0
MIB = 2**20
TARGET_LENGTH = 2048
RSS_REPEATS = 3


# -- the model --------------------------------------------------------------------------------
CAUSAL = True  # set by --no-causal (and passed on to the memory children)


class SelfAttention(nn.Module):
    """Multi-head self-attention (causal unless ``--no-causal``); SDPA by default, explicit
    softmax when ``eager``.

    Returns ``(output, weights)`` like HF attention modules: ``weights`` is the ``(B, H, L, L)``
    post-softmax map in eager mode and None with SDPA.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.eager = False

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        batch, length, dim = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.heads, self.head_dim)  # (B, L, 3, H, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, L, hd) each
        weights: Tensor | None = None
        if self.eager:
            scores = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, L, L)
            if CAUSAL:
                future = torch.ones(length, length, dtype=torch.bool).triu(1)  # (L, L)
                scores = scores.masked_fill(future, float("-inf"))
            weights = scores.softmax(dim=-1)  # (B, H, L, L)
            out = weights @ v  # (B, H, L, hd)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=CAUSAL)  # (B, H, L, hd)
        out = out.transpose(1, 2).reshape(batch, length, dim)  # (B, L, d)
        return self.proj(out), weights


class Block(nn.Module):
    """Pre-norm Transformer block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))[0]  # (B, L, d); eager weights are dropped at once
        return x + self.mlp(self.norm2(x))  # (B, L, d)


class Encoder(nn.Module):
    def __init__(self, dim: int = DIM, heads: int = HEADS, depth: int = DEPTH) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, MLP_RATIO) for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)  # (B, L, d)
        return x

    def attention_modules(self) -> list[tuple[str, SelfAttention]]:
        return [(f"blocks.{i}.attn", cast(Block, b).attn) for i, b in enumerate(self.blocks)]


def build(length: int) -> tuple[Encoder, Tensor, dict[str, int]]:
    """The model (seeded, eval mode), a ``(1, L, d)`` input and the modality layout."""
    torch.manual_seed(SEED)
    model = Encoder().eval()
    x = torch.randn(1, length, DIM)  # (B, L, d)
    audio = length // 4
    layout = {"cls": 1, "audio": audio, "video": length - 1 - audio}
    return model, x, layout


# -- "what users do today": eager weights reduced by a forward hook ---------------------------
class EagerMassHook:
    """Forward hooks that slice eager attention weights per modality span and reduce them.

    Per attention module: ``Σ`` over query rows of each query group of the mass on each key
    group, float64 ``(H, Gq, Gk)``, and the number of query rows per group.
    """

    def __init__(self, model: Encoder, layout: dict[str, int]) -> None:
        self.model = model
        self.spans = spans(layout.values())
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, Tensor] = {}

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: tuple[Tensor, Tensor | None]) -> None:
            weights = output[1]  # (B, H, L, L)
            if weights is None:
                raise RuntimeError(f"{name}: no eager attention weights returned")
            per_key = torch.stack(
                [weights[..., s:e].sum(-1) for s, e in self.spans], dim=-1
            )  # (B, H, L, Gk)
            per_query = torch.stack(
                [per_key[:, :, s:e].double().sum(2) for s, e in self.spans], dim=2
            )  # (B, H, Gq, Gk)
            total = per_query.sum(0)  # (H, Gq, Gk)
            count = torch.tensor(
                [float(weights.shape[0] * (e - s)) for s, e in self.spans], dtype=torch.float64
            )  # (Gq,)
            if name in self.sums:
                self.sums[name] += total
                self.counts[name] += count
            else:
                self.sums[name], self.counts[name] = total, count

        return hook

    @contextlib.contextmanager
    def attached(self) -> Iterator[EagerMassHook]:
        modules = self.model.attention_modules()
        handles = []
        try:
            for name, module in modules:
                module.eager = True
                handles.append(module.register_forward_hook(self._hook(name)))
            yield self
        finally:
            for handle in handles:
                handle.remove()
            for _, module in modules:
                module.eager = False

    def mass(self) -> dict[str, Tensor]:
        """Mean mass per layer, ``(H, Gq, Gk)``."""
        return {n: s / self.counts[n].view(1, -1, 1) for n, s in self.sums.items()}

    def reset(self) -> None:
        self.sums, self.counts = {}, {}


# -- variants ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    kind: str  # "plain" | "probe" | "eager"
    options: dict[str, Any] = field(default_factory=dict)


VARIANTS: tuple[Variant, ...] = (
    Variant("plain", "1 plain forward", "plain"),
    Variant(
        "sp_all_mass",
        "2 second_pass, all queries, mass only",
        "probe",
        {"capture": "second_pass", "key_stats": False},
    ),
    Variant(
        "sp_all_stats",
        "3 second_pass, all queries, key_stats",
        "probe",
        {"capture": "second_pass", "key_stats": True},
    ),
    Variant(
        "sp_cls_mass",
        "4 second_pass, cls query, mass only",
        "probe",
        {"capture": "second_pass", "key_stats": False, "queries": ["cls"]},
    ),
    Variant(
        "sp_cls_stats",
        "5 second_pass, cls query, key_stats",
        "probe",
        {"capture": "second_pass", "key_stats": True, "queries": ["cls"]},
    ),
    Variant(
        "fused_all_mass",
        "6 fused, all queries, mass only",
        "probe",
        {"capture": "fused", "key_stats": False},
    ),
    Variant("eager_hook", "7 eager weights + forward hook", "eager"),
)
BY_KEY = {v.key: v for v in VARIANTS}


class Runner:
    """Runs one variant's forward on a fixed model and input; owns its probe or hook."""

    def __init__(self, variant: Variant, model: Encoder, x: Tensor, layout: dict[str, int]):
        self.variant, self.model, self.x, self.layout = variant, model, x, layout
        self.probe: ap.Probe | None = None
        self.eager: EagerMassHook | None = None
        if variant.kind == "probe":
            with warnings.catch_warnings():
                # capture="fused" warns that outputs equal the model's only up to rounding
                warnings.simplefilter("ignore", AttnProbeWarning)
                self.probe = ap.probe(model, modalities=layout, **variant.options)
        elif variant.kind == "eager":
            self.eager = EagerMassHook(model, layout)

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        """Install the probe or hooks (outside any timed region)."""
        if self.probe is not None:
            self.probe.reset()
            with self.probe:
                yield
        elif self.eager is not None:
            self.eager.reset()
            with self.eager.attached():
                yield
        else:
            yield

    def forward(self) -> Tensor:
        with torch.no_grad():
            return self.model(self.x)  # (B, L, d)

    def timed(self) -> float:
        gc.collect()
        with self.attached():
            start = time.perf_counter()
            self.forward()
            elapsed = time.perf_counter() - start
        return elapsed

    def mass(self) -> dict[str, Tensor]:
        """Mean mass per layer ``(H, Gq, Gk)`` from the last forward."""
        if self.probe is not None:
            result = self.probe.result()
            return {layer.name: layer.mass for layer in result.layers}
        if self.eager is not None:
            return self.eager.mass()
        return {}


# -- correctness check (one forward per variant, also the first warm-up) ---------------------
@dataclass
class Outcome:
    runners: dict[str, Runner]
    errors: dict[str, str]
    checks: list[str]


def check_variants(length: int) -> Outcome:
    model, x, layout = build(length)
    runners: dict[str, Runner] = {}
    errors: dict[str, str] = {}
    outputs: dict[str, Tensor] = {}
    masses: dict[str, dict[str, Tensor]] = {}
    for variant in VARIANTS:
        try:
            runner = Runner(variant, model, x, layout)
            with runner.attached():
                outputs[variant.key] = runner.forward()
            masses[variant.key] = runner.mass()
            runners[variant.key] = runner
        except Exception:
            errors[variant.key] = traceback.format_exc()
    checks = []
    plain, reference = outputs.get("plain"), masses.get("eager_hook")
    names = [n for n, _ in model.attention_modules()]
    counts = {name: float(n) for name, n in layout.items()}
    for key, runner in runners.items():
        if key == "plain":
            continue
        parts = [f"{runner.variant.label}:"]
        if runner.probe is not None:
            wanted = [counts[q] for q in runner.variant.options.get("queries", list(layout))]
            seen = {tuple(layer.num_queries.tolist()) for layer in runner.probe.result().layers}
            if seen != {tuple(wanted)}:
                parts.append(f"MISMATCH: query rows captured {sorted(seen)}, expected {wanted};")
        if plain is not None:
            out = outputs[key]
            if torch.equal(out, plain):
                parts.append("output bit-identical to plain;")
            else:
                diff = (out - plain).abs().max().item()
                tag = " (MISMATCH: second_pass must not change outputs)" if "sp_" in key else ""
                parts.append(f"output max |diff| vs plain {diff:.2e}{tag};")
        if key != "eager_hook" and reference is not None:
            got = masses[key]
            if sorted(got) != sorted(names):
                parts.append(f"MISMATCH: captured layers {sorted(got)}, expected {names}")
            else:
                groups = list(layout)
                rows = [groups.index(q) for q in runner.variant.options.get("queries", groups)]
                diff = max(
                    (got[n] - reference[n][:, rows]).abs().max().item() for n in names
                )  # over (layer, head, query group, key group)
                tag = "" if diff < 1e-4 else " (MISMATCH)"  # NaN compares False: flagged
                parts.append(f"mass max |diff| vs eager {diff:.2e}{tag}")
        checks.append(" ".join(parts))
    return Outcome(runners, errors, checks)


# -- timing -----------------------------------------------------------------------------------


def time_variants(runners: dict[str, Runner], rounds: int) -> dict[str, list[float]]:
    for runner in runners.values():  # one more warm-up round, untimed
        runner.timed()
    return round_robin({k: r.timed for k, r in runners.items()}, rounds)


# -- peak memory (child processes) ------------------------------------------------------------


def _rss_growth(run: Callable[[], Tensor]) -> float | None:
    """``VmHWM − VmRSS`` around ``run()`` in bytes, after resetting the high-water mark."""
    _release_free_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS")
    except (OSError, RuntimeError):
        return None
    out = run()
    peak = _status_kib("VmHWM")
    del out
    return (peak - before) * 1024.0


def _tensor_peak(run: Callable[[], Tensor]) -> float:
    """Peak of live tensor bytes above the starting level during ``run()`` (torch profiler)."""
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = run()
    del out
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    level = peak = 0
    for event in events:
        level += event.nbytes()
        peak = max(peak, level)
    return float(peak)


def child_main(key: str, length: int) -> None:
    """Entry point of a memory child: prints one JSON line ``{"tensor": B, "rss": B | null}``."""
    torch.set_num_threads(THREADS)
    model, x, layout = build(length)
    runner = Runner(BY_KEY[key], model, x, layout)
    with runner.attached():
        runner.forward()  # warm-up
        growths = [_rss_growth(runner.forward) for _ in range(RSS_REPEATS)]
        valid = [g for g in growths if g is not None]
        rss = statistics.median(valid) if valid else None
        tensor = _tensor_peak(runner.forward)
    print(json.dumps({"tensor": tensor, "rss": rss}))


def measure_memory(
    key: str, length: int, default_malloc: bool
) -> tuple[dict[str, float | None], str | None]:
    """Run a fresh child for (variant, L); returns the measures and an error text or None."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", key, "--length", str(length)]
    if not CAUSAL:
        cmd.append("--no-causal")
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))
    if not default_malloc:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"tensor": None, "rss": None}, (
            f"memory child {key} L={length} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
        )
    return json.loads(lines[-1]), None


# -- reporting --------------------------------------------------------------------------------
@dataclass
class Row:
    key: str
    label: str
    median: float | None = None
    fastest: float | None = None
    spread: float | None = None
    tensor: float | None = None
    rss: float | None = None
    error: bool = False


def table(rows: list[Row], markdown: bool) -> str:
    base = {r.key: r for r in rows}.get("plain", Row("plain", ""))
    header = [
        "variant",
        "median s",
        "time ×plain",
        "min s",
        "min ×plain",
        "spread",
        "tensor peak MiB",
        "tensor ×plain",
        "RSS peak MiB",
        "RSS ×plain",
    ]
    body = []
    for r in rows:
        if r.error:
            body.append([r.label, "error"] + [""] * (len(header) - 2))
            continue
        body.append(
            [
                r.label,
                _fmt(r.median, ".3f"),
                _fmt(_ratio(r.median, base.median), ".2f", "×"),
                _fmt(r.fastest, ".3f"),
                _fmt(_ratio(r.fastest, base.fastest), ".2f", "×"),
                _fmt(None if r.spread is None else 100 * r.spread, ".0f", "%"),
                _fmt(None if r.tensor is None else r.tensor / MIB, ".1f"),
                _fmt(_ratio(r.tensor, base.tensor), ".2f", "×"),
                _fmt(None if r.rss is None else r.rss / MIB, ".1f"),
                _fmt(_ratio(r.rss, base.rss), ".2f", "×"),
            ]
        )
    if markdown:
        lines = ["| " + " | ".join(header) + " |"]
        lines.append("|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|")
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(c[i]) for c in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(c) for c in body)])


def verdicts(rows: list[Row]) -> list[str]:
    by = {r.key: r for r in rows}
    base = by.get("plain")
    targets = [
        ("exact capture, all queries, mass only", "sp_all_mass", 1.35),
        ("exact capture, all queries, key_stats", "sp_all_stats", 1.35),
        ("cls-only, mass only", "sp_cls_mass", 1.05),
        ("cls-only, key_stats", "sp_cls_stats", 1.05),
    ]
    out = []
    for what, key, time_limit in targets:
        row = by.get(key)
        if row is None or row.error or base is None:
            out.append(f"{what}: not measured (variant failed)")
            continue
        checks = [
            ("median time", _ratio(row.median, base.median), time_limit),
            ("tensor peak", _ratio(row.tensor, base.tensor), 1.05),
            ("RSS peak", _ratio(row.rss, base.rss), 1.05),
        ]
        parts = []
        for name, ratio, limit in checks:
            if ratio is None:
                parts.append(f"{name} n/a")
            else:
                verdict = "PASS" if ratio <= limit else "FAIL"
                parts.append(f"{name} {ratio:.2f}x <= {limit:.2f}x {verdict}")
        fastest = _ratio(row.fastest, base.fastest)
        if fastest is not None:
            parts[0] += f" (min time {fastest:.2f}x)"
        out.append(f"{what} ({BY_KEY[key].label[2:]}): " + "; ".join(parts))
    return out


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def describe_machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"torch {torch.__version__}, python {platform.python_version()}, {cpu}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs visible"
    )


def bench_length(length: int, rounds: int, markdown: bool, default_malloc: bool) -> list[Row]:
    audio = length // 4
    print(
        f"\n## L = {length} (layout cls 1 / audio {audio} / video {length - 1 - audio}; "
        f"B=1, fp32, {DEPTH} blocks, d={DIM}, {HEADS} heads)\n",
        flush=True,
    )
    outcome = check_variants(length)
    for key, text in outcome.errors.items():
        print(f"ERROR in variant {BY_KEY[key].label!r}:\n{text}", flush=True)
    print("checks (one forward each):")
    for line in outcome.checks:
        print(f"  {line}")
    print(flush=True)

    before = _cpu_snapshot()
    times = time_variants(outcome.runners, rounds)
    print(f"during timing: {_contention(before, _cpu_snapshot())}")
    outcome.runners.clear()
    gc.collect()

    rows = []
    for variant in VARIANTS:
        row = Row(variant.key, variant.label)
        if variant.key in outcome.errors:
            row.error = True
            rows.append(row)
            continue
        samples = times[variant.key]
        row.median, row.fastest = statistics.median(samples), min(samples)
        row.spread = (max(samples) - min(samples)) / row.median
        memory, error = measure_memory(variant.key, length, default_malloc)
        if error:
            print(error, flush=True)
        row.tensor, row.rss = memory["tensor"], memory["rss"]
        rows.append(row)
    print(table(rows, markdown))
    print(flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, TARGET_LENGTH])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (median reported)")
    parser.add_argument("--quick", action="store_true", help="smoke test: L=256, 2 rounds")
    parser.add_argument("--markdown", action="store_true", help="print tables in Markdown")
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="measure RSS with glibc's default (dynamic) mmap threshold: noisy",
    )
    parser.add_argument(
        "--no-causal", action="store_true", help="bidirectional attention (default: causal)"
    )
    parser.add_argument("--child", choices=list(BY_KEY), help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global CAUSAL
    CAUSAL = not args.no_causal

    if args.child:
        child_main(args.child, args.length)
        return
    lengths, rounds = ([256], 2) if args.quick else (args.lengths, args.rounds)
    if rounds < 1:
        parser.error("--rounds must be >= 1")

    torch.set_num_threads(THREADS)
    print(f"# attnprobe probe overhead (CPU, {'causal' if CAUSAL else 'bidirectional'} attention)")
    print(describe_machine())
    malloc = "glibc default" if args.default_malloc else "MALLOC_MMAP_THRESHOLD_=131072"
    print(
        f"{rounds} timed rounds per length (round-robin, median); memory in fresh children "
        f"({malloc})"
    )

    print(f"load average before: {_load()}")
    results = {
        length: bench_length(length, rounds, args.markdown, args.default_malloc)
        for length in lengths
    }
    print(f"load average after: {_load()} (other processes on the machine make timings noisy)")

    print(f"targets at L = {TARGET_LENGTH} (docs/benchmarks.md), from the numbers above:")
    if TARGET_LENGTH not in results:
        print(f"  not evaluated: L = {TARGET_LENGTH} was not measured in this run")
        return
    for line in verdicts(results[TARGET_LENGTH]):
        print(f"  {line}")


if __name__ == "__main__":
    main()
