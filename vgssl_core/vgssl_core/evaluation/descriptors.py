"""Descriptor extraction: images in, the model's retrieval descriptors out.

The one path used by evaluation, ``build-db``, the localizer node and the bag replay: an image
file (``load_image``) or a decoded camera frame (:func:`rgb_to_pil`) becomes a PIL image,
``eval_transform`` makes the tensor, :func:`embed_batch` runs the model with no gradients (AMP on
CUDA) and returns float32. A frame and a file with the same pixels get the same descriptor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vgssl_core.data.dataset import load_image
from vgssl_core.errors import VgsslError
from vgssl_core.data.transforms import eval_transform

DEVICES = ("auto", "cpu", "cuda")
ImageSource = Union[str, os.PathLike, np.ndarray]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when torch sees a GPU; asking for CUDA without one is a user error."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise VgsslError(f"unknown device '{name}'; valid: {', '.join(DEVICES)} or cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VgsslError(f"device '{name}' requested but torch sees no CUDA GPU; use device=cpu or auto")
    return torch.device(name)


class ImageFiles(Dataset):
    """Image files as evaluation tensors; a bad file raises ``VgsslError`` naming it."""

    def __init__(self, paths: Sequence[str | Path], image_size: Sequence[int]) -> None:
        self.paths = list(paths)
        self.transform = eval_transform(image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(load_image(self.paths[i]))


@torch.no_grad()
def embed_batch(model: torch.nn.Module, batch: torch.Tensor, device: torch.device) -> np.ndarray:
    """Descriptors of one preprocessed batch (B, 3, H, W) as float32 (B, D)."""
    batch = batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)  # NHWC: see load_descriptor_model
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = model.retrieval_descriptor(batch) if hasattr(model, "retrieval_descriptor") else model(batch)
    return out.float().cpu().numpy()


def extract_descriptors(
    model: torch.nn.Module,
    paths: Sequence[str | Path],
    image_size: Sequence[int],
    device: torch.device,
    *,
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = True,
    desc: str = "descriptors",
) -> np.ndarray:
    """(N, D) float32 descriptors of the image files, in order."""
    if len(paths) == 0:
        raise VgsslError("no images to describe")
    was_training = model.training
    model.eval()
    loader = DataLoader(ImageFiles(paths, image_size), batch_size=batch_size, num_workers=workers,
                        pin_memory=device.type == "cuda")
    chunks = [embed_batch(model, batch, device)
              for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False)]
    model.train(was_training)
    return np.concatenate(chunks, axis=0)


def rgb_to_pil(rgb: Any) -> Image.Image:
    """An H x W x 3 uint8 RGB array as the PIL image ``eval_transform`` expects.

    Files reach the model as PIL images (``load_image``); taking frames the same way makes a
    camera frame's descriptor bit-identical to that of the same pixels read from a file, and
    checks the frame first: a malformed one is a ``VgsslError`` a node can log and drop.
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise VgsslError(f"expected an H x W x 3 uint8 RGB image, got {got}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise VgsslError(f"image is empty ({rgb.shape[1]} x {rgb.shape[0]} pixels)")
    return Image.fromarray(np.ascontiguousarray(rgb))  # flipped views have negative strides


def _as_pil(item: ImageSource) -> Image.Image:
    return rgb_to_pil(item) if isinstance(item, np.ndarray) else load_image(item)


def _batches(items: Iterable[ImageSource], transform, batch_size: int) -> Iterator[torch.Tensor]:
    batch: list[torch.Tensor] = []
    for item in items:
        batch.append(transform(_as_pil(item)))
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def describe_images(
    model: torch.nn.Module, images: Iterable[ImageSource], image_size: Sequence[int], device: torch.device, *,
    batch_size: int = 32, workers: int = 0, progress: bool = True, total: int | None = None,
) -> np.ndarray:
    """(N, D) float32 descriptors of image files or RGB arrays, in order, consumed lazily.

    A list of paths goes through :func:`extract_descriptors` (data-loader workers, and
    bit-identical to ``vgssl eval``); any other iterable, e.g. frames decoded from a bag by a
    generator, is streamed in batches so the frames never have to sit in memory together.
    """
    if isinstance(images, (list, tuple)) and images and all(isinstance(p, (str, os.PathLike)) for p in images):
        return extract_descriptors(model, images, image_size, device, batch_size=batch_size, workers=workers,
                                   progress=progress, desc="database")
    was_training = model.training
    model.eval()
    transform = eval_transform(image_size)
    bar = tqdm(total=total, desc="database", unit="img", disable=not progress, leave=False)
    chunks = []
    for batch in _batches(images, transform, batch_size):
        chunks.append(embed_batch(model, batch, device))
        bar.update(len(batch))
    bar.close()
    model.train(was_training)
    if not chunks:
        raise VgsslError("no images to describe")
    return np.concatenate(chunks, axis=0)
