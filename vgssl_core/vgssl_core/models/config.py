"""The model config: a plain dict (str/int/float/bool/list/None only) that travels in checkpoints.

Checkpoints are loaded with ``torch.load(..., weights_only=True)``, so nothing but plain Python
values may live here. ``resolve_model_config`` fills defaults and validates every key; it is
idempotent, so resolving an already resolved config returns an equal dict.
"""

from __future__ import annotations

from typing import Any

from vgssl_core.errors import ConfigError
from vgssl_core.options import fill_defaults


# The default: an untrained descriptor (ResNet-18 conv4 + GeM, no projection head).
DEFAULT_MODEL_CONFIG: dict[str, Any] = {
    # resnet18 | resnet50 | deit_s | deit_s_distilled | efficientnet_lite0 | efficientnet_lite1 | efficientnet_lite2
    "backbone": "resnet18",
    # conv4 | conv5 (ignored for the DeiTs). EfficientNet-Lite: conv4 = stride-16 stage, conv5 = 1x1 head conv
    "layer": "conv4",
    "aggregation": "gem",  # gem | mac | netvlad | distilled (deit_s_distilled's class + distillation tokens)
    "netvlad_clusters": 64,  # K of NetVLAD
    "head_layers": 0,  # L of FC-L-D (0: no projection head)
    "head_dim": 2048,  # D of FC-L-D (every hidden and output width)
    "head_batchnorm": False,  # BatchNorm1d + ReLU between head layers (else ReLU only)
    # Biases of the head's Linear layers. The VG-SSL reference has none on a Linear followed by
    # BatchNorm (the BN shift makes it redundant) and none on the last layer for Barlow Twins and
    # VICReg (model/network.py:324-368); the methods set ``head_final_bias`` accordingly.
    "head_bias_before_bn": False,
    "head_final_bias": True,
    # The WACV descriptor layer: aggregation -> Linear(fc_dim) -> L2 (model/network.py:433-438);
    # for aggregation "distilled" the two token heads' width. 0: no descriptor layer.
    "fc_dim": 0,
    # Which output is searched: the projection head's (true; arXiv version) or the descriptor
    # layer's (false; the WACV runs' --eval_with_proj off: the head only feeds the loss).
    "search_projection": True,
    # Frozen leading stages: ResNet stem, layer1, layer2, ... / DeiT embedding, block 0, ...
    # 3 = "train only conv4_x (and conv5_x)", the benchmark's and VG-SSL's setting.
    "freeze_stages": 3,
    # imagenet (cache or weight package, else an error) | random | auto (imagenet when found
    # offline, else random, logged) | PATH of a local state-dict file; see models/weights.py
    "weights": "auto",
    "image_size": [120, 160],  # [height, width] fed to the network
    "normalize_descriptor": True,  # L2-normalise descriptors at retrieval time
    "metric": "ip",  # ip (inner product) | l2
}

CHOICES: dict[str, tuple[str, ...]] = {
    "backbone": ("resnet18", "resnet50", "deit_s", "deit_s_distilled", "efficientnet_lite0", "efficientnet_lite1",
                 "efficientnet_lite2"),
    "layer": ("conv4", "conv5"),
    "aggregation": ("gem", "mac", "netvlad", "distilled"),
    "metric": ("ip", "l2"),
}
WEIGHT_WORDS = ("imagenet", "random", "auto")  # any other string is a file path
# Configs written before `weights` took words (checkpoints keep their config) said
# `pretrained: imagenet | none` (imagenet when found, else random) next to `weights: PATH | null`.
LEGACY_PRETRAINED = {"imagenet": "auto", "none": "random"}
# int keys and their smallest allowed value
INT_MIN: dict[str, int] = {"netvlad_clusters": 1, "head_layers": 0, "head_dim": 1, "freeze_stages": 0, "fc_dim": 0}
BOOL_KEYS = ("head_batchnorm", "head_bias_before_bn", "head_final_bias", "search_projection", "normalize_descriptor")
VIT_BACKBONES = ("deit_s", "deit_s_distilled")
MIN_IMAGE_SIDE = 32  # conv5 of a ResNet downsamples by 32


def freezable_stages(backbone: str, layer: str) -> int:
    """How many stages ``freeze_stages`` can count for this backbone (see ``backbones.py``)."""
    from vgssl_core.models.backbones import BACKBONES

    return len(BACKBONES[backbone].stages(layer))


def _translate_legacy(partial: dict) -> dict:
    """``pretrained`` (and ``weights: null``) of older configs -> the one ``weights`` key."""
    if "pretrained" not in partial and partial.get("weights", "") is not None:
        return partial
    out = dict(partial)
    pretrained = out.pop("pretrained", "imagenet")
    if pretrained not in LEGACY_PRETRAINED:
        raise ConfigError(
            f"model config 'pretrained' is {pretrained!r}; it is replaced by 'weights' "
            f"({', '.join(WEIGHT_WORDS)} or a file path)"
        )
    if out.get("weights") is None:  # an explicit weights file always won over `pretrained`
        out["weights"] = LEGACY_PRETRAINED[pretrained]
    return out


def resolve_model_config(partial: dict | None) -> dict:
    """Fill defaults into ``partial`` and validate it; returns a new plain dict.

    Raises ``ConfigError`` (a ``VgsslError``) naming the bad key or value and the valid choices.
    """
    if partial is not None and not isinstance(partial, dict):
        raise ConfigError(f"model config must be a mapping of keys to values, got {type(partial).__name__}")
    cfg = fill_defaults(_translate_legacy(partial or {}), DEFAULT_MODEL_CONFIG, "model config")

    for key, choices in CHOICES.items():
        if cfg[key] not in choices:
            raise ConfigError(f"model config '{key}' is {cfg[key]!r}; choose one of {', '.join(choices)}")
    for key, low in INT_MIN.items():
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"model config '{key}' must be an integer >= {low}, got {value!r}")
    for key in BOOL_KEYS:
        if not isinstance(cfg[key], bool):
            raise ConfigError(f"model config '{key}' must be true or false, got {cfg[key]!r}")

    size = cfg["image_size"]
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or any(isinstance(s, bool) or not isinstance(s, int) or s < MIN_IMAGE_SIDE for s in size)
    ):
        raise ConfigError(f"model config 'image_size' must be [height, width], integers >= {MIN_IMAGE_SIDE}, got {size!r}")
    cfg["image_size"] = [int(size[0]), int(size[1])]

    weights = cfg["weights"]
    if not isinstance(weights, str) or not weights.strip():
        raise ConfigError(
            f"model config 'weights' must be one of {', '.join(WEIGHT_WORDS)} or a file path, got {weights!r}"
        )

    if (cfg["aggregation"] == "distilled") != (cfg["backbone"] == "deit_s_distilled"):
        raise ConfigError("model config: aggregation 'distilled' and backbone 'deit_s_distilled' go together "
                          f"(got backbone {cfg['backbone']!r} with aggregation {cfg['aggregation']!r})")
    if cfg["aggregation"] == "distilled" and cfg["fc_dim"] < 1:
        raise ConfigError("model config 'fc_dim' must be >= 1 with aggregation 'distilled' (the token heads' width)")
    if not cfg["search_projection"] and cfg["fc_dim"] < 1:
        raise ConfigError("model config 'search_projection: false' searches the descriptor layer: set 'fc_dim' >= 1")

    most = freezable_stages(cfg["backbone"], cfg["layer"])
    if cfg["freeze_stages"] > most:
        raise ConfigError(
            f"model config 'freeze_stages' is {cfg['freeze_stages']}, but {cfg['backbone']}"
            + ("" if cfg["backbone"] in VIT_BACKBONES else f" cut at {cfg['layer']}")
            + f" has {most} stages; choose 0..{most}"
        )
    return cfg
