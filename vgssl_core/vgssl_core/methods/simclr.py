"""SimCLR on GeoPairs."""

from __future__ import annotations

from lightly.loss import NTXentLoss
from torch import Tensor

from vgssl_core.methods.base import Method, check
from vgssl_core.models.network import DescriptorModel


class SimCLR(Method):
    """SimCLR: NT-Xent over the two views of each GeoPair, other pairs of the batch as negatives.

    Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
    ICML 2020, https://arxiv.org/abs/2002.05709; on GeoPairs as in VG-SSL (WACV 2025). The loss
    is lightly's ``NTXentLoss`` (it L2-normalises the embeddings). Head: FC-1-2048, no BN.
    Temperature 0.07: the value of the VG-SSL reference code (its SimCLR shares MoCo's T).

    Under DDP, ``gather_distributed`` (lightly's flag, on by default, no effect in one process)
    takes the negatives from all ranks' embeddings: the loss of the global batch.

    Examples:
        >>> method = SimCLR(build_model({"head_layers": 1, "head_dim": 2048}), temperature=0.07)
        >>> loss = method.loss_pairs(view_a, view_b, positions)
        >>> loss.backward()
    """

    name = "simclr"
    default_config = {"temperature": 0.07, "gather_distributed": True}
    model_defaults = {"head_layers": 1, "head_dim": 2048, "head_batchnorm": False}

    def __init__(self, model: DescriptorModel, temperature: float = 0.07, gather_distributed: bool = True):
        super().__init__(model)
        check(temperature > 0, f"simclr: temperature must be > 0, got {temperature}")
        self.config = {"temperature": float(temperature), "gather_distributed": bool(gather_distributed)}
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=gather_distributed)

    def loss_pairs(self, view_a: Tensor, view_b: Tensor, positions: Tensor) -> Tensor:
        """NT-Xent of the two views; ``positions`` are not used (in-batch negatives)."""
        self._check_pairs(view_a, view_b, positions)
        return self.criterion(self.model(view_a), self.model(view_b))
