"""A descriptor model ready to describe images: from a checkpoint, or untrained from a config.

The one place every consumer (``vgssl eval``, ``build-db``, the localizer, the replay, Grad-CAM,
export, the results grid) gets its model from, so they all agree on how a checkpoint's config
and weights become a network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vgssl_core.errors import VgsslError
from vgssl_core.io import file_sha256
from vgssl_core.models.checkpoint import descriptor_weights, read_checkpoint
from vgssl_core.models.config import resolve_model_config
from vgssl_core.models.network import build_model


def describe_init(model_cfg: dict[str, Any], init_note: str = "") -> dict[str, Any]:
    """Which initial weights a model built from ``model_cfg`` started from, for run records
    (``summary.json``, ``test.json``, the ``vgssl table`` Init column).

    ``{"kind": "random" | "imagenet" | "file", "source": path or None, "sha256": hex or None,
    "note": the model's init_note}``. ImageNet weights are "imagenet" only when the cached file
    was there (``find_imagenet_weights``, the lookup the model itself made); otherwise "random".
    """
    from vgssl_core.models.weights import find_imagenet_weights

    path: Path | None = None
    kind = "random"
    if model_cfg.get("weights"):
        kind, path = "file", Path(model_cfg["weights"])
    elif model_cfg.get("pretrained") == "imagenet":
        path = find_imagenet_weights(model_cfg["backbone"])
        kind = "imagenet" if path is not None else "random"
    return {"kind": kind, "source": None if path is None else str(path),
            "sha256": None if path is None else file_sha256(path), "note": init_note}


def load_descriptor_model(
    ckpt: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> tuple[torch.nn.Module, dict[str, Any], str]:
    """(model in eval mode, its config, a one-line note on where the weights came from)."""
    if ckpt is None:
        cfg = resolve_model_config(overrides)
        # Without ImageNet weights the untrained descriptor is a random network: seed it, so the
        # baseline every table compares against is the same network in every run.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_model(cfg)
        return model.eval(), cfg, getattr(model, "init_note", "untrained descriptor")
    raw = read_checkpoint(ckpt)
    cfg, state = descriptor_weights(raw)
    # Weights come from the checkpoint: never fetch or look for ImageNet weights again.
    # Checkpoints from before the head-bias keys existed had a bias on every head Linear.
    legacy = {"head_bias_before_bn": True, "head_final_bias": True}
    cfg = resolve_model_config({**legacy, **cfg, "pretrained": "none", "weights": None})
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise VgsslError(
            f"{ckpt}: weights do not match the model config stored in it "
            f"({len(missing)} missing, {len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]})"
        )
    return model.eval(), cfg, f"checkpoint {Path(ckpt).name} (step {raw.get('global_step', '?')})"
