"""SimSiam on GeoPairs."""

from __future__ import annotations

from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules.heads import SimSiamPredictionHead
from torch import Tensor

from vgssl_core.methods.base import Method, check
from vgssl_core.models.network import DescriptorModel


class SimSiam(Method):
    """SimSiam: siamese network with a predictor and a stop-gradient, no momentum encoder.

    Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021,
    https://arxiv.org/abs/2011.10566; on GeoPairs as in VG-SSL (WACV 2025). Symmetric negative
    cosine similarity (lightly's ``NegativeCosineSimilarity``) between the prediction of one view
    and the detached projection of the other. Predictor Linear(D, H)-BN-ReLU-Linear(H, D) with
    H = 4096 (the VG-SSL reference, ``model/byol/byol_pytorch.py:232``; ``predictor_hidden_dim:
    null`` makes H = D; the SimSiam paper uses a bottleneck H = D / 4). Head: FC-2-2048 with BN.

    Examples:
        >>> method = SimSiam(build_model({"head_layers": 2, "head_dim": 2048, "head_batchnorm": True}))
        >>> loss = method.loss_pairs(view_a, view_b, positions)
        >>> loss.backward()
    """

    name = "simsiam"
    default_config = {"predictor_hidden_dim": 4096}
    nullable_keys = ("predictor_hidden_dim",)
    model_defaults = {"head_layers": 2, "head_dim": 2048, "head_batchnorm": True}

    def __init__(self, model: DescriptorModel, predictor_hidden_dim: int | None = 4096):
        super().__init__(model)
        check(predictor_hidden_dim is None or predictor_hidden_dim >= 1,
              f"simsiam: predictor_hidden_dim must be >= 1 or null, got {predictor_hidden_dim}")
        dim = model.embedding_dim
        self.config = {"predictor_hidden_dim": predictor_hidden_dim}
        self.predictor = SimSiamPredictionHead(dim, predictor_hidden_dim or dim, dim)
        self.criterion = NegativeCosineSimilarity()

    def loss_pairs(self, view_a: Tensor, view_b: Tensor, positions: Tensor) -> Tensor:
        self._check_pairs(view_a, view_b, positions)
        z_a, z_b = self.model(view_a), self.model(view_b)
        p_a, p_b = self.predictor(z_a), self.predictor(z_b)
        return 0.5 * (self.criterion(p_a, z_b.detach()) + self.criterion(p_b, z_a.detach()))
