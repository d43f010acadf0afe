"""Checkpoint files: atomic writes, safe reads, and the descriptor model inside them.

A vgssl checkpoint is a Lightning checkpoint (so ``--resume`` restores optimiser, scheduler,
loops and RNG) with one extra plain-data entry, ``"vgssl"``, holding the model config, the
method and the prefix of the descriptor model's weights in ``state_dict``. Everything in it is
plain Python and tensors, so it loads with ``torch.load(weights_only=True)``: a checkpoint
never runs code. Writes go to a temporary file that replaces the target only when complete,
so a crash at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vgssl_core.errors import VgsslError

FORMAT_VERSION = 1
KEY = "vgssl"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a vgssl checkpoint safely; missing, truncated or foreign files are ``VgsslError``."""
    path = Path(path)
    if not path.is_file():
        raise VgsslError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VgsslError(f"{path}: not a readable checkpoint (truncated or not a torch file?): {reason[:200]}") from None
    if not isinstance(ckpt, dict) or KEY not in ckpt or "state_dict" not in ckpt:
        raise VgsslError(f"{path}: not a vgssl checkpoint (no '{KEY}' model config inside)")
    meta = ckpt[KEY]
    if not isinstance(meta, dict) or not isinstance(meta.get("model_config", {}), dict):
        raise VgsslError(f"{path}: not a vgssl checkpoint (its '{KEY}' entry is not a mapping)")
    version = meta.get("format", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise VgsslError(f"{path}: checkpoint format {version!r} is not a version number")
    if version > FORMAT_VERSION:
        raise VgsslError(f"{path}: checkpoint format {version} is newer than this vgssl supports ({FORMAT_VERSION})")
    if not isinstance(ckpt["state_dict"], dict):
        raise VgsslError(f"{path}: checkpoint 'state_dict' is not a mapping of weights")
    return ckpt


def descriptor_weights(ckpt: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(model config, state dict of the descriptor model) from a checkpoint read above."""
    meta = ckpt[KEY]
    prefix = meta.get("model_prefix", "")
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    return dict(meta["model_config"]), state

