"""Descriptor models: backbone (ResNet-18/50 conv4/conv5, DeiT-S, EfficientNet-Lite0/1/2) -> aggregation (GeM, MAC,
NetVLAD) -> projection head FC-L-D. The projected embedding is the place descriptor.

    >>> cfg = resolve_model_config({"backbone": "resnet18", "aggregation": "netvlad"})
    >>> model = build_model(cfg)
    >>> model.init_netvlad_from_features(model.local_features(images))
"""

from vgssl_core.models.aggregation import GeM, L2Norm, MAC, NetVLAD, build_aggregation
from vgssl_core.models.backbones import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, feature_channels
from vgssl_core.errors import ConfigError
from vgssl_core.models.config import CHOICES, DEFAULT_MODEL_CONFIG, resolve_model_config
from vgssl_core.models.heads import build_projection_head
from vgssl_core.models.network import DescriptorModel, build_model
from vgssl_core.models.weights import find_imagenet_source, find_imagenet_weights, init_record, read_state_dict

__all__ = [
    "BACKBONES", "CHOICES", "ConfigError", "DEFAULT_MODEL_CONFIG", "DescriptorModel", "GeM", "IMAGENET_MEAN",
    "IMAGENET_STD", "L2Norm", "MAC", "NetVLAD", "build_aggregation", "build_model", "build_projection_head",
    "feature_channels", "find_imagenet_source", "find_imagenet_weights", "init_record", "read_state_dict",
    "resolve_model_config",
]
