"""The descriptor network: backbone -> aggregation -> projection head.

The arXiv version searches the projected embedding; the WACV version adds a descriptor layer
after the aggregation (``fc_dim``: GeM -> FC -> L2, or the distilled DeiT's token heads) and
searches that, the projection head only feeding the loss (``search_projection: false``).

Examples:
    >>> model = build_model({"backbone": "resnet18", "aggregation": "gem", "head_layers": 1, "head_dim": 512})
    >>> descriptors = model(images)  # [B, 512], unnormalised
    >>> for_search = model.retrieval_descriptor(images)  # L2-normalised if the config says so
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vgssl_core.errors import VgsslError
from vgssl_core.models.aggregation import NetVLAD, build_aggregation
from vgssl_core.models.backbones import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, build_backbone
from vgssl_core.models.config import resolve_model_config
from vgssl_core.models.heads import build_projection_head
from vgssl_core.models.weights import init_note, initialise


class DescriptorModel(nn.Module):
    """``backbone -> aggregation -> head``; ``forward(images [B, 3, H, W]) -> [B, descriptor_dim]``.

    Attributes:
        config: the resolved plain model config (store it in checkpoints).
        descriptor_dim: D of the searched descriptor (``retrieval_descriptor``).
        embedding_dim: D of ``forward``'s output, the embedding the training loss sees (the head's
            width, or the aggregation's size without a head).
        feature_dim: channels C of the backbone's feature map.
        init_note: one line saying which initial weights were used.
        init_info: the same as a plain dict (``weights.init_record``), for summary/test JSON.
        preprocess: how input images must be normalised: ``{"mean", "std", "image_size"}``.
    """

    def __init__(self, backbone: nn.Module, aggregation: nn.Module, head: nn.Module, config: dict,
                 descriptor_dim: int, feature_dim: int, init_note: str = "", init_info: dict | None = None,
                 embedding_dim: int | None = None):
        super().__init__()
        self.backbone, self.aggregation, self.head = backbone, aggregation, head
        self.config = copy.deepcopy(config)
        self.descriptor_dim, self.feature_dim = descriptor_dim, feature_dim
        self.embedding_dim = descriptor_dim if embedding_dim is None else embedding_dim
        self.init_note = init_note
        self.init_info = dict(init_info or {"init": "random"})
        self.preprocess = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                           "image_size": list(config["image_size"])}

    def forward(self, images: Tensor) -> Tensor:
        features = self.backbone(images)  # [B, C, h, w]
        return self.head(self.aggregation(features))  # [B, D], unnormalised

    def retrieval_descriptor(self, images: Tensor) -> Tensor:
        """The descriptor used for search: ``forward`` (or, with ``search_projection: false``, the
        descriptor layer's output before the head), L2-normalised if ``normalize_descriptor``."""
        if self.config.get("search_projection", True):
            descriptors = self(images)
        else:
            descriptors = self.aggregation(self.backbone(images))
        return F.normalize(descriptors, p=2.0, dim=1) if self.config["normalize_descriptor"] else descriptors

    @torch.no_grad()
    def local_features(self, images: Tensor) -> Tensor:
        """The backbone's local features [B * h * w, C] (e.g. to initialise NetVLAD)."""
        maps = self.backbone(images)
        return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])

    @property
    def netvlad(self) -> NetVLAD | None:
        inner = getattr(self.aggregation, "pool", self.aggregation)  # under a descriptor layer
        return inner if isinstance(inner, NetVLAD) else None

    def init_netvlad_from_features(self, features: Tensor) -> None:
        """k-means initialisation of the NetVLAD layer from local features [N, C].

        Do this before the SSL method makes or syncs its momentum copy: methods copy the
        network into their momentum encoder at the first step (or on ``sync_momentum()``).
        """
        if self.netvlad is None:
            raise VgsslError(f"NetVLAD initialisation needs aggregation 'netvlad', the model has '{self.config['aggregation']}'")
        self.netvlad.init_netvlad_from_features(features)


def build_model(cfg: dict | None) -> DescriptorModel:
    """Build the descriptor network of a (partial) model config; see ``resolve_model_config``."""
    cfg = resolve_model_config(cfg)
    name, layer = cfg["backbone"], cfg["layer"]
    network = BACKBONES[name].network()
    init_info = initialise(network, name, cfg["weights"])
    backbone = build_backbone(network, name, layer, cfg["freeze_stages"])
    channels = BACKBONES[name].channels[layer]
    aggregation, pooled_dim = build_aggregation(cfg["aggregation"], channels, cfg["netvlad_clusters"], cfg["fc_dim"])
    head = build_projection_head(pooled_dim, cfg["head_layers"], cfg["head_dim"], cfg["head_batchnorm"],
                                 bias_before_bn=cfg["head_bias_before_bn"], final_bias=cfg["head_final_bias"])
    embedding_dim = cfg["head_dim"] if cfg["head_layers"] > 0 else pooled_dim
    descriptor_dim = embedding_dim if cfg["search_projection"] else pooled_dim
    return DescriptorModel(backbone, aggregation, head, cfg, descriptor_dim, channels,
                           init_note(name, init_info), init_info, embedding_dim)
