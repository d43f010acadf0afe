"""The supervised baseline: triplet margin loss with mined negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vgssl_core.methods.base import Method, check
from vgssl_core.models.network import DescriptorModel


class TripletBaseline(Method):
    """Triplet margin loss on L2-normalised descriptors, M negatives per query.

    Berton et al., "Deep Visual Geo-localization Benchmark", CVPR 2022,
    https://arxiv.org/abs/2204.03444 (margin 0.1, plain L2 distance, the loss averaged
    over the B*M (query, positive, negative) triplets). The negatives come from the caller's
    miner (full / partial / random mining over a descriptor cache). All images of a batch go
    through the network in one forward pass, so BatchNorm sees them together. No head.

    Examples:
        >>> method = TripletBaseline(build_model({"aggregation": "netvlad"}), margin=0.1)
        >>> loss = method.loss_triplets(query, positive, negatives)  # negatives [B, M, 3, H, W]
        >>> loss.backward()
    """

    name = "triplet"
    batch_kind = "triplets"
    default_config = {"margin": 0.1}
    model_defaults = {"head_layers": 0}

    def __init__(self, model: DescriptorModel, margin: float = 0.1):
        super().__init__(model)
        check(margin > 0, f"triplet: margin must be > 0, got {margin}")
        self.config = {"margin": float(margin)}
        self.criterion = nn.TripletMarginLoss(margin=margin, p=2, reduction="mean")

    def loss_triplets(self, query: Tensor, positive: Tensor, negatives: Tensor) -> Tensor:
        if query.ndim != 4 or positive.shape != query.shape:
            raise ValueError(f"query and positive must both be [B, 3, H, W], got {tuple(query.shape)} and {tuple(positive.shape)}")
        if negatives.ndim != 5 or negatives.shape[0] != query.shape[0] or negatives.shape[2:] != query.shape[1:]:
            raise ValueError(f"negatives must be [B, M, 3, H, W] with B = {query.shape[0]}, got {tuple(negatives.shape)}")
        b, m = negatives.shape[:2]
        images = torch.cat([query, positive, negatives.flatten(0, 1)])
        descriptors = F.normalize(self.model(images), p=2.0, dim=1)
        q, p, n = descriptors[:b], descriptors[b : 2 * b], descriptors[2 * b :]
        return self.criterion(q.repeat_interleave(m, dim=0), p.repeat_interleave(m, dim=0), n)
