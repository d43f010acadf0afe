"""Image -> tensor pipelines: one for evaluation/deployment, one augmented for training.

The evaluation transform is the single path from pixels to model input used by ``vgssl eval``,
``vgssl build-db``, the localizer node and the bag replay, so a descriptor computed anywhere is
the descriptor the database was built with.

Training augmentations are named sets (``data.augment: reference``, or a mapping with ``name``
and any key below to change one strength):

* ``reference``: what the VG-SSL authors' final runs use: RandomResizedCrop scale (0.75, 1) per
  view and one horizontal-flip decision for the whole batch (``--random_resized_crop 0.25
  --horizontal_flip``; ``model/network.py:586-587``). The batch flip happens where batches are
  assembled (``VgsslModule.training_step``), from (seed, step) alone.
* ``strong``: colour jitter, RandomResizedCrop (0.6, 1), perspective, rotation and a flip per
  view: vgssl's earlier default, kept for comparison (the demo presets use it).
* ``none``: resize only (the authors' parser default: every augmentation flag off).
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

_STRONG: dict[str, Any] = {
    "brightness": 0.4,
    "contrast": 0.4,
    "saturation": 0.4,
    "hue": 0.1,
    "crop_scale": 0.4,  # s: RandomResizedCrop samples area in (1 - s, 1); 0: plain resize
    "perspective": 0.2,  # distortion scale; 0 disables
    "perspective_p": 0.5,
    "rotation_deg": 10.0,
    "hflip_p": 0.5,  # per view
    "batch_hflip_p": 0.0,  # one decision for the whole batch (applied in the training step)
    "augment_positive": False,  # the reference leaves database positives un-augmented
}
_NONE: dict[str, Any] = {**{k: 0.0 for k in _STRONG if k != "augment_positive"}, "augment_positive": False}
AUGMENT_SETS: dict[str, dict[str, Any]] = {
    "reference": {**_NONE, "crop_scale": 0.25, "batch_hflip_p": 0.5},
    "strong": _STRONG,
    "none": _NONE,
}
DEFAULT_AUGMENT_NAME = "reference"
DEFAULT_AUGMENT: dict[str, Any] = {"name": DEFAULT_AUGMENT_NAME, **AUGMENT_SETS[DEFAULT_AUGMENT_NAME]}


def _normalise() -> list:
    return [T.ToDtype(torch.float32, scale=True), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


class _NormaliseUint8(torch.nn.Module):
    """uint8 image -> normalised float32 in one allocation: ``(x - 255 mean) / (255 std)`` in place
    on the float copy. The training views' last op (about 3x cheaper than ``ToDtype`` +
    ``Normalize``, equal to 1 ulp); evaluation keeps ``_normalise`` (descriptor parity everywhere)."""

    def __init__(self) -> None:
        super().__init__()
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255.0
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255.0

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dtype != torch.uint8:
            raise TypeError(f"training views are normalised from uint8 images, got {image.dtype}")
        return image.as_subclass(torch.Tensor).to(torch.float32).sub_(self.mean).div_(self.std)


def eval_transform(image_size: tuple[int, int] | list[int]) -> T.Compose:
    """Resize to (height, width) and normalise; PIL images and HxWx3 uint8 arrays alike.

    ``ToImage`` comes first: torchvision's v2 transforms pass plain numpy arrays through
    untouched, so an array from a camera must become an image tensor before ``Resize``.
    """
    h, w = int(image_size[0]), int(image_size[1])
    return T.Compose([T.ToImage(), T.Resize((h, w), antialias=True), *_normalise()])


def augment_mapping(value: Any) -> Any:
    """``data.augment`` as written (a set's name, or a mapping) -> a mapping; other values pass."""
    return {"name": value} if isinstance(value, str) else value


def resolve_augment_config(partial: dict | str | None) -> dict[str, Any]:
    """The named set (``name``, default ``reference``) with the mapping's other keys on top."""
    partial = dict(augment_mapping(partial) or {})
    name = partial.pop("name", DEFAULT_AUGMENT_NAME)
    if name not in AUGMENT_SETS:
        raise VgsslError(f"unknown augmentation '{name}'; choose one of {', '.join(AUGMENT_SETS)}")
    base = AUGMENT_SETS[name]
    cfg = {"name": name, **fill_defaults(partial, base, "augmentation")}
    for key, default in base.items():
        try:
            cfg[key] = bool(cfg[key]) if isinstance(default, bool) else float(cfg[key])
        except (TypeError, ValueError):
            raise VgsslError(f"augment.{key} must be a number, got {cfg[key]!r}") from None
    if not 0.0 <= cfg["crop_scale"] < 1.0:
        raise VgsslError(f"augment.crop_scale must be in [0, 1), got {cfg['crop_scale']}")
    for key in ("perspective_p", "hflip_p", "batch_hflip_p"):
        if not 0.0 <= cfg[key] <= 1.0:
            raise VgsslError(f"augment.{key} is a probability in [0, 1], got {cfg[key]}")
    return cfg


def train_transform(image_size: tuple[int, int] | list[int], augment: dict | None = None) -> T.Compose:
    """Augmented view for SSL training, at the evaluation resolution."""
    cfg = resolve_augment_config(augment)
    h, w = int(image_size[0]), int(image_size[1])
    crop = (T.RandomResizedCrop((h, w), scale=(1.0 - cfg["crop_scale"], 1.0), antialias=True) if cfg["crop_scale"] > 0
            else T.Resize((h, w), antialias=True))
    steps: list = [T.ToImage(), crop]
    if cfg["perspective"] > 0:
        steps.append(T.RandomPerspective(cfg["perspective"], p=cfg["perspective_p"]))
    if cfg["rotation_deg"] > 0:
        steps.append(T.RandomRotation(cfg["rotation_deg"]))
    if cfg["hflip_p"] > 0:
        steps.append(T.RandomHorizontalFlip(cfg["hflip_p"]))
    if max(cfg["brightness"], cfg["contrast"], cfg["saturation"], cfg["hue"]) > 0:
        steps.append(T.ColorJitter(cfg["brightness"], cfg["contrast"], cfg["saturation"], cfg["hue"]))
    # every op above runs on the cropped, resized uint8 image (the crop first: nothing is done to
    # pixels the view drops); then one fused normalisation
    return T.Compose([*steps, _NormaliseUint8()])


def seeded(transform: T.Compose, image: Image.Image | np.ndarray, seed: int) -> torch.Tensor:
    """Apply a random transform with its own seed, leaving the global RNG untouched.

    Makes every augmented view a function of (run seed, epoch, item): identical with any
    number of data-loader workers, and after a resume.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(image)
