"""MoCo v2 on GeoPairs, with a place-aware queue."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vgssl_core.data.geo import EVAL_RADIUS_M
from vgssl_core.methods.base import MomentumMethod, check
from vgssl_core.methods.distributed import gather_cat
from vgssl_core.models.network import DescriptorModel


class MoCoV2(MomentumMethod):
    """MoCo v2: InfoNCE between a query encoder and a momentum key encoder, queue of negatives.

    He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020,
    https://arxiv.org/abs/1911.05722, and Chen et al., "Improved Baselines with Momentum
    Contrastive Learning", 2020, https://arxiv.org/abs/2003.04297; on GeoPairs as in VG-SSL
    (WACV 2025). ``view_a`` goes through ``model`` (queries), ``view_b`` through the momentum copy
    (keys); keys then enter a FIFO queue of ``queue_size`` entries together with the UTM position
    of the image each key was made from.

    Same-place masking: with GeoPairs, an older key of the *same place* as a query is another
    positive, not a negative; left in the softmax denominator it pushes apart images the loss
    is meant to pull together (a false negative). With ``mask_same_place`` every queue key whose
    image lies within ``mask_radius_m`` (the evaluation radius, 25 m) of the query's image gets
    logit -inf, i.e. it is removed from the denominator - "false negative elimination" of
    Huynh et al., "Boosting Contrastive Self-Supervised Learning with False Negative
    Cancellation", WACV 2022 (see also Chuang et al., "Debiased Contrastive Learning", NeurIPS
    2020). The distance is the true one (not a grid cell: 25 m cells caught 31% of the keys
    within 25 m). The queue starts as random unit vectors at position NaN (never masked), as in MoCo.

    Defaults of the VG-SSL reference code (its MoCo v2): temperature 0.07, momentum 0.999
    (constant), queue 65536. Head: FC-1-2048 without BN. The queue is a non-persistent buffer
    (not in checkpoints; it refills within queue_size / batch steps after a resume).
    Under DDP the keys of all ranks enter the queue, with their positions, in rank order (the
    global batch's order), so every rank holds the queue one process would. There is no
    shuffle-BN (the default head has no BatchNorm).

    Examples:
        >>> method = MoCoV2(build_model({"head_layers": 1, "head_dim": 2048}), queue_size=65536)
        >>> loss = method.loss_pairs(view_a, view_b, positions)  # positions [B, 2, 2] UTM; loss.backward(); optimizer.step()
        >>> method.after_optimizer_step(step, max_steps)  # EMA update of the key encoder
    """

    name = "mocov2"
    default_config = {"temperature": 0.07, "momentum": 0.999, "momentum_end": 1.0, "momentum_schedule": "constant",
                      "queue_size": 65536, "mask_same_place": True, "mask_radius_m": EVAL_RADIUS_M}
    model_defaults = {"head_layers": 1, "head_dim": 2048, "head_batchnorm": False}

    def __init__(self, model: DescriptorModel, temperature: float = 0.07, momentum: float = 0.999,
                 momentum_end: float = 1.0, momentum_schedule: str = "constant", queue_size: int = 65536,
                 mask_same_place: bool = True, mask_radius_m: float = EVAL_RADIUS_M):
        super().__init__(model, momentum, momentum_end, momentum_schedule)
        check(temperature > 0, f"mocov2: temperature must be > 0, got {temperature}")
        check(queue_size >= 1, f"mocov2: queue_size must be >= 1, got {queue_size}")
        check(mask_radius_m > 0, f"mocov2: mask_radius_m must be > 0, got {mask_radius_m}")
        self.temperature, self.mask_same_place = float(temperature), bool(mask_same_place)
        self.mask_radius_m = float(mask_radius_m)
        self.config = {"temperature": float(temperature), "momentum": float(momentum), "momentum_end": float(momentum_end),
                       "momentum_schedule": momentum_schedule, "queue_size": int(queue_size),
                       "mask_same_place": bool(mask_same_place), "mask_radius_m": float(mask_radius_m)}
        dim = model.embedding_dim
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1), persistent=False)
        self.register_buffer("queue_positions", torch.full((queue_size, 2), float("nan"), dtype=torch.float64),
                             persistent=False)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long), persistent=False)

    def loss_pairs(self, view_a: Tensor, view_b: Tensor, positions: Tensor) -> Tensor:
        """InfoNCE of queries (view_a) against their keys (view_b) and the queue; then, in
        training mode with gradients enabled, the keys are enqueued with their images' positions."""
        self._check_pairs(view_a, view_b, positions)
        self._ensure_synced()
        queries = F.normalize(self.model(view_a), dim=1)
        with torch.no_grad():
            keys = F.normalize(self.momentum_model(view_b), dim=1)
        loss = self.info_nce(queries, keys, positions[:, 0])
        if self.training and torch.is_grad_enabled():
            key_positions = positions[:, 1].to(self.queue_positions)
            self.enqueue(gather_cat(keys, with_grad=False), gather_cat(key_positions, with_grad=False))
        return loss

    def same_place(self, query_positions: Tensor) -> Tensor:
        """bool [B, K]: queue key k lies within ``mask_radius_m`` of query b (UTM metres, float64)."""
        gap = query_positions.to(self.queue_positions)[:, None, :] - self.queue_positions[None, :, :]
        return gap.norm(dim=2) <= self.mask_radius_m  # NaN (unfilled entries) compares False

    def info_nce(self, queries: Tensor, keys: Tensor, query_positions: Tensor) -> Tensor:
        """Cross-entropy over [positive key, queue entries] / temperature; unit-norm inputs;
        ``query_positions`` [B, 2] are the UTM positions of the queries' images."""
        positive = (queries * keys).sum(dim=1, keepdim=True)  # [B, 1]
        negatives = queries @ self.queue.clone().T  # [B, K]; a copy: enqueue() writes in place
        if self.mask_same_place:
            negatives = negatives.masked_fill(self.same_place(query_positions), float("-inf"))
        logits = torch.cat([positive, negatives], dim=1) / self.temperature
        return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))

    @torch.no_grad()
    def enqueue(self, keys: Tensor, key_positions: Tensor) -> None:
        """Replace the oldest queue entries by ``keys`` [B, D] (unit norm) and their images' UTM
        positions [B, 2]."""
        size = self.queue.shape[0]
        keys, key_positions = keys[-size:], key_positions[-size:]
        index = (self.queue_ptr + torch.arange(len(keys), device=self.queue.device)) % size
        self.queue[index] = keys.to(self.queue)
        self.queue_positions[index] = key_positions.to(self.queue_positions)
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % size)
