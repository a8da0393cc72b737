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
3. Overhead: forward time of a 6-block causal SDPA model (d = 512, 8 heads, bf16, B = 1) at
   L = 2048 and 8192, plain vs probed (second pass all queries, CLS only, fused), CUDA-event
   timing, median of repeated runs, all variants interleaved; peak memory from
   ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

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


def overhead(device: str, lengths: list[int], repeats: int) -> None:
    print("## 3. forward time and peak memory, bf16, 6 causal blocks, d=512, 8 heads, B=1")
    cuda = device == "cuda"
    for length in lengths:
        model, x, layout = model_and_input(length, device, torch.bfloat16)
        probes: dict[str, ap.Probe | None] = {
            "plain": None,
            "second_pass, all queries": ap.probe(model, modalities=layout, key_stats=False),
            "second_pass, all queries, key_stats": ap.probe(model, modalities=layout),
            "second_pass, cls only": ap.probe(
                model, modalities=layout, queries="cls", key_stats=False
            ),
            "fused, all queries": ap.probe(
                model, modalities=layout, capture="fused", key_stats=False
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in probes}
        peaks: dict[str, float] = {}

        for probe in probes.values():  # warm-up
            _time_forward(model, x, probe, cuda)
        for _ in range(repeats):
            for name, probe in probes.items():
                seconds, peaks[name] = _time_forward(model, x, probe, cuda)
                times[name].append(seconds)
        base = statistics.median(times["plain"])
        base_peak = peaks.get("plain", 0.0)
        print(f"\nL = {length}")
        print("| variant | median ms | ×plain | peak MiB | ×plain |")
        print("|---|---:|---:|---:|---:|")
        for name in probes:
            med = statistics.median(times[name])
            peak = peaks.get(name, float("nan"))
            ratio = peak / base_peak if base_peak else float("nan")
            print(f"| {name} | {med * 1000:.2f} | {med / base:.2f}× | {peak:.0f} | {ratio:.2f}× |")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="L = 2048 only, fewer repeats")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=ap.AttnProbeWarning)  # fused: we measure it here
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (use --device cpu for a dry run)")
        return 0
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"# attnprobe GPU check — {name}, torch {torch.__version__}\n")
    exactness(args.device)
    invariants(args.device)
    lengths = [2048] if args.quick or args.device == "cpu" else [2048, 8192]
    overhead(args.device, lengths, 3 if args.quick or args.device == "cpu" else 20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
