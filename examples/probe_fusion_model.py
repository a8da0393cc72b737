"""Probe a late-fusion Transformer during a few training steps, then read its modality bias.

Run: ``python examples/probe_fusion_model.py`` (CPU, a few seconds). The model has random
weights and the data is random: the point is the workflow — attach a probe around a training
loop, read the per-epoch result, reset, and restrict capture to the CLS query, which is all the
RollingQ diagnostics need and makes capture nearly free.
"""

from __future__ import annotations

import torch

import attnprobe as ap
from attnprobe.models import LateFusionTransformer


def main() -> None:
    torch.manual_seed(0)
    lengths = {"audio": 12, "video": 20}
    model = LateFusionTransformer({"audio": 16, "video": 24}, lengths, num_classes=5, dim=32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    audio = torch.randn(64, lengths["audio"], 16)  # (N, La, 16)
    video = torch.randn(64, lengths["video"], 24)  # (N, Lv, 24)
    labels = torch.randint(0, 5, (64,))

    probe = ap.probe(model, modalities=model.fusion_layout(), layers="fusion", queries="cls")
    probe.attach()
    try:
        for epoch in range(3):
            model.train()
            for start in range(0, 64, 16):
                batch = slice(start, start + 16)
                loss = torch.nn.functional.cross_entropy(
                    model(audio[batch], video[batch]), labels[batch]
                )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            layer = probe.result()["fusion"]
            share = dict(zip(layer.key_groups, layer.mass[0, 0].tolist(), strict=True))
            print(f"epoch {epoch}: CLS attention mass", {k: round(v, 4) for k, v in share.items()})
            probe.reset()
    finally:
        probe.close()


if __name__ == "__main__":
    main()
