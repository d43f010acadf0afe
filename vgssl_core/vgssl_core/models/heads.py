"""The projection head FC-L-D of VG-SSL: L fully connected layers, every width D.

Between two layers: BatchNorm1d + ReLU (``batchnorm=True``: BYOL, SimSiam, Barlow Twins,
VICReg) or ReLU only (SimCLR, MoCo v2). Nothing follows the last layer. L = 0 means no head.
Biases as in the VG-SSL reference by default: none on a Linear followed by BatchNorm
(``bias_before_bn``), and the last layer's per ``final_bias`` (off for Barlow Twins and VICReg).
Built from lightly's ``ProjectionHead`` (so ``head.layers`` is the ``nn.Sequential``).
"""

from __future__ import annotations

from lightly.models.modules.heads import ProjectionHead
from torch import nn


def build_projection_head(input_dim: int, layers: int, dim: int, batchnorm: bool, *,
                          bias_before_bn: bool = False, final_bias: bool = True) -> nn.Module:
    """FC-``layers``-``dim`` head on ``input_dim`` inputs; ``nn.Identity`` when ``layers`` is 0."""
    if layers < 0 or dim < 1:
        raise ValueError(f"projection head needs layers >= 0 and dim >= 1, got FC-{layers}-{dim}")
    if layers == 0:
        return nn.Identity()
    blocks = []
    for i in range(layers):
        last = i == layers - 1
        bn = nn.BatchNorm1d(dim) if batchnorm and not last else None
        bias = final_bias if last else (bias_before_bn if bn is not None else True)
        blocks.append((input_dim if i == 0 else dim, dim, bn, None if last else nn.ReLU(), bias))
    return ProjectionHead(blocks)
