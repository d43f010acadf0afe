"""Image -> tensor pipelines: one for evaluation/deployment, one augmented for training.

The evaluation transform is the single path from pixels to model input used by ``vgssl eval``,
``vgssl build-db``, the localizer node and the bag replay, so a descriptor computed anywhere is
the descriptor the database was built with. The training augmentations follow the VG-SSL
reference (colour jitter, random resized crop with scale (1 - s, 1), perspective, rotation,
horizontal flip), every strength a config value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2 as T
from PIL import Image

from vgssl_core.errors import VgsslError
from vgssl_core.options import fill_defaults

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DEFAULT_AUGMENT: dict[str, Any] = {
    "brightness": 0.4,
    "contrast": 0.4,
    "saturation": 0.4,
    "hue": 0.1,
    "crop_scale": 0.4,  # s: RandomResizedCrop samples area in (1 - s, 1)
    "perspective": 0.2,  # distortion scale; 0 disables
    "perspective_p": 0.5,
    "rotation_deg": 10.0,
    "hflip_p": 0.5,
    "augment_positive": False,  # the reference leaves database positives un-augmented
}


def _normalise() -> list:
    return [T.ToDtype(torch.float32, scale=True), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def eval_transform(image_size: tuple[int, int] | list[int]) -> T.Compose:
    """Resize to (height, width) and normalise; PIL images and HxWx3 uint8 arrays alike.

    ``ToImage`` comes first: torchvision's v2 transforms pass plain numpy arrays through
    untouched, so an array from a camera must become an image tensor before ``Resize``.
    """
    h, w = int(image_size[0]), int(image_size[1])
    return T.Compose([T.ToImage(), T.Resize((h, w), antialias=True), *_normalise()])


def resolve_augment_config(partial: dict | None) -> dict[str, Any]:
    cfg = fill_defaults(partial, DEFAULT_AUGMENT, "augmentation")
    for key, default in DEFAULT_AUGMENT.items():
        cfg[key] = type(default)(cfg[key])
    if not 0.0 <= cfg["crop_scale"] < 1.0:
        raise VgsslError(f"augment.crop_scale must be in [0, 1), got {cfg['crop_scale']}")
    return cfg


def train_transform(image_size: tuple[int, int] | list[int], augment: dict | None = None) -> T.Compose:
    """Augmented view for SSL training, at the evaluation resolution."""
    cfg = resolve_augment_config(augment)
    h, w = int(image_size[0]), int(image_size[1])
    steps: list = [T.ToImage(), T.RandomResizedCrop((h, w), scale=(1.0 - cfg["crop_scale"], 1.0), antialias=True)]
    if cfg["perspective"] > 0:
        steps.append(T.RandomPerspective(cfg["perspective"], p=cfg["perspective_p"]))
    if cfg["rotation_deg"] > 0:
        steps.append(T.RandomRotation(cfg["rotation_deg"]))
    if cfg["hflip_p"] > 0:
        steps.append(T.RandomHorizontalFlip(cfg["hflip_p"]))
    if max(cfg["brightness"], cfg["contrast"], cfg["saturation"], cfg["hue"]) > 0:
        steps.append(T.ColorJitter(cfg["brightness"], cfg["contrast"], cfg["saturation"], cfg["hue"]))
    return T.Compose([*steps, *_normalise()])


def seeded(transform: T.Compose, image: Image.Image | np.ndarray, seed: int) -> torch.Tensor:
    """Apply a random transform with its own seed, leaving the global RNG untouched.

    Makes every augmented view a function of (run seed, epoch, item): identical with any
    number of data-loader workers, and after a resume.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(image)
