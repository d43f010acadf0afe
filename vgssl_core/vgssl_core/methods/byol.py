"""BYOL on GeoPairs."""

from __future__ import annotations

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules.heads import BYOLPredictionHead
from torch import Tensor

from vgssl_core.methods.base import MomentumMethod, check
from vgssl_core.models.network import DescriptorModel


class BYOL(MomentumMethod):
    """BYOL: an online network with a predictor regresses a momentum (EMA) target network.

    Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
    NeurIPS 2020, https://arxiv.org/abs/2006.07733; on GeoPairs as in VG-SSL (WACV 2025).
    Symmetric negative cosine similarity (lightly's ``NegativeCosineSimilarity``) between the
    prediction of one view and the target projection of the other. The target is the momentum
    copy of the whole descriptor network, head included (see ``MomentumMethod``). Defaults of
    the VG-SSL reference code: momentum 0.99, constant ("cosine" goes to ``momentum_end`` = 1 as
    in the BYOL paper); predictor Linear(D, H)-BN-ReLU-Linear(H, D) with H = 4096 (the reference,
    ``model/byol/byol_pytorch.py:164``; ``predictor_hidden_dim: null`` makes H = D). Head:
    FC-2-2048 with BN.

    Examples:
        >>> method = BYOL(build_model({"head_layers": 2, "head_dim": 2048, "head_batchnorm": True}))
        >>> loss = method.loss_pairs(view_a, view_b, positions); loss.backward(); optimizer.step()
        >>> method.after_optimizer_step(step, max_steps)  # EMA update of the target
    """

    name = "byol"
    default_config = {"momentum": 0.99, "momentum_end": 1.0, "momentum_schedule": "constant", "predictor_hidden_dim": 4096}
    nullable_keys = ("predictor_hidden_dim",)
    model_defaults = {"head_layers": 2, "head_dim": 2048, "head_batchnorm": True}

    def __init__(self, model: DescriptorModel, momentum: float = 0.99, momentum_end: float = 1.0,
                 momentum_schedule: str = "constant", predictor_hidden_dim: int | None = 4096):
        super().__init__(model, momentum, momentum_end, momentum_schedule)
        check(predictor_hidden_dim is None or predictor_hidden_dim >= 1,
              f"byol: predictor_hidden_dim must be >= 1 or null, got {predictor_hidden_dim}")
        dim = model.embedding_dim
        self.config = {"momentum": float(momentum), "momentum_end": float(momentum_end),
                       "momentum_schedule": momentum_schedule, "predictor_hidden_dim": predictor_hidden_dim}
        self.predictor = BYOLPredictionHead(dim, predictor_hidden_dim or dim, dim)
        self.criterion = NegativeCosineSimilarity()

    def loss_pairs(self, view_a: Tensor, view_b: Tensor, positions: Tensor) -> Tensor:
        self._check_pairs(view_a, view_b, positions)
        self._ensure_synced()
        p_a, p_b = self.predictor(self.model(view_a)), self.predictor(self.model(view_b))
        with torch.no_grad():
            t_a, t_b = self.momentum_model(view_a), self.momentum_model(view_b)
        return 0.5 * (self.criterion(p_a, t_b) + self.criterion(p_b, t_a))
