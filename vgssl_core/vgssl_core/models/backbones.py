"""Backbones as data: name -> constructor, channels per layer, freezable stages, ImageNet weights.

A backbone maps images [B, 3, H, W] to a feature map [B, C, h, w]. ResNets are cut after conv4
(``layer3``) or conv5 (``layer4``); DeiT-S returns its patch tokens reshaped to a feature map
(its position embedding is resampled on the fly for any input size, e.g. 480x640);
EfficientNet-Lite0/1/2 are cut after their stride-16 stage (conv4) or their 1x1 head conv
(conv5), see ``efficientnet_lite.py``. Every aggregation layer works the same on all backbones.
The distilled DeiT-S (the WACV runs' ViT) returns its class and distillation tokens instead, as a
[B, C, 1, 2] map for the ``distilled`` aggregation.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import timm
import torchvision
from torch import Tensor, nn

from vgssl_core.models import efficientnet_lite as lite

# Input normalisation of every backbone here (all are ImageNet-trained) is the one in
# ``vgssl_core.data.transforms``; ``DescriptorModel.preprocess`` repeats it for tools that need it.
from vgssl_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402,F401


class ViTFeatureMap(nn.Module):
    """A timm ViT returning its patch tokens as a feature map [B, C, H/patch, W/patch]."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit
        self.patch_size = vit.patch_embed.patch_size  # (ph, pw)

    def forward(self, images: Tensor) -> Tensor:
        tokens = self.vit.forward_features(images)[:, self.vit.num_prefix_tokens :]  # drop CLS
        h, w = images.shape[-2] // self.patch_size[0], images.shape[-1] // self.patch_size[1]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


class ViTPrefixTokens(nn.Module):
    """A distilled timm DeiT returning its class and distillation tokens as a map [B, C, 1, 2]."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, images: Tensor) -> Tensor:
        tokens = self.vit.forward_features(images)[:, :2]  # [B, 2, C]: class, distillation
        return tokens.transpose(1, 2).unsqueeze(2)


def _resnet_network(builder: Callable[..., nn.Module]) -> Callable[[], nn.Module]:
    return lambda: builder(weights=None)


def _resnet_cut(network: nn.Module, layer: str) -> nn.Module:
    last = {"conv4": "layer3", "conv5": "layer4"}[layer]
    children = []
    for name, child in network.named_children():
        children.append((name, child))
        if name == last:
            break
    return nn.Sequential(OrderedDict(children))


def _resnet_stages(layer: str) -> list[list[str]]:
    """Child-module names of each stage of the cut ResNet, in order."""
    stages = [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"]]
    return stages + [["layer4"]] if layer == "conv5" else stages


def _deit_network() -> nn.Module:
    # dynamic_img_size: the 14x14 position embedding is resampled for any input grid.
    return timm.create_model("deit_small_patch16_224", pretrained=False, num_classes=0, dynamic_img_size=True)


def _deit_distilled_network() -> nn.Module:
    # The WACV runs' DeiT-S: timm's distilled model (VG-SSL model/Deit.py); its two classifier
    # heads are replaced by the ``distilled`` aggregation's descriptor heads.
    return timm.create_model("deit_small_distilled_patch16_224", pretrained=False, num_classes=0,
                             dynamic_img_size=True)


def _deit_stages(layer: str) -> list[list[str]]:
    embed = ["vit.patch_embed", "vit.cls_token", "vit.pos_embed"]
    return [embed] + [[f"vit.blocks.{i}"] for i in range(12)]


@dataclass(frozen=True)
class BackboneSpec:
    """Facts about one backbone (see ``BACKBONES``)."""

    network: Callable[[], nn.Module]  # the full (uncut) torchvision/timm network, random init
    cut: Callable[[nn.Module, str], nn.Module]  # full network, layer -> feature-map module
    channels: dict[str, int]  # layer -> channels of the feature map
    stages: Callable[[str], list[list[str]]]  # layer -> parameter-name prefixes of each stage
    weights_family: str  # "torchvision" | "timm": the state-dict layout weight files must have
    imagenet_files: tuple[str, ...]  # cache file names (TORCH_HOME/hub/checkpoints) of ImageNet weights
    hf_hub_id: str | None = None  # timm's Hugging Face hub id, for its local cache
    classifier_prefixes: tuple[str, ...] = ()  # weight keys a descriptor network has no use for
    # state dict as read from a file -> the network's layout (None: loaded as is)
    filter_state: Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]] | None = None
    # installed package holding ImageNet weights: () -> (file, distribution name) or None
    package_weights: Callable[[], tuple] | None = None


def _deit_filter(state: dict[str, Tensor], network: nn.Module) -> dict[str, Tensor]:
    from timm.models.vision_transformer import checkpoint_filter_fn

    return checkpoint_filter_fn(state, network)  # resamples a position embedding of another size


def _lite_spec(name: str) -> BackboneSpec:
    variant = lite.LITE_VARIANTS[name]
    return BackboneSpec(
        network=lambda: lite.lite_network(name),
        cut=lite.lite_cut,
        channels={"conv4": variant.conv4_channels, "conv5": lite.HEAD_CHANNELS},
        stages=lite.lite_stages,
        weights_family="timm",
        imagenet_files=variant.timm_files,
        hf_hub_id=variant.hf_hub_id,
        classifier_prefixes=("classifier.",),
        filter_state=lambda state, network: lite.filter_state(state, name),
        package_weights=lambda: lite.find_package_weights(name),
    )


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(
        network=_resnet_network(torchvision.models.resnet18),
        cut=_resnet_cut,
        channels={"conv4": 256, "conv5": 512},
        stages=_resnet_stages,
        weights_family="torchvision",
        imagenet_files=("resnet18-f37072fd.pth",),  # ResNet18_Weights.IMAGENET1K_V1
        classifier_prefixes=("fc.",),
    ),
    "resnet50": BackboneSpec(
        network=_resnet_network(torchvision.models.resnet50),
        cut=_resnet_cut,
        channels={"conv4": 1024, "conv5": 2048},
        stages=_resnet_stages,
        weights_family="torchvision",
        # IMAGENET1K_V1 (what the benchmark and VG-SSL used), then IMAGENET1K_V2
        imagenet_files=("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"),
        classifier_prefixes=("fc.",),
    ),
    "deit_s": BackboneSpec(
        network=_deit_network,
        cut=lambda network, layer: ViTFeatureMap(network),
        channels={"conv4": 384, "conv5": 384},  # `layer` does not apply to DeiT
        stages=_deit_stages,
        weights_family="timm",
        imagenet_files=("deit_small_patch16_224-cd65a155.pth",),
        hf_hub_id="timm/deit_small_patch16_224.fb_in1k",
        classifier_prefixes=("head.", "head_dist."),
        filter_state=_deit_filter,
    ),
    "deit_s_distilled": BackboneSpec(
        network=_deit_distilled_network,
        cut=lambda network, layer: ViTPrefixTokens(network),
        channels={"conv4": 384, "conv5": 384},
        stages=lambda layer: [["vit.patch_embed", "vit.cls_token", "vit.dist_token", "vit.pos_embed"]]
        + [[f"vit.blocks.{i}"] for i in range(12)],
        weights_family="timm",
        imagenet_files=("deit_small_distilled_patch16_224-649709d9.pth",),
        hf_hub_id="timm/deit_small_distilled_patch16_224.fb_in1k",
        classifier_prefixes=("head.", "head_dist."),
    ),
    **{name: _lite_spec(name) for name in lite.LITE_VARIANTS},
}


def feature_channels(backbone: str, layer: str) -> int:
    """Channels C of the feature map of ``backbone`` cut at ``layer``."""
    assert backbone in BACKBONES, f"backbone must be one of {list(BACKBONES)}"
    return BACKBONES[backbone].channels[layer]


def freeze_stages(module: nn.Module, backbone: str, layer: str, count: int) -> None:
    """Turn off gradients of the first ``count`` stages of a cut backbone.

    BatchNorm running statistics of frozen stages still update in train mode, as in the
    deep visual geo-localization benchmark and VG-SSL.
    """
    prefixes = [p for stage in BACKBONES[backbone].stages(layer)[:count] for p in stage]
    for name, param in module.named_parameters():
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            param.requires_grad_(False)


def build_backbone(network: nn.Module, backbone: str, layer: str, frozen: int) -> nn.Module:
    """Cut a full network (weights already loaded) into a feature-map backbone, then freeze."""
    module = BACKBONES[backbone].cut(network, layer)
    freeze_stages(module, backbone, layer, frozen)
    return module
