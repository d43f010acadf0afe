"""VICReg on GeoPairs."""

from __future__ import annotations

from lightly.loss import VICRegLoss
from torch import Tensor

from vgssl_core.methods.base import Method, check
from vgssl_core.models.network import DescriptorModel


class VICReg(Method):
    """VICReg: invariance + variance + covariance regularisation of the two views' embeddings.

    Bardes et al., "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised
    Learning", ICLR 2022, https://arxiv.org/abs/2105.04906; on GeoPairs as in VG-SSL (WACV 2025).
    The loss is lightly's ``VICRegLoss`` on the UNnormalised projected embeddings, with the
    paper's coefficients 25 (invariance), 25 (variance), 1 (covariance). Head: FC-2-4096 with BN,
    no bias on the last layer (the reference).

    Under DDP, ``gather_distributed`` (lightly's flag, on by default, no effect in one process)
    computes the variance and covariance terms on all ranks' embeddings: the global batch's.

    Examples:
        >>> method = VICReg(build_model({"head_layers": 2, "head_dim": 4096, "head_batchnorm": True}))
        >>> loss = method.loss_pairs(view_a, view_b, positions)
        >>> loss.backward()
    """

    name = "vicreg"
    default_config = {"lambda_param": 25.0, "mu_param": 25.0, "nu_param": 1.0, "eps": 1e-4, "gather_distributed": True}
    model_defaults = {"head_layers": 2, "head_dim": 4096, "head_batchnorm": True, "head_final_bias": False}

    def __init__(self, model: DescriptorModel, lambda_param: float = 25.0, mu_param: float = 25.0,
                 nu_param: float = 1.0, eps: float = 1e-4, gather_distributed: bool = True):
        super().__init__(model)
        for key, value in (("lambda_param", lambda_param), ("mu_param", mu_param), ("nu_param", nu_param)):
            check(value >= 0, f"vicreg: {key} must be >= 0, got {value}")
        check(eps > 0, f"vicreg: eps must be > 0, got {eps}")
        self.config = {"lambda_param": float(lambda_param), "mu_param": float(mu_param), "nu_param": float(nu_param),
                       "eps": float(eps), "gather_distributed": bool(gather_distributed)}
        self.criterion = VICRegLoss(lambda_param=lambda_param, mu_param=mu_param, nu_param=nu_param,
                                    eps=eps, gather_distributed=gather_distributed)

    def loss_pairs(self, view_a: Tensor, view_b: Tensor, positions: Tensor) -> Tensor:
        self._check_pairs(view_a, view_b, positions)
        return self.criterion(self.model(view_a), self.model(view_b))
