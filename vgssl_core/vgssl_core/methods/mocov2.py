"""MoCo v2 on GeoPairs, with a place-aware queue."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vgssl_core.methods.base import MomentumMethod, check
from vgssl_core.models.network import DescriptorModel


class MoCoV2(MomentumMethod):
    """MoCo v2: InfoNCE between a query encoder and a momentum key encoder, queue of negatives.

    He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020,
    https://arxiv.org/abs/1911.05722, and Chen et al., "Improved Baselines with Momentum
    Contrastive Learning", 2020, https://arxiv.org/abs/2003.04297; on GeoPairs as in VG-SSL
    (WACV 2025). ``view_a`` goes through ``model`` (queries), ``view_b`` through the momentum copy
    (keys); keys then enter a FIFO queue of ``queue_size`` entries together with their place ids.

    Same-place masking: with GeoPairs, an older key of the *same place* as a query is another
    positive, not a negative; left in the softmax denominator it pushes apart images the loss
    is meant to pull together (a false negative). With ``mask_same_place`` such queue entries get
    logit -inf, i.e. they are removed from the denominator - "false negative elimination" of
    Huynh et al., "Boosting Contrastive Self-Supervised Learning with False Negative
    Cancellation", WACV 2022 (see also Chuang et al., "Debiased Contrastive Learning", NeurIPS
    2020). The queue starts as random unit vectors with place id -1 (never masked), as in MoCo.

    Defaults of the VG-SSL reference code (its MoCo v2): temperature 0.07, momentum 0.999
    (constant), queue 65536. Head: FC-1-2048 without BN. The queue is a non-persistent buffer
    (not in checkpoints; it refills within queue_size / batch steps after a resume).
    Single process: keys are not gathered across devices and there is no shuffle-BN.

    Examples:
        >>> method = MoCoV2(build_model({"head_layers": 1, "head_dim": 2048}), queue_size=65536)
        >>> loss = method.loss_pairs(view_a, view_b, place_ids); loss.backward(); optimizer.step()
        >>> method.after_optimizer_step(step, max_steps)  # EMA update of the key encoder
    """

    name = "mocov2"
    default_config = {"temperature": 0.07, "momentum": 0.999, "momentum_end": 1.0, "momentum_schedule": "constant",
                      "queue_size": 65536, "mask_same_place": True}
    model_defaults = {"head_layers": 1, "head_dim": 2048, "head_batchnorm": False}

    def __init__(self, model: DescriptorModel, temperature: float = 0.07, momentum: float = 0.999,
                 momentum_end: float = 1.0, momentum_schedule: str = "constant", queue_size: int = 65536,
                 mask_same_place: bool = True):
        super().__init__(model, momentum, momentum_end, momentum_schedule)
        check(temperature > 0, f"mocov2: temperature must be > 0, got {temperature}")
        check(queue_size >= 1, f"mocov2: queue_size must be >= 1, got {queue_size}")
        self.temperature, self.mask_same_place = float(temperature), bool(mask_same_place)
        self.config = {"temperature": float(temperature), "momentum": float(momentum), "momentum_end": float(momentum_end),
                       "momentum_schedule": momentum_schedule, "queue_size": int(queue_size),
                       "mask_same_place": bool(mask_same_place)}
        dim = model.embedding_dim
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1), persistent=False)
        self.register_buffer("queue_place_ids", torch.full((queue_size,), -1, dtype=torch.long), persistent=False)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long), persistent=False)

    def loss_pairs(self, view_a: Tensor, view_b: Tensor, place_ids: Tensor) -> Tensor:
        """InfoNCE of queries (view_a) against their keys (view_b) and the queue; then, in
        training mode with gradients enabled, the keys are enqueued with their place ids."""
        self._check_pairs(view_a, view_b, place_ids)
        self._ensure_synced()
        queries = F.normalize(self.model(view_a), dim=1)
        with torch.no_grad():
            keys = F.normalize(self.momentum_model(view_b), dim=1)
        loss = self.info_nce(queries, keys, place_ids)
        if self.training and torch.is_grad_enabled():
            self.enqueue(keys, place_ids)
        return loss

    def info_nce(self, queries: Tensor, keys: Tensor, place_ids: Tensor) -> Tensor:
        """Cross-entropy over [positive key, queue entries] / temperature; unit-norm inputs."""
        positive = (queries * keys).sum(dim=1, keepdim=True)  # [B, 1]
        negatives = queries @ self.queue.clone().T  # [B, K]; a copy: enqueue() writes in place
        if self.mask_same_place:
            same_place = place_ids.to(self.queue_place_ids.device)[:, None] == self.queue_place_ids[None, :]
            negatives = negatives.masked_fill(same_place, float("-inf"))
        logits = torch.cat([positive, negatives], dim=1) / self.temperature
        return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))

    @torch.no_grad()
    def enqueue(self, keys: Tensor, place_ids: Tensor) -> None:
        """Replace the oldest queue entries by ``keys`` [B, D] (unit norm) and their place ids."""
        size = self.queue.shape[0]
        keys, place_ids = keys[-size:], place_ids[-size:]
        index = (self.queue_ptr + torch.arange(len(keys), device=self.queue.device)) % size
        self.queue[index] = keys.to(self.queue)
        self.queue_place_ids[index] = place_ids.to(self.queue_place_ids)
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % size)
