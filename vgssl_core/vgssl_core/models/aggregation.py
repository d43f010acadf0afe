"""Aggregation layers: feature map [B, C, h, w] -> global descriptor [B, C'].

GeM and MAC pool a feature map whose local features are first L2-normalised along channels
(the benchmark's and VG-SSL's default ``--l2 before_pool``); NetVLAD (Arandjelovic et al.,
CVPR 2016) outputs K*C values, intra- and globally L2-normalised.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vgssl_core.errors import VgsslError


class L2Norm(nn.Module):
    """L2-normalise along ``dim`` (1: the channels of a feature map or a descriptor)."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, p=2.0, dim=self.dim)


class GeM(nn.Module):
    """Generalised-mean pooling (Radenovic et al., TPAMI 2018) with a learnable exponent p."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM exponent p must be > 0, got {p}")
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(self.p), 1).pow(1.0 / self.p)


class MAC(nn.Module):
    """Maximum activation of convolutions: global max pooling."""

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_max_pool2d(x, 1)


class NetVLAD(nn.Module):
    """NetVLAD layer (Arandjelovic et al., "NetVLAD: CNN architecture for weakly supervised
    place recognition", CVPR 2016): soft-assignment of local features to K clusters, sum of
    residuals, intra-normalisation, flatten, L2 normalisation. Output dim K*C.

    Initialise it from data with ``init_netvlad_from_features`` (k-means centroids and the
    paper's conv weights) *before* any momentum copy of the network is made, or call the SSL
    method's ``sync_momentum()`` afterwards (methods also sync before their first step).

    Examples:
        >>> vlad = NetVLAD(clusters=64, dim=256)
        >>> vlad.init_netvlad_from_features(local_features)  # [N, 256]
        >>> descriptors = vlad(feature_maps)  # [B, 64 * 256]
    """

    def __init__(self, clusters: int = 64, dim: int = 256):
        super().__init__()
        if clusters < 1 or dim < 1:
            raise ValueError(f"NetVLAD needs clusters >= 1 and dim >= 1, got {clusters}, {dim}")
        self.clusters, self.dim = clusters, dim
        self.conv = nn.Conv2d(dim, clusters, kernel_size=1, bias=False)
        self.centroids = nn.Parameter(torch.rand(clusters, dim))

    @property
    def output_dim(self) -> int:
        return self.clusters * self.dim

    def forward(self, x: Tensor) -> Tensor:
        x = F.normalize(x, p=2.0, dim=1)  # local features on the unit sphere
        assign = self.conv(x).flatten(2).softmax(dim=1)  # [B, K, hw]
        local = x.flatten(2)  # [B, C, hw]
        # vlad[b, k, c] = sum_i assign[b, k, i] * (local[b, c, i] - centroids[k, c])
        vlad = torch.einsum("bki,bci->bkc", assign, local) - assign.sum(-1, keepdim=True) * self.centroids
        vlad = F.normalize(vlad, p=2.0, dim=2).flatten(1)  # intra-normalisation
        return F.normalize(vlad, p=2.0, dim=1)

    @torch.no_grad()
    def init_netvlad_from_features(self, features: Tensor, iterations: int = 100, seed: int = 0) -> None:
        """Set centroids by k-means (faiss) on ``features`` [N, C] and conv weights as in the paper.

        With unit-norm local features x and centroids c_k, the soft-assignment logit of the
        paper, -alpha * ||x - c_k||^2, equals 2 * alpha * <x, c_k> up to a per-x constant, so the
        1x1 conv gets weights alpha' * c_k / ||c_k|| with alpha' chosen so that the two nearest
        centroids of a typical feature get soft-assignments 1 : 0.01.
        """
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"NetVLAD init needs features of shape [N, {self.dim}], got {tuple(features.shape)}")
        if features.shape[0] < self.clusters:
            raise VgsslError(
                f"NetVLAD init needs at least {self.clusters} local features (one per cluster), got {features.shape[0]};"
                " use more images for the initialisation or fewer netvlad_clusters"
            )
        descs = F.normalize(features.detach().float().cpu(), p=2.0, dim=1)
        kmeans = faiss.Kmeans(self.dim, self.clusters, niter=iterations, seed=seed, verbose=False)
        kmeans.train(np.ascontiguousarray(descs.numpy(), dtype=np.float32))
        centroids = torch.from_numpy(kmeans.centroids.copy())
        unit = F.normalize(centroids, p=2.0, dim=1)
        if self.clusters > 1:
            top2 = (descs @ unit.T).topk(2, dim=1).values  # two largest similarities per feature
            gap = float((top2[:, 0] - top2[:, 1]).mean())
        else:
            gap = 0.0
        alpha = -math.log(0.01) / gap if gap > 1e-12 else 1.0
        self.centroids.copy_(centroids.to(self.centroids))
        self.conv.weight.copy_((alpha * unit)[:, :, None, None].to(self.conv.weight))


class DistilledTokens(nn.Module):
    """The distilled DeiT's descriptor: L2((head(cls) + head_dist(dist)) / 2), each head a Linear
    to ``dim`` (VG-SSL ``model/Deit.py:64-68``, FC 256 in the WACV runs). Input: the [B, C, 1, 2]
    token map of ``ViTPrefixTokens``."""

    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.head, self.head_dist = nn.Linear(channels, dim), nn.Linear(channels, dim)

    def forward(self, x: Tensor) -> Tensor:
        cls, dist = x[:, :, 0, 0], x[:, :, 0, 1]
        return F.normalize((self.head(cls) + self.head_dist(dist)) / 2, p=2.0, dim=1)


def build_aggregation(kind: str, channels: int, netvlad_clusters: int = 64, fc_dim: int = 0) -> tuple[nn.Module, int]:
    """The aggregation module for ``kind`` and its output dimension.

    ``fc_dim`` > 0 adds the WACV descriptor layer: Linear(fc_dim) then L2 (VG-SSL
    ``model/network.py:433-438``); for ``distilled`` it is the two token heads' width.
    """
    if kind == "distilled":
        return DistilledTokens(channels, fc_dim), fc_dim
    if kind == "netvlad":
        module: nn.Module = NetVLAD(netvlad_clusters, channels)
        dim = module.output_dim
    else:
        pools = {"gem": GeM, "mac": MAC}
        assert kind in pools, f"aggregation must be one of {[*pools, 'netvlad', 'distilled']}"
        module, dim = nn.Sequential(OrderedDict(l2norm=L2Norm(1), pool=pools[kind](), flatten=nn.Flatten(1))), channels
    if fc_dim > 0:
        module = nn.Sequential(OrderedDict(pool=module, fc=nn.Linear(dim, fc_dim), l2norm=L2Norm(1)))
        dim = fc_dim
    return module, dim
