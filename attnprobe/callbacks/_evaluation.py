"""Evaluation under corruption as a training callback: accuracy and attention shares on an
evaluation set, clean and with each input modality corrupted, at chosen epochs."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from attnprobe._batches import Data, mix, model_outputs, shard_batches
from attnprobe._calls import call_model
from attnprobe._distributed import all_reduce_sum
from attnprobe.callbacks._core import Callback
from attnprobe.corruption import corrupt
from attnprobe.errors import ProbeConfigError
from attnprobe.labels import ModalityLayout, as_layout
from attnprobe.metrics import shares
from attnprobe.runner import run_model, run_probed

__all__ = ["CorruptionEvaluation"]


class CorruptionEvaluation(Callback):
    """Accuracy and CLS attention shares on ``data``, clean and with each input modality
    corrupted (``x̃ = (1 − λ)x + λ·ε·σ_x``, `attnprobe.corruption.corrupt`, noise fixed per
    sample), and the unimodal probe heads' accuracy on the clean set.

    Args:
        data: a map-style dataset of ``(inputs, target)`` items, ``inputs`` one tensor per
            modality in the order the model takes them.
        inputs: the modality of each positional input.
        modalities: the fusion layer's token layout; None (with ``layer=None``) evaluates
            accuracy only.
        layer: path of the fusion attention module.
        query: the query group whose shares are reported.
        exclude: key groups left out of the shares.
        level: the corruption level ``λ``.
        seed: seeds the noise: sample ``i`` of modality ``m`` always gets the same noise, so the
            corrupted set is the same at every epoch and on any number of ranks.
        batch_size: per process (under ``torch.distributed`` each rank takes its share of every
            global batch and the counts are summed).
        every: evaluate after every this many epochs, and after the last one (``epochs``).
        epochs: the number of training epochs (None: only ``every`` decides).

    Columns: ``eval_accuracy``, ``unimodal_accuracy_<m>`` (a model whose output has
    ``.unimodal_logits``), ``eval_share_<g>``; per corrupted modality ``m``:
    ``eval_accuracy_<m>_corrupted``, ``eval_share_<g>_<m>_corrupted`` and ``delta_share_<m>``
    (the clean share of ``m`` minus its share when ``m`` is corrupted).
    """

    def __init__(
        self,
        data: Data,
        *,
        inputs: Sequence[str],
        modalities: ModalityLayout | Mapping[str, int] | None = None,
        layer: str | None = None,
        query: str = "cls",
        exclude: Sequence[str] = ("cls",),
        level: float = 0.5,
        seed: int = 0,
        batch_size: int = 64,
        every: int = 1,
        epochs: int | None = None,
    ) -> None:
        if (modalities is None) != (layer is None):
            raise ProbeConfigError(
                "CorruptionEvaluation: pass modalities=<the fusion layer's layout> with "
                f"layer=<its path>, or neither; received layer={layer!r}, modalities="
                f"{modalities!r}."
            )
        if every < 1 or batch_size < 1:
            raise ProbeConfigError(
                f"CorruptionEvaluation: expected every and batch_size >= 1, received {every}, "
                f"{batch_size}."
            )
        self.data = data
        self.inputs = tuple(inputs)
        self.layout = None if modalities is None else as_layout(modalities)
        self.layer, self.query = layer, query
        groups = self.layout.names if self.layout is not None else self.inputs
        self.modalities = tuple(g for g in groups if g not in set(exclude))
        self.level, self.seed = level, seed
        self.batch_size, self.every, self.epochs = batch_size, every, epochs
        self.model: nn.Module | None = None

    def on_fit_start(self, model: nn.Module) -> None:
        self.model = model

    def due(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (from 0) ends with an evaluation."""
        return (epoch + 1) % self.every == 0 or epoch + 1 == self.epochs

    def on_epoch_end(self, epoch: int, row: Mapping[str, Any]) -> dict[str, Any]:
        return self.evaluate() if self.due(epoch) else {}

    def evaluate(self) -> dict[str, float]:
        """The columns, now (each condition one `attnprobe.runner.run_probed` pass)."""
        model = self.model
        if model is None:
            raise ProbeConfigError("CorruptionEvaluation: evaluate before on_fit_start(model).")
        device = next(model.parameters()).device
        row: dict[str, float] = {}
        clean_share: dict[str, float] = {}
        for condition in ("clean", *self.inputs):
            share: dict[str, float] = {}
            order = torch.arange(len(self.data))
            batches = shard_batches(self.data, order, self.batch_size, device, with_indices=True)
            count = functools.partial(self._counts, condition)
            if self.layer is None or self.layout is None:
                outputs = run_model(model, batches, call=count)
            else:
                run = run_probed(
                    model,
                    batches,
                    call=count,
                    modalities=self.layout,
                    layers=self.layer,
                    queries=self.query,
                    key_stats=False,
                )
                outputs = run.outputs
                mean = shares(run.result.layers[0], self.query, self.modalities).mean(0)  # (M,)
                share = {m: float(mean[i]) for i, m in enumerate(self.modalities)}
            sums: dict[str, Tensor] = {}
            for counts in outputs:
                for key, value in counts.items():
                    sums[key] = sums.get(key, torch.zeros((), dtype=torch.float64)) + value
            names = sorted(sums)
            flat = torch.stack([sums[k].double().cpu() for k in names])  # (K,)
            all_reduce_sum(flat)
            total = dict(zip(names, flat.tolist(), strict=True))
            if condition == "clean":
                row["eval_accuracy"] = total["fused"] / total["n"]
                for m in self.inputs:
                    if f"unimodal_{m}" in total:
                        row[f"unimodal_accuracy_{m}"] = total[f"unimodal_{m}"] / total["n"]
                for m, value in share.items():
                    row[f"eval_share_{m}"] = value
                clean_share = share
            else:
                row[f"eval_accuracy_{condition}_corrupted"] = total["fused"] / total["n"]
                for m, value in share.items():
                    row[f"eval_share_{m}_{condition}_corrupted"] = value
                if condition in clean_share:
                    row[f"delta_share_{condition}"] = clean_share[condition] - share[condition]
        return row

    def _counts(self, condition: str, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        """One batch (``(indices, (inputs, target))``) under ``condition`` (``"clean"`` or the
        corrupted input modality): correct predictions of the fused head (and, clean, of the
        unimodal heads) and the number of samples ``n``."""
        indices, (inputs, target) = batch
        if condition != "clean":
            inputs = self._corrupt(inputs, condition, indices)
        logits, unimodal = model_outputs(call_model(model, inputs))
        counts = {"fused": (logits.argmax(-1) == target).sum()}
        if condition == "clean":
            for m, extra in unimodal.items():
                counts[f"unimodal_{m}"] = (extra.argmax(-1) == target).sum()
        counts["n"] = torch.tensor(len(target))
        return counts

    def _corrupt(
        self, inputs: tuple[Tensor, ...], modality: str, indices: Tensor
    ) -> tuple[Tensor, ...]:
        """Corrupt one input with noise drawn per sample from ``(seed, sample, modality)``."""
        position = self.inputs.index(modality)
        x = inputs[position]
        rows = []
        for j, index in enumerate(indices.tolist()):
            g = torch.Generator().manual_seed(mix(self.seed, index, position + 1))
            rows.append(corrupt(x[j : j + 1], self.level, g))
        changed = list(inputs)
        changed[position] = torch.cat(rows)  # B × (1, ...) -> (B, ...)
        return tuple(changed)
