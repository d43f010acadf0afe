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


def _nhwc(model: torch.nn.Module) -> torch.nn.Module:
    """Convolution weights in channels-last order (the same values): with NHWC batches
    (``embed_batch``) oneDNN takes its fast path on a CPU (EfficientNet-Lite0 inference x0.81 on
    2 threads here) and a GPU its tensor cores."""
    return model.to(memory_format=torch.channels_last)


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
        return _nhwc(model).eval(), cfg, getattr(model, "init_note", "untrained descriptor")
    raw = read_checkpoint(ckpt)
    cfg, state = descriptor_weights(raw)
    trained_from = resolve_model_config(cfg)["weights"]
    # Weights come from the checkpoint: never fetch or look for ImageNet weights again.
    # Checkpoints from before the head-bias keys existed had a bias on every head Linear.
    legacy = {"head_bias_before_bn": True, "head_final_bias": True}
    cfg = resolve_model_config({**legacy, **cfg, "weights": "random"})
    model = build_model(cfg)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that disagree with the stored config
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc).splitlines()[0])
        raise VgsslError(f"{ckpt}: weights do not match the model config stored in it ({detail[:200]})") from None
    if missing or unexpected:
        raise VgsslError(
            f"{ckpt}: weights do not match the model config stored in it "
            f"({len(missing)} missing, {len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]})"
        )
    model.init_info = {"init": "checkpoint", "file": str(ckpt), "sha256": file_sha256(ckpt),
                       "step": raw.get("global_step"), "trained_from": trained_from}
    return _nhwc(model).eval(), cfg, f"checkpoint {Path(ckpt).name} (step {raw.get('global_step', '?')})"
