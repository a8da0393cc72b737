"""GPU check: exactness of the indicator pass on CUDA attention kernels, and probe overhead.

Run on a machine with a CUDA GPU: ``python benchmarks/gpu_check.py`` (``--quick`` for fewer
lengths). Without CUDA it says so and exits 0; ``--device cpu`` runs the same checks on the CPU
(a dry run of the script itself).

1. Exactness: for each SDPA backend (flash, memory-efficient, cuDNN, math) and dtype (fp32,
   bf16, fp16) that the backend accepts, `attnprobe.functional.group_attention_mass` is
   compared with a float64 softmax computed from the same ``q`` and ``k`` (causal, and with a
   boolean padding mask); the fused call's output is compared with the plain kernel call on the
   same backend (bit-identical or not, and the largest difference).
2. Probe invariants on the GPU: a model of SDPA blocks probed with ``second_pass`` gives outputs
   ``torch.equal`` to the unprobed ones; ``fused`` is reported.
3. No host–device synchronisation on the hot path: after a warm-up forward (label caches
   made), one probed forward per variant runs under ``torch.cuda.set_sync_debug_mode("error")``,
   which raises on any operation that waits for the GPU (``.item()``, data-dependent shapes,
   copies to the host).
4. Overhead: forward time of a 6-block causal SDPA model (d = 512, 8 heads, bf16, B = 1) at
   L = 2048 and 8192, plain vs probed (second pass all queries with and without key statistics,
   CLS only with and without, fused), CUDA-event timing, median of repeated runs, all variants
   interleaved; peak memory from ``torch.cuda.max_memory_allocated``. The issue's targets at
   L = 2048 are printed with PASS/FAIL: CLS only ≤ 1.10×, the defaults ≤ 1.3×.
5. The same on a realistic configuration (``--realistic`` or the full run): a Llama-style
   decoder of 16 layers, d = 2048, 32 query heads sharing 8 key/value heads (grouped-query
   attention through SDPA's ``enable_gqa``), RMSNorm, SwiGLU MLP of 5632, bf16, L = 4096,
   B = 1, laid out as a vision–language prompt (32 system tokens, 1024 image tokens, the rest
   text); no rotary embedding, which would only add to the plain forward's time. Target: the
   defaults ≤ 1.10×.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import attnprobe as ap
from attnprobe import functional as AF

try:
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # torch < 2.3
    sdpa_kernel = None


def reference_mass(
    q: Tensor, k: Tensor, labels: Tensor, groups: int, mask: Tensor | None, causal: bool
) -> Tensor:
    """Float64 ``softmax(q kᵀ/√d + mask)`` summed per key group: ``[B, H, Lq, G]``."""
    q64, k64 = q.double(), k.double()
    logits = q64 @ k64.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, H, Lq, Lk)
    if causal:
        lq, lk = logits.shape[-2:]
        future = torch.ones(lq, lk, dtype=torch.bool, device=q.device).triu(1)
        logits = logits.masked_fill(future, float("-inf"))
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    weights = logits.softmax(-1)
    onehot = F.one_hot(labels.clamp(min=0), groups).double() * (labels >= 0).unsqueeze(-1)
    return weights @ onehot.unsqueeze(1)  # (B, H, Lq, G)


def exactness(device: str) -> None:
    print("## 1. indicator pass vs float64 reference, per backend and dtype")
    backends = {"math": None}
    if sdpa_kernel is not None:
        backends = {
            "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION,
            "math": SDPBackend.MATH,
        }
    gen = torch.Generator(device="cpu").manual_seed(0)
    b, h, length, d, g = 2, 8, 512, 64, 3
    q, k, v = (torch.randn(b, h, length, d, generator=gen).to(device) for _ in range(3))
    labels = torch.randint(0, g, (b, length), generator=gen).to(device)
    labels[1, 400:] = -1
    pad = (labels >= 0).view(b, 1, 1, length)
    print("| backend | dtype | mask | max abs err (mass) | fused output vs plain |")
    print("|---|---|---|---:|---|")
    for name, backend in backends.items():
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for mask_name, mask, causal in (("causal", None, True), ("padding", pad, False)):
                qd, kd, vd = q.to(dtype), k.to(dtype), v.to(dtype)
                ref = reference_mass(qd, kd, labels, g, mask, causal)
                ctx = sdpa_kernel(backend) if backend is not None else _null()
                try:
                    with ctx:
                        mass = AF.group_attention_mass(
                            qd, kd, labels, g, attn_mask=mask, is_causal=causal
                        )
                        plain = F.scaled_dot_product_attention(
                            qd, kd, vd, attn_mask=mask, is_causal=causal
                        )
                        out, _ = AF.fused_attention(
                            qd, kd, vd, labels, g, attn_mask=mask, is_causal=causal
                        )
                except RuntimeError as exc:
                    reason = str(exc).splitlines()[0][:60]
                    print(f"| {name} | {dtype} | {mask_name} | not supported ({reason}) | |")
                    continue
                err = (mass.double() - ref).abs().max().item()
                same = torch.equal(out, plain)
                diff = (out.float() - plain.float()).abs().max().item()
                fused = "bit-identical" if same else f"max diff {diff:.1e}"
                print(f"| {name} | {dtype} | {mask_name} | {err:.1e} | {fused} |")
    print()


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, dim = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, self.head_dim)  # (B, L, 3, H, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, L, hd) each
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, L, hd)
        return self.proj(out.transpose(1, 2).reshape(b, n, dim))  # (B, L, d)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.n1(x))
        return x + self.mlp(self.n2(x))


def model_and_input(
    length: int, device: str, dtype: torch.dtype
) -> tuple[nn.Module, Tensor, dict[str, int]]:
    torch.manual_seed(0)
    model = nn.Sequential(*[Block(512, 8) for _ in range(6)]).to(device, dtype).eval()
    x = torch.randn(1, length, 512, device=device, dtype=dtype)  # (B, L, d)
    audio = length // 4
    return model, x, {"cls": 1, "audio": audio, "video": length - 1 - audio}


def invariants(device: str) -> None:
    print("## 2. probe invariants")
    for dtype in (torch.float32, torch.bfloat16):
        model, x, layout = model_and_input(256, device, dtype)
        with torch.no_grad():
            ref = model(x)
            with ap.probe(model, modalities=layout) as p:
                out = model(x)
            with ap.probe(model, modalities=layout, capture="fused"):
                fused = model(x)
        sums = p.result().to_frame().groupby(["layer", "head", "query_modality"])["mass"].sum()
        print(
            f"- {dtype}: second_pass outputs torch.equal: {torch.equal(ref, out)}; fused outputs "
            f"torch.equal: {torch.equal(ref, fused)} (max diff "
            f"{(ref.float() - fused.float()).abs().max().item():.1e}); row mass sums in "
            f"[{sums.min():.6f}, {sums.max():.6f}]"
        )
    print()


class RMSNorm(nn.Module):
    """``x / rms(x) · w`` (Zhang and Sennrich, 2019), in the input's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        scale = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)  # (B, L, 1)
        return (x.float() * scale).to(x.dtype) * self.weight


class LlamaAttention(nn.Module):
    """Causal grouped-query attention: ``heads`` query heads share ``kv_heads`` key/value heads."""

    def __init__(self, dim: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, n, dim = x.shape
        hd = self.head_dim
        q = self.q_proj(x).view(b, n, self.heads, hd).transpose(1, 2)  # (B, H, L, hd)
        k = self.k_proj(x).view(b, n, self.kv_heads, hd).transpose(1, 2)  # (B, Hk, L, hd)
        v = self.v_proj(x).view(b, n, self.kv_heads, hd).transpose(1, 2)  # (B, Hk, L, hd)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, dim))  # (B, L, d)


class LlamaBlock(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, hidden: int) -> None:
        super().__init__()
        self.input_norm, self.post_norm = RMSNorm(dim), RMSNorm(dim)
        self.attn = LlamaAttention(dim, heads, kv_heads)
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.input_norm(x))
        h = self.post_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))  # SwiGLU


def llama_and_input(
    length: int, device: str, dtype: torch.dtype, depth: int = 16
) -> tuple[nn.Module, Tensor, dict[str, int]]:
    torch.manual_seed(0)
    blocks = [LlamaBlock(2048, 32, 8, 5632) for _ in range(depth)]
    model = nn.Sequential(*blocks).to(device, dtype).eval()
    x = torch.randn(1, length, 2048, device=device, dtype=dtype)  # (B, L, d)
    image = min(1024, length // 2)
    system = min(32, length // 8)
    return model, x, {"system": system, "image": image, "text": length - system - image}


def no_sync(device: str) -> bool:
    """One probed forward per variant under ``set_sync_debug_mode("error")``; True if none
    synchronised."""
    print("## 3. no host-device synchronisation per probed call")
    if device != "cuda":
        print("- skipped: needs CUDA (the CPU test suite intercepts syncing ops instead)\n")
        return True
    model, x, layout = model_and_input(1024, device, torch.bfloat16)
    ok = True
    for name, options in _variants(layout).items():
        probe = None if options is None else ap.probe(model, modalities=layout, **options)
        try:
            if probe is not None:
                probe.attach()
            with torch.no_grad():
                model(x)  # warm-up: label caches, lazy initialisation
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
                try:
                    model(x)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            print(f"- {name}: no synchronisation")
        except RuntimeError as exc:
            ok = False
            print(f"- {name}: SYNCHRONISES: {str(exc).splitlines()[0][:120]}")
        finally:
            if probe is not None:
                probe.close()
    print()
    return ok


def _variants(layout: dict[str, int]) -> dict[str, dict[str, object] | None]:
    first = next(iter(layout))
    return {
        "plain": None,
        "second_pass, all queries": {"key_stats": False},
        "second_pass, all queries, key_stats (defaults)": {},
        f"second_pass, {first} only": {"queries": first, "key_stats": False},
        f"second_pass, {first} only, key_stats": {"queries": first},
        "fused, all queries": {"capture": "fused", "key_stats": False},
    }


def _time_forward(
    model: nn.Module, x: Tensor, probe: ap.Probe | None, cuda: bool
) -> tuple[float, float]:
    """Seconds of one forward (CUDA events on a GPU) and its peak memory growth in MiB."""
    if probe is not None:
        probe.attach()
    try:
        if not cuda:
            t0 = time.perf_counter()
            with torch.no_grad():
                model(x)
            return time.perf_counter() - t0, float("nan")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start, end = torch.cuda.Event(True), torch.cuda.Event(True)
        start.record()
        with torch.no_grad():
            model(x)
        end.record()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        return float(start.elapsed_time(end)) / 1000, peak
    finally:
        if probe is not None:
            probe.close()
            probe.reset()


def overhead(
    title: str,
    build: Callable[[int], tuple[nn.Module, Tensor, dict[str, int]]],
    device: str,
    lengths: list[int],
    repeats: int,
    targets: dict[str, float],
) -> bool:
    """Time every variant on ``build(L)``'s model; print the table and the targets at the first
    length; True if every target holds."""
    print(title)
    cuda = device == "cuda"
    ok = True
    for length in lengths:
        model, x, layout = build(length)
        probes = {
            name: None if options is None else ap.probe(model, modalities=layout, **options)
            for name, options in _variants(layout).items()
        }
        times: dict[str, list[float]] = {name: [] for name in probes}
        peaks: dict[str, float] = {}

        for probe in probes.values():  # warm-up
            _time_forward(model, x, probe, cuda)
        for r in range(repeats):
            names = list(probes)
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:  # rotated: position effects hit all alike
                seconds, peaks[name] = _time_forward(model, x, probes[name], cuda)
                times[name].append(seconds)
        base = statistics.median(times["plain"])
        base_peak = peaks.get("plain", 0.0)
        print(f"\nL = {length}")
        print("| variant | median ms | ×plain | peak MiB | ×plain |")
        print("|---|---:|---:|---:|---:|")
        ratios = {}
        for name in probes:
            med = statistics.median(times[name])
            ratios[name] = med / base
            peak = peaks.get(name, float("nan"))
            ratio = peak / base_peak if base_peak else float("nan")
            cells = f"{med * 1000:.2f} | {ratios[name]:.2f}× | {peak:.0f} | {ratio:.2f}×"
            print(f"| {name} | {cells} |")
        if length == lengths[0] and cuda:
            for name, limit in targets.items():
                verdict = "PASS" if ratios[name] <= limit else "FAIL"
                ok = ok and verdict == "PASS"
                print(f"- target {name} ≤ {limit:.2f}×: {ratios[name]:.2f}× {verdict}")
        del model, x, probes
    print()
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="L = 2048 only, fewer repeats")
    parser.add_argument(
        "--realistic", action="store_true", help="only the Llama-style configuration (part 5)"
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=ap.AttnProbeWarning)  # fused: we measure it here
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (use --device cpu for a dry run)")
        return 0
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"# attnprobe GPU check — {name}, torch {torch.__version__}\n")
    exactness(args.device)
    invariants(args.device)
    ok = no_sync(args.device)
    cpu = args.device == "cpu"
    repeats = 3 if args.quick or cpu else 20
    if not args.realistic:
        ok &= overhead(
            "## 4. forward time and peak memory, bf16, 6 causal blocks, d=512, 8 heads, B=1",
            lambda length: model_and_input(length, args.device, torch.bfloat16),
            args.device,
            [2048] if args.quick or cpu else [2048, 8192],
            repeats,
            {"second_pass, cls only": 1.10, "second_pass, all queries, key_stats (defaults)": 1.3},
        )
    if args.realistic or not args.quick:
        # on the CPU (a dry run of the script) 2 layers at L = 256: the full size takes minutes
        ok &= overhead(
            "## 5. realistic configuration: Llama-style, 16 layers, d=2048, 32/8 heads (GQA), "
            "bf16, B=1",
            lambda length: llama_and_input(
                length, args.device, torch.bfloat16, depth=2 if cpu else 16
            ),
            args.device,
            [256] if cpu else [4096],
            3 if cpu else 10,
            {"second_pass, all queries, key_stats (defaults)": 1.10},
        )
    if args.device != "cuda":
        print("targets not evaluated: they are for CUDA (this was a dry run)")
    else:
        print("all targets met" if ok else "some targets NOT met (see FAIL above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
