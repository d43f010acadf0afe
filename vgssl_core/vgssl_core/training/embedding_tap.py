"""The retrieval descriptors a training step computes anyway, kept for next epoch's positives.

Feature-nearest positives (``data.positive: feature-nearest``) need the current model's
descriptor of each sampled query and of its candidate positives before every epoch. The SSL
step already runs the network on every query and positive of its batch; forward hooks on the
descriptor network (and its momentum copy: MoCo v2 sends the positive through that one only)
copy what the searched descriptor is (the head's output, or with ``search_projection: false``
the descriptor layer's) for the two views of the batch, detached and left on the device. Only
where that equals a description (``comparable_sides``): a view through batch-statistics
BatchNorm, or an augmented one, is another descriptor, and choosing from a mix of those and
descriptions picks other positives than a refresh would.

``flush`` moves them to the sampler's ``KeptEmbeddings`` at the epoch's end and at each
checkpoint, not each step (on a GPU every copy to the host waits for the device). Under DDP it
first all-gathers them: every rank then keeps the same descriptors, in one order (step, then
rank), and chooses the same positives.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from vgssl_core.data.geopairs import QUERY, GeoPair, GeoPairSampler

SIDE = {0: "queries", 1: "database"}


def comparable_sides(model: nn.Module, augment: dict[str, Any], batchnorm: str) -> tuple[str, ...]:
    """The sides whose training-step descriptors equal what a description (eval mode, plain
    view) would give with the step's weights: none where a BatchNorm of the searched path uses
    batch statistics (``trainer.batchnorm: train`` with a BatchNorm backbone, or a head BatchNorm
    in a searched projection); queries when their view is not augmented; database positives when
    they are not (``augment_positive`` off) and no batch flip is applied. Database negatives are
    always augmented: never kept.

    Why the gate: on the tiny world (wacv-r50-simclr at 96x128, random weights) positives chosen
    from training-step descriptors agreed with a full refresh on 52 % of the queries (batch-statistics
    BatchNorm) and on 60-72 % (frozen BatchNorm, augmented queries), where descriptions one epoch
    old agreed on 83-95 % (frozen BatchNorm)."""
    searched = [model.backbone, model.aggregation] + ([model.head] if model.config.get("search_projection", True) else [])
    norms = [m for part in searched for m in part.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    backbone_norms = {id(m) for m in model.backbone.modules()}
    if any(id(m) not in backbone_norms or batchnorm == "train" for m in norms):
        return ()
    identity = all(float(augment.get(k, 0.0)) == 0.0 for k in (
        "crop_scale", "perspective", "rotation_deg", "hflip_p", "batch_hflip_p", "brightness", "contrast",
        "saturation", "hue"))
    sides = ("queries",) if identity else ()
    if not augment.get("augment_positive", False) and float(augment.get("batch_hflip_p", 0.0)) == 0.0:
        sides += ("database",)
    return sides


class EmbeddingTap:
    def __init__(self, method: nn.Module, sides: tuple[str, ...] = ("queries", "database")) -> None:
        self.sides = sides
        self.active = False
        self._inputs: dict[int, Tensor] = {}
        self._outputs: list[tuple[int, Tensor, Tensor]] = []  # (network rank, images, descriptors)
        self._pending: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []  # side, index, epoch (CPU), descriptors (device)
        nets = [net for net in (method.model, getattr(method, "momentum_model", None)) if net is not None]
        for rank, net in enumerate(nets):  # the trained network's descriptors first, the momentum copy's after
            source = net if net.config.get("search_projection", True) else net.aggregation
            net.register_forward_pre_hook(self._remember_input(rank))
            source.register_forward_hook(self._keep_output(rank))

    def _remember_input(self, rank: int) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            if self.active and args:
                self._inputs[rank] = args[0]
        return hook

    def _keep_output(self, rank: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if self.active and rank in self._inputs and isinstance(output, Tensor):
                self._outputs.append((rank, self._inputs.pop(rank), output.detach()))
        return hook

    def _descriptors_of(self, images: Tensor) -> Tensor | None:
        found = [(rank, out) for rank, seen, out in self._outputs if seen is images]
        return min(found, key=lambda x: x[0])[1] if found else None

    def record(self, pairs: list[GeoPair], view_a: Tensor, view_b: Tensor, epoch: int) -> None:
        """After a step's loss: the descriptors of its two views, by image (queries' view a,
        positives' view b; a database negative's second view)."""
        a, b = self._descriptors_of(view_a), self._descriptors_of(view_b)
        self._outputs.clear()
        self._inputs.clear()
        if len(pairs) != len(view_a):
            raise RuntimeError(f"embedding tap: {len(pairs)} planned pairs for a batch of {len(view_a)}")
        queries = [i for i, p in enumerate(pairs) if p.kind == QUERY]
        rows: list[tuple[int, list[int], list[int], Tensor | None]] = []
        if "queries" in self.sides:  # the query's view
            rows.append((0, queries, [pairs[i].a for i in queries], a))
        if "database" in self.sides:  # the positive's view (a database negative's are augmented)
            rows.append((1, queries, [pairs[i].b for i in queries], b))
        for side, positions, indices, desc in rows:
            if desc is None or not positions:
                continue
            self._pending.append((torch.full((len(indices),), side, dtype=torch.int64),
                                  torch.tensor(indices, dtype=torch.int64),
                                  torch.full((len(indices),), epoch, dtype=torch.int64),
                                  desc[positions].float()))

    def flush(self, sampler: GeoPairSampler, all_gather: Callable[[Tensor], Tensor] | None, world: int) -> None:
        """Hand the pending descriptors to ``sampler.keep`` (a collective under DDP: every rank
        calls it at the same points: epoch ends and checkpoints)."""
        pending, self._pending = self._pending, []
        if world > 1:  # every rank holds the same number of rows (equal slices): gather, then step-major order
            device = pending[0][3].device if pending else torch.device("cpu")
            parts = [torch.cat([p[k] for p in pending]).to(device) if pending else None for k in range(4)]
            if parts[0] is None:
                return
            gathered = [all_gather(t) for t in parts]  # [world, N, ...]
            order = lambda t: t.transpose(0, 1).reshape(-1, *t.shape[2:])  # noqa: E731 (n, rank) order
            side, index, epoch, desc = (order(t).cpu() for t in gathered)
        elif pending:
            side, index, epoch, desc = (torch.cat([p[k] for p in pending]).cpu() for k in range(4))
        else:
            return
        side, index, epoch, desc = side.numpy(), index.numpy(), epoch.numpy(), desc.float().numpy()
        for tag in np.unique(epoch):
            for s, name in SIDE.items():
                rows = np.flatnonzero((epoch == tag) & (side == s))
                if len(rows):
                    sampler.keep(name, index[rows], desc[rows], int(tag))
