"""RollingQ: rotate the fusion query towards an anchor between the modalities' mean keys.

Ni, Wei, Liu, Chen, Peng, Lin, Hu. *RollingQ: Reviving the Cooperation Dynamics in Multimodal
Transformer*, ICML 2025, arXiv 2506.11465 (algorithm as summarised in
``docs/concepts/rollingq.md``). A learned fusion query that stopped adapting to its input is
rotated, at the end of a training epoch whose attention imbalance rate (AIR) reaches ``β``,
so that its mean points at an anchor between the modalities' normalised mean keys. The rotation
``R`` is a frozen buffer: no gradient, no weight decay, but the forward pass uses ``R·q`` so
gradients flow *through* it into the query projection and the CLS token. ``R`` and the rotation
counter live in the ``state_dict`` (a reloaded model keeps its rotation).

Where it applies: the query row at ``position`` of any attention module attnprobe can capture
(the bundled `attnprobe.models.FusionAttention`, modules calling
``F.scaled_dot_product_attention``, torch ``nn.MultiheadAttention``, HuggingFace attention
modules), by changing the query its attention kernel receives through the module's capture
adapter (`attnprobe.capture.Adapter.edit_query`).

The math is in `attnprobe.functional` (`rotation_between`, `rollingq_anchor`,
`angle_between`) and the statistics it reads in `attnprobe.metrics` (`cosines`, `air`,
`group_indices`); this module holds the state and the epoch-end decision.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from attnprobe._distributed import broadcast
from attnprobe.capture import adapter_for
from attnprobe.errors import AnalysisError, ProbeConfigError
from attnprobe.functional import (
    RotationConstruction,
    angle_between,
    rollingq_anchor,
    rotation_between,
)
from attnprobe.labels import InputLayout, ModalityLayout
from attnprobe.metrics import air, cosines, group_indices
from attnprobe.results import LayerResult
from attnprobe.runner import run_probed

__all__ = ["RollingQ", "RotationPlan", "RotationStep", "anchor_statistics"]

AnchorSource = Literal["frozen", "running"]


@dataclass(frozen=True)
class RotationPlan:
    """The rotation RollingQ would apply, computed from statistics without changing anything.

    Shapes: ``H'`` rotated heads (1, or the heads with ``per_head=True``), ``M`` modalities,
    ``D`` head size. All float64.
    """

    query_mean: Tensor
    """``[H', D]`` the mean query ``q̄`` (as the kernel sees it, current rotation included)."""
    key_means: Tensor
    """``[H', M, D]`` the mean key ``μ_m`` of each modality."""
    cosines: Tensor
    """``[H', M]`` ``E_i cos(q, k̄ᵐ_i)`` per modality (from the AIR statistics)."""
    alpha: Tensor
    """``[H', M]`` the anchor weights ``α``."""
    anchor: Tensor
    """``[H', D]`` the anchor ``q_b`` (norm ``‖q̄‖``)."""
    rotation: Tensor
    """``[H', D, D]`` ``W`` with ``W q̄ = q_b``."""

    @property
    def angle(self) -> Tensor:
        """``[H']`` the angle between ``q̄`` and the anchor, in degrees."""
        return angle_between(self.query_mean, self.anchor)


@dataclass(frozen=True)
class RotationStep:
    """The outcome of one epoch-end check (`RollingQ.step`)."""

    epoch: int | None
    modalities: tuple[str, ...]
    air: tuple[float, ...]
    """Per rotated head: ``cos_a − cos_b`` (two modalities) or ``max_m cosᵐ − min_m cosᵐ``."""
    rotated: bool
    reason: str
    """``"rotated"``, ``"below beta"`` or ``"max_rotations reached"``."""
    num_rotations: int
    """The counter after this step."""
    alpha: tuple[tuple[float, ...], ...] = ()
    """Per rotated head, the anchor weight of each modality (empty when not rotated)."""
    angle: tuple[float, ...] = ()
    """Per rotated head, the rotation angle in degrees (empty when not rotated)."""

    def to_dict(self) -> dict[str, float | int | bool | str]:
        """Flat scalars for a metrics row: ``rollingq_air`` (mean over heads),
        ``rollingq_rotated``, ``rollingq_num_rotations``, ``rollingq_angle_deg``,
        ``rollingq_alpha_<modality>`` (NaN when not rotated)."""
        row: dict[str, float | int | bool | str] = {
            "rollingq_air": sum(self.air) / len(self.air),
            "rollingq_rotated": self.rotated,
            "rollingq_num_rotations": self.num_rotations,
            "rollingq_angle_deg": sum(self.angle) / len(self.angle) if self.angle else math.nan,
        }
        for m, name in enumerate(self.modalities):
            values = [a[m] for a in self.alpha]
            row[f"rollingq_alpha_{name}"] = sum(values) / len(values) if values else math.nan
        return row


class RollingQ(nn.Module):
    """The RollingQ corrector: a frozen rotation of one query row, updated at epoch ends.

    Args:
        head_dim: size ``D`` of one head's query.
        modalities: the key groups to balance (two in the paper; more is an extension).
        num_heads: heads of the attention module. With more than one, pass ``per_head=True``.
        per_head: (extension) one rotation per head, each from that head's AIR and means.
        query: the query group of the probe statistics the rotated row belongs to
            (``"cls"``).
        position: index of the rotated query row in each attention call (0: the CLS token).
        beta: AIR threshold ``β``: rotate only when ``|AIR| ≥ β`` (reference: 0).
        rho: anchor sharpness ``ρ`` (reference: 0, the bisector; the code calls it ``sigma``).
        max_rotations: at most this many rotations (reference: 1; the paper uses up to 3).
        construction: ``"plane"`` (minimal rotation in ``span{q̄, q_b}``, default) or ``"svd"``
            (the reference construction, arbitrary off ``q̄``); both give the same rotated
            mean query, not the same rotated per-sample queries.
        method: deprecated spelling of ``construction``.

    Buffers (in the ``state_dict``): ``rotation`` ``[H', D, D]`` (identity at first) and
    ``num_rotations``. Until the first rotation the forward pass returns its input unchanged,
    so a model with RollingQ computes exactly what the same model without it computes.

    Examples:
        >>> import torch, attnprobe as ap
        >>> from attnprobe.models import LateFusionTransformer
        >>> model = LateFusionTransformer({"audio": 6, "video": 8}, {"audio": 4, "video": 3}, 5)
        >>> rq = ap.RollingQ(head_dim=64, modalities=("audio", "video")).attach(model, "fusion")
        >>> batches = [(torch.randn(8, 4, 6), torch.randn(8, 3, 8)) for _ in range(3)]
        >>> stats = ap.rollingq.anchor_statistics(
        ...     model, batches, modalities=model.fusion_layout(), layer="fusion")
        >>> step = rq.step(stats)
        >>> step.rotated, step.num_rotations
        (True, 1)
        >>> sorted(k for k in model.state_dict() if "rollingq" in k)
        ['fusion.rollingq.num_rotations', 'fusion.rollingq.rotation']
    """

    rotation: Tensor
    num_rotations: Tensor

    def __init__(
        self,
        head_dim: int,
        *,
        modalities: Sequence[str],
        num_heads: int = 1,
        per_head: bool = False,
        query: str = "cls",
        position: int = 0,
        beta: float = 0.0,
        rho: float = 0.0,
        max_rotations: int = 1,
        construction: RotationConstruction = "plane",
        method: RotationConstruction | None = None,
    ) -> None:
        if method is not None:
            warnings.warn(
                f"RollingQ(method={method!r}) is deprecated; use "
                f"RollingQ(construction={method!r}).",
                DeprecationWarning,
                stacklevel=2,
            )
            construction = method
        super().__init__()
        modalities = tuple(modalities)
        if len(modalities) < 2 or len(set(modalities)) != len(modalities):
            raise ProbeConfigError(
                f"RollingQ: expected at least two distinct modalities to balance, received "
                f"{list(modalities)}."
            )
        if num_heads > 1 and not per_head:
            raise ProbeConfigError(
                f"RollingQ: the paper's rotation acts on a single-head query; this layer has "
                f"{num_heads} heads. Pass per_head=True (extension: one rotation per head, from "
                "that head's AIR and mean keys)."
            )
        if head_dim < 2 or num_heads < 1:
            raise ProbeConfigError(
                f"RollingQ: expected head_dim >= 2 and num_heads >= 1, received head_dim="
                f"{head_dim}, num_heads={num_heads}."
            )
        if construction not in ("plane", "svd"):
            raise ProbeConfigError(
                f"RollingQ: expected construction 'plane' or 'svd', received {construction!r}."
            )
        if max_rotations < 0 or beta < 0:
            raise ProbeConfigError(
                f"RollingQ: expected max_rotations >= 0 and beta >= 0, received "
                f"max_rotations={max_rotations}, beta={beta}."
            )
        self.head_dim, self.num_heads, self.per_head = head_dim, num_heads, per_head
        self.modalities, self.query, self.position = modalities, query, position
        self.beta, self.rho, self.max_rotations = beta, rho, max_rotations
        self.construction: RotationConstruction = construction
        rows = num_heads if per_head else 1
        self.register_buffer("rotation", torch.eye(head_dim).repeat(rows, 1, 1))  # (H', D, D)
        self.register_buffer("num_rotations", torch.zeros((), dtype=torch.long))
        self._rotated = False  # mirrors num_rotations > 0 without a device sync per forward
        self._attachment: tuple[nn.Module, contextlib.ExitStack] | None = None

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, modalities={list(self.modalities)}, "
            f"num_heads={self.num_heads}, per_head={self.per_head}, position={self.position}, "
            f"beta={self.beta}, rho={self.rho}, max_rotations={self.max_rotations}, "
            f"construction={self.construction!r}"
        )

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[no-untyped-call]
        self._rotated = bool(self.num_rotations.item() > 0)

    # -- the forward rotation ------------------------------------------------------------------
    def forward(self, query: Tensor) -> Tensor:
        """``query`` ``[B, H, Lq, D]`` with row `position` replaced by ``R·q`` (per head)."""
        if not self._rotated:
            return query
        if query.dim() != 4 or query.shape[-1] != self.head_dim:
            raise ProbeConfigError(
                f"RollingQ: expected queries [B, H, Lq, {self.head_dim}], received "
                f"{tuple(query.shape)}; build RollingQ with the layer's head size."
            )
        if self.per_head and query.shape[1] != self.num_heads:
            raise ProbeConfigError(
                f"RollingQ: built for {self.num_heads} heads, the layer has {query.shape[1]}."
            )
        length = query.shape[2]
        pos = self.position % length if -length <= self.position < length else None
        if pos is None:
            raise ProbeConfigError(
                f"RollingQ: position {self.position} is outside the {length} query rows."
            )
        rows = query[:, :, pos]  # (B, H, D)
        rotation = self.rotation.to(query.dtype)  # (H', D, D)
        if rotation.shape[0] == 1:  # one matrix product: (B·H, D) @ (D, D)ᵀ, row by row R·q
            rotated = rows @ rotation[0].transpose(0, 1)  # (B, H, D)
        else:  # per head: R_h·q_h
            rotated = torch.einsum("hde,bhe->bhd", rotation, rows)  # (B, H, D)
        return torch.cat(
            [query[:, :, :pos], rotated.unsqueeze(2), query[:, :, pos + 1 :]], dim=2
        )  # (B, H, Lq, D)

    # -- attaching to a model ------------------------------------------------------------------
    def attach(self, model: nn.Module, layer: str) -> RollingQ:
        """Rotate the query of the attention module at path ``layer`` of ``model``.

        The corrector becomes the submodule ``<layer>.rollingq`` (so its buffers are in the
        model's ``state_dict``). The module's attention kernel gets its query changed through
        the module's capture adapter (`attnprobe.capture.Adapter.edit_query`; a HuggingFace
        model's config then names attnprobe's attention wrapper while attached). Attach before
        loading a checkpoint that holds a rotation.

        Returns:
            ``self``.
        """
        if self._attachment is not None:
            raise ProbeConfigError(
                "RollingQ.attach: this corrector is already attached; call detach() first."
            )
        modules = dict(model.named_modules())
        if layer not in modules:
            near = [n for n in modules if n.endswith(layer.split(".")[-1])][:4]
            raise ProbeConfigError(
                f"RollingQ.attach: no module {layer!r} in the model; expected a path from "
                f"model.named_modules(), e.g. {near or list(modules)[1:4]}."
            )
        module = modules[layer]
        if isinstance(getattr(module, "rollingq", None), RollingQ):
            raise ProbeConfigError(f"RollingQ.attach: {layer!r} already has a RollingQ.")
        adapter = adapter_for(module)
        if adapter is None:
            raise ProbeConfigError(
                f"RollingQ.attach: {layer!r} ({type(module).__name__}) is not an attention "
                "module attnprobe knows; pick its attention submodule or register an adapter."
            )
        self._check_shape(layer, module, adapter.attention_shape(module))
        slot = hasattr(module, "rollingq")  # a module may keep `rollingq = None` for it
        if slot and getattr(module, "rollingq") is not None:  # noqa: B009
            raise ProbeConfigError(
                f"RollingQ.attach: {layer!r} already has an attribute 'rollingq'."
            )
        stack = contextlib.ExitStack()
        try:
            adapter.edit_query(module, self, stack, name=layer)
            if slot:
                delattr(module, "rollingq")
            module.add_module("rollingq", self)
            if slot:  # unwinds last: the free slot comes back
                stack.callback(setattr, module, "rollingq", None)
            stack.callback(delattr, module, "rollingq")
        except BaseException:
            stack.close()
            raise
        self._attachment = (module, stack)
        return self

    def _check_shape(self, layer: str, module: nn.Module, shape: tuple[int, int] | None) -> None:
        """Refuse at ``attach`` a layer whose heads or head size this corrector does not fit
        (instead of failing at the first rotated forward, after an epoch of training)."""
        if shape is None:
            return
        heads, size = shape
        fix = (
            f"build it as RollingQ(head_dim={size}, num_heads={heads}"
            + (", per_head=True" if heads > 1 else "")
            + ", ...)"
        )
        if size != self.head_dim:
            raise ProbeConfigError(
                f"RollingQ.attach: {layer!r} ({type(module).__name__}) has head size {size}, "
                f"this corrector was built for head_dim={self.head_dim}; {fix}."
            )
        if heads > 1 and not self.per_head:
            raise ProbeConfigError(
                f"RollingQ.attach: {layer!r} ({type(module).__name__}) has {heads} heads; the "
                f"paper's rotation acts on a single-head query. {fix[0].upper()}{fix[1:]} "
                "(extension: one rotation per head)."
            )
        if self.per_head and heads != self.num_heads:
            raise ProbeConfigError(
                f"RollingQ.attach: {layer!r} ({type(module).__name__}) has {heads} heads, this "
                f"corrector was built for num_heads={self.num_heads}; {fix}."
            )

    def detach(self) -> None:
        """Undo `attach` (the rotation stays in this object's buffers)."""
        attachment, self._attachment = self._attachment, None
        if attachment is None:
            return
        _, stack = attachment
        stack.close()

    # -- the epoch-end step --------------------------------------------------------------------
    def air(self, stats: LayerResult) -> Tensor:
        """``[H']`` AIR of the rotated query from probe statistics: ``cos_a − cos_b`` for two
        modalities (`attnprobe.metrics.air`), ``max_m cosᵐ − min_m cosᵐ`` for more (float64)."""
        cos = self._cosines(stats)  # (H', M); raises when the statistics have no AIR
        if len(self.modalities) == 2:
            a, b = self.modalities
            values = air(stats, self.query, a, b)  # (H,)
            return values if self.per_head else values[:1]  # (H',)
        return cos.max(-1).values - cos.min(-1).values

    def due(self, stats: LayerResult) -> bool:
        """Whether `step` would rotate with these statistics: fewer than ``max_rotations``
        rotations so far and ``|AIR| ≥ β`` for at least one rotated head."""
        if int(self.num_rotations.item()) >= self.max_rotations:
            return False
        return bool((self.air(stats).abs() >= self.beta).any())

    def plan(self, stats: LayerResult, *, anchor: LayerResult | None = None) -> RotationPlan:
        """The rotation `step` would apply: AIR cosines from ``stats``, ``q̄`` and ``μ_m``
        from ``anchor`` (a frozen pass, `anchor_statistics`) or, when None, from ``stats``
        (the running statistics of the epoch just trained)."""
        source = stats if anchor is None else anchor
        cos = self._cosines(stats)  # (H', M)
        iq, ik = self._indices(source)
        query_mean = source.query_mean[:, iq].double()  # (H, D)
        group = source.num_heads // source.num_kv_heads
        key_means = source.key_mean.double()[:, ik]  # (Hk, M, D)
        key_means = key_means.repeat_interleave(group, dim=0)  # (H, M, D)
        if not self.per_head:
            query_mean, key_means = query_mean[:1], key_means[:1]  # (1, D), (1, M, D)
        bad = ~torch.isfinite(query_mean).all(-1) | ~torch.isfinite(key_means).all((-1, -2))
        if bool(bad.any()) or bool((key_means.norm(dim=-1) == 0).any()):
            raise AnalysisError(
                f"RollingQ: the statistics of layer {source.name!r} have no mean query of "
                f"group {self.query!r} or no mean key of {list(self.modalities)} (no tokens "
                "seen, or all-zero keys); run the data through the probed layer first."
            )
        target, alpha = rollingq_anchor(key_means, query_mean, cos, self.rho)  # (H', D), (H', M)
        if not bool(torch.isfinite(target).all()):
            raise AnalysisError(
                f"RollingQ: the weighted normalised mean keys of layer {source.name!r} cancel "
                "out (antiparallel mean keys with equal weights): there is no anchor direction."
            )
        rotation = rotation_between(query_mean, target, self.construction)  # (H', D, D)
        return RotationPlan(query_mean, key_means, cos, alpha, target, rotation)

    def step(
        self, stats: LayerResult, *, anchor: LayerResult | None = None, epoch: int | None = None
    ) -> RotationStep:
        """The epoch-end check (``docs/concepts/rollingq.md``): if fewer than
        ``max_rotations`` rotations were applied and ``|AIR| ≥ β``, rotate: ``R ← W·R``,
        ``n ← n + 1``.

        Args:
            stats: the probe's statistics of the epoch (the layer's `LayerResult`, probed with
                ``queries`` including `query` and ``key_stats=True``); AIR comes from it.
            anchor: statistics of a frozen pass for ``q̄`` and ``μ_m`` (reference behaviour);
                None takes them from ``stats``.
            epoch: recorded in the returned step.

        Under ``torch.distributed`` pass statistics already summed over ranks
        (``Probe.sync``); the new rotation is then broadcast from rank 0 so that every rank
        holds the same bits.
        """
        air = self.air(stats)  # (H',)
        values = tuple(float(a) for a in air)
        done = int(self.num_rotations.item())
        if done >= self.max_rotations:
            return RotationStep(
                epoch, self.modalities, values, False, "max_rotations reached", done
            )
        trigger = air.abs() >= self.beta  # (H',)
        if not bool(trigger.any()):
            return RotationStep(epoch, self.modalities, values, False, "below beta", done)
        plan = self.plan(stats, anchor=anchor)
        eye = torch.eye(self.head_dim, dtype=torch.float64)
        update = torch.where(trigger.view(-1, 1, 1), plan.rotation, eye)  # (H', D, D)
        new = update @ self.rotation.detach().double().cpu()  # (H', D, D)
        self._set(new.to(self.rotation.dtype), done + 1)
        angle = torch.where(trigger, plan.angle, 0.0)
        return RotationStep(
            epoch,
            self.modalities,
            values,
            True,
            "rotated",
            done + 1,
            tuple(tuple(float(a) for a in row) for row in plan.alpha),
            tuple(float(a) for a in angle),
        )

    def _set(self, rotation: Tensor, count: int) -> None:
        with torch.no_grad():
            self.rotation.copy_(rotation.to(self.rotation.device))
            self.num_rotations.fill_(count)
            for buffer in (self.rotation, self.num_rotations):
                broadcast(buffer, src=0)  # every rank holds rank 0's bits
        self._rotated = bool(self.num_rotations.item() > 0)

    def _indices(self, stats: LayerResult) -> tuple[int, list[int]]:
        """The query group's and the modalities' indices in ``stats``, checking its heads."""
        indices = group_indices(stats, self.query, self.modalities, caller="RollingQ")
        heads = stats.num_heads
        if (self.per_head and heads != self.num_heads) or (not self.per_head and heads != 1):
            raise AnalysisError(
                f"RollingQ: built for {self.num_heads} head(s), but layer {stats.name!r} has "
                f"{heads}."
            )
        return indices

    def _cosines(self, stats: LayerResult) -> Tensor:
        """``[H', M]`` ``E_i cos(q̄_i, k̄ᵐ_i)`` of the rotated query (`attnprobe.metrics.cosines`),
        checked to be finite."""
        self._indices(stats)  # the groups and heads, with RollingQ's errors
        cos = cosines(stats, self.query, self.modalities)  # (H, M)
        if not bool(torch.isfinite(cos).all()):
            raise AnalysisError(
                f"RollingQ: layer {stats.name!r} has no AIR statistics for {self.query!r} vs "
                f"{list(self.modalities)} (no sample had tokens of every group)."
            )
        return cos if self.per_head else cos[:1]


def anchor_statistics(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    modalities: ModalityLayout | Mapping[str, int] | InputLayout,
    layer: str,
    query: str = "cls",
    inputs: Any = None,
) -> LayerResult:
    """The frozen pass of the reference: the model in eval mode, without gradients, over
    ``batches`` (`attnprobe.runner.run_probed`); returns the probed layer's statistics (``q̄``,
    ``μ_m``, AIR cosines).

    Args:
        model: the model (its train/eval mode is restored).
        batches: what to feed it, one item per forward: a tuple of positional inputs, a mapping
            of keyword inputs or one tensor (or anything ``inputs`` maps to those).
        modalities: the layer's token layout (as for `attnprobe.probe`).
        layer: the attention module's path.
        query: the query group to collect (only its rows are captured).
        inputs: ``inputs(batch) -> model inputs`` when batches also hold targets.

    Under ``torch.distributed`` the statistics are summed over ranks (each rank passes its
    shard of the data).

    Examples:
        >>> import torch
        >>> from attnprobe.models import LateFusionTransformer
        >>> model = LateFusionTransformer({"audio": 6, "video": 8}, {"audio": 4, "video": 3}, 5)
        >>> data = [((torch.randn(8, 4, 6), torch.randn(8, 3, 8)), torch.zeros(8))
        ...         for _ in range(2)]
        >>> stats = anchor_statistics(model, data, modalities=model.fusion_layout(), layer="fusion",
        ...                           inputs=lambda batch: batch[0])
        >>> stats.query_groups, stats.num_queries.tolist(), model.training
        (('cls',), [16.0], True)
    """
    fed = batches if inputs is None else (inputs(batch) for batch in batches)
    run = run_probed(model, fed, modalities=modalities, layers=layer, queries=query)
    return run.result.layers[0]
