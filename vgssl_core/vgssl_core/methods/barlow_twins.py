"""Barlow Twins on GeoPairs."""

from __future__ import annotations

from lightly.loss import BarlowTwinsLoss
from torch import Tensor

from vgssl_core.methods.base import Method, check
from vgssl_core.methods.distributed import gather_cat
from vgssl_core.models.network import DescriptorModel


class BarlowTwins(Method):
    """Barlow Twins: the cross-correlation of the two views' embeddings pushed to identity.

    Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction",
    ICML 2021, https://arxiv.org/abs/2103.03230; on GeoPairs as in VG-SSL (WACV 2025). The loss
    is lightly's ``BarlowTwinsLoss`` on the UNnormalised projected embeddings (it standardises
    each dimension over the batch itself). lambda = 0.0051 (the VG-SSL reference and the Barlow Twins code). Head: FC-2-4096 with BN,
    no bias on the last layer (the reference).

    Under DDP (``gather_distributed``, on by default; no effect in one process) the embeddings of
    all ranks are gathered and each rank computes the loss of the whole global batch, so the
    standardisation and the cross-correlation are those of one process with that batch. lightly's
    own flag standardises per rank before averaging the correlation, which is not the same loss.

    Examples:
        >>> method = BarlowTwins(build_model({"head_layers": 2, "head_dim": 4096, "head_batchnorm": True}))
        >>> loss = method.loss_pairs(view_a, view_b, positions)
        >>> loss.backward()
    """

    name = "barlow_twins"
    default_config = {"lambda_param": 0.0051, "gather_distributed": True}
    model_defaults = {"head_layers": 2, "head_dim": 4096, "head_batchnorm": True, "head_final_bias": False}

    def __init__(self, model: DescriptorModel, lambda_param: float = 0.0051, gather_distributed: bool = True):
        super().__init__(model)
        check(lambda_param >= 0, f"barlow_twins: lambda_param must be >= 0, got {lambda_param}")
        self.config = {"lambda_param": float(lambda_param), "gather_distributed": bool(gather_distributed)}
        self.gather_distributed = bool(gather_distributed)
        self.criterion = BarlowTwinsLoss(lambda_param=lambda_param, gather_distributed=False)

    def loss_pairs(self, view_a: Tensor, view_b: Tensor, positions: Tensor) -> Tensor:
        self._check_pairs(view_a, view_b, positions)
        z_a, z_b = self.model(view_a), self.model(view_b)
        if self.gather_distributed:
            z_a, z_b = gather_cat(z_a, with_grad=True), gather_cat(z_b, with_grad=True)
        return self.criterion(z_a, z_b)
