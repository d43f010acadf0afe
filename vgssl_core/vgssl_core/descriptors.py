"""Descriptor extraction: images in, the model's retrieval descriptors out.

The one path used by evaluation, ``build-db``, the localizer node and the bag replay: decode,
``transforms.eval_transform``, forward in batches with no gradients (AMP on CUDA), float32 out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .dataset import load_image
from .errors import VgsslError
from .transforms import eval_transform

DEVICES = ("auto", "cpu", "cuda")


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
    batch = batch.to(device, non_blocking=True)
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
