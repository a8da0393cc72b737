"""GPU check of RollingQ and the training wrapper: the rotated query on every CUDA SDPA
backend, training with rotation and checkpoints on the GPU, and exact resume there.

Run on a machine with a CUDA GPU: ``python benchmarks/rollingq_gpu_check.py``. Without CUDA it
says so and exits 0; ``--device cpu`` runs the same checks on the CPU (a dry run).

1. Kernel edit: a module calling ``F.scaled_dot_product_attention`` with RollingQ attached
   (per-head rotation of query row 0, `RollingQ.attach`), on each backend (flash,
   memory-efficient, cuDNN, math) and dtype it accepts. Its output is compared with the *same
   kernel* called directly on the hand-rotated query (expected bit-identical), and with a
   float64 softmax reference; a probe attached at the same time must record the rotated query.
2. Training on the device: the reference fusion model on bundled synthetic data, 3 epochs with
   RollingQ (frozen anchor pass on the device). The rotation must happen, stay on the device
   and survive a ``weights_only`` checkpoint reload on the CPU (logits compared).
3. Resume: the same run stopped after epoch 2 (an exception in a callback, after the files are
   written) and resumed gives the metrics of the uninterrupted run (largest difference shown;
   CUDA kernels may be non-deterministic in the backward pass).
4. Anchor statistics: the frozen pass on the device against the same pass on a CPU copy.

Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import attnprobe as ap
import attnprobe.datasets as ds
from attnprobe.functional import rotation_between
from attnprobe.models import LateFusionTransformer
from attnprobe.rollingq import anchor_statistics
from attnprobe.training import TrainConfig, Trainer, load_checkpoint

FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        FAILURES.append(what)


class SdpaBlock(nn.Module):
    """Self-attention calling SDPA: ``[B, N, H·D]`` → ``[B, H, N, D]`` heads."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]  # (B, H, N, D) each

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(x)
        return F.scaled_dot_product_attention(q, k, v)


def kernel_edit(device: torch.device) -> None:
    print("1. RollingQ's query edit on each SDPA backend")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    heads, head_dim = 4, 64
    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    g = torch.Generator().manual_seed(0)
    w = rotation_between(
        torch.randn(heads, head_dim, generator=g), torch.randn(heads, head_dim, generator=g)
    )
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        torch.manual_seed(0)
        block = SdpaBlock(heads * head_dim, heads).to(device, dtype)
        model = nn.Sequential(block)
        rq = ap.RollingQ(head_dim, modalities=("a", "b"), num_heads=heads, per_head=True)
        rq.attach(model, "0")
        rq.load_state_dict({"rotation": w.float(), "num_rotations": torch.tensor(1)})
        rq.to(device)
        x = torch.randn(2, 257, heads * head_dim, device=device, dtype=dtype)
        with torch.no_grad():
            q, k, v = block.split(x)
            rotated = q.clone()
            # R·q as RollingQ computes it (the same matmul, so the same rounding)
            rows = q[:, :, 0].unsqueeze(-1)  # (B, H, D, 1)
            rotated[:, :, 0] = (w.to(device, dtype) @ rows).squeeze(-1)
            # float64 reference from the same (rounded) inputs
            scores = rotated.double() @ k.double().transpose(-1, -2) / math.sqrt(head_dim)
            reference = torch.softmax(scores, -1) @ v.double()
        for name, backend in backends.items():
            try:
                with sdpa_kernel(backend), torch.no_grad():
                    direct = F.scaled_dot_product_attention(rotated, k, v)
                    with ap.probe(
                        model, modalities={"cls": 1, "a": 128, "b": 128}, queries="cls"
                    ) as p:
                        out = model(x)
            except RuntimeError as exc:
                print(f"  --   {name:9s} {str(dtype)[6:]:8s} not available: {str(exc)[:60]}")
                continue
            err = float((out.double() - reference).abs().max())
            seen = p.result().layers[0].query_mean[:, 0]  # (H, D), float64 sums
            q_err = float((seen - rotated[:, :, 0].double().mean(0).cpu()).abs().max())
            tol = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]
            check(
                bool(torch.equal(out, direct)) and err < tol and q_err < tol,
                f"{name:9s} {str(dtype)[6:]:8s} equal to the kernel on the rotated query: "
                f"{bool(torch.equal(out, direct))}; vs float64 {err:.1e}; "
                f"probe's query {q_err:.1e}",
            )
        rq.detach()


def make(data: ds.MultimodalDataset, device: torch.device) -> tuple[nn.Module, ap.RollingQ]:
    torch.manual_seed(0)
    model = LateFusionTransformer(
        data.input_dims,
        data.lengths,
        data.num_classes,
        dim=32,
        depth=1,
        heads=2,
        unimodal_heads=True,
    )
    rq = ap.RollingQ(32, modalities=data.modalities).attach(model, "fusion")
    return model.to(device), rq


def training(device: torch.device) -> None:
    print("2-4. Training with RollingQ on the device, checkpoint, resume, anchor pass")
    train = ds.synthetic("train", num_samples=512)
    val = ds.synthetic("val", num_samples=256)
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05, progress=False, tensorboard=False)

    class Stop(Exception):
        pass

    with tempfile.TemporaryDirectory() as tmp:

        def fit(out: str, stop_after: int | None = None) -> tuple[nn.Module, ap.RollingQ, Any]:
            """Train a fresh model into ``tmp/out`` (resuming what is there)."""
            model, rq = make(train, device)
            trainer = Trainer(
                model,
                train,
                modalities=model.fusion_layout(),
                eval_data=val,
                rollingq=rq,
                out_dir=Path(tmp) / out,
                config=cfg,
            )
            if stop_after is not None:

                def stop(_: Trainer, row: dict[str, object]) -> None:
                    if row["epoch"] == stop_after:
                        raise Stop

                trainer.add_callback("on_epoch_end", stop)
            with contextlib.suppress(Stop):
                return model, rq, trainer.fit()
            return model, rq, None

        model, rq, full = fit("full")
        check(
            int(rq.num_rotations) == 1 and rq.rotation.device.type == device.type,
            f"one rotation, buffers on {rq.rotation.device}; angle "
            f"{float(full['rollingq_angle_deg'].iloc[0]):.1f}°; accuracy "
            f"{float(full['eval_accuracy'].iloc[-1]):.3f}",
        )
        state = load_checkpoint(Path(tmp) / "full" / "checkpoint.pt")
        cpu_model, _ = make(train, torch.device("cpu"))
        cpu_model.load_state_dict(state["model"])
        inputs = tuple(x[:64] for x in val.inputs.values())
        model.eval()
        cpu_model.eval()
        with torch.no_grad():
            here = model(*(x.to(device) for x in inputs)).logits.cpu()
            there = cpu_model(*inputs).logits
        gap = float((here - there).abs().max())
        check(gap < 1e-4, f"checkpoint reloaded on the CPU: logits differ by {gap:.1e}")
        fit("resumed", stop_after=1)  # files of epochs 1 and 2 written, then stopped
        _, _, resumed = fit("resumed")
        numeric = [c for c in full.columns if c not in ("train_time_s", "diagnostics_time_s")]
        a = full[numeric].astype(float).to_numpy()
        b = resumed[numeric].astype(float).to_numpy()
        diff = float(abs(a - b)[~(torch.isnan(torch.tensor(a)).numpy())].max())
        check(
            diff < 1e-3, f"resumed after epoch 2 = uninterrupted run: largest difference {diff:.1e}"
        )

        model.train()
        batches = [tuple(x.to(device) for x in inp) for inp, _ in train.batches(128)]
        on_device = anchor_statistics(
            model, batches, modalities=model.fusion_layout(), layer="fusion"
        )
        cpu_copy = copy.deepcopy(model).cpu()
        on_cpu = anchor_statistics(
            cpu_copy,
            [tuple(x.cpu() for x in b) for b in batches],
            modalities=cpu_copy.fusion_layout(),
            layer="fusion",
        )
        err = max(
            float((on_device.query_mean - on_cpu.query_mean).abs().max()),
            float((on_device.key_mean - on_cpu.key_mean).abs().max()),
        )
        check(err < 1e-4, f"frozen anchor pass, device vs CPU: q̄ and μ_m differ by {err:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (use --device cpu for a dry run)")
        return
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}, torch {torch.__version__}")
    warnings.simplefilter("ignore", UserWarning)
    if device.type == "cuda":
        kernel_edit(device)
    training(device)
    print("all checks passed" if not FAILURES else f"{len(FAILURES)} check(s) FAILED")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
