"""Initial weights of a backbone, strictly offline.

* ``weights=PATH``: a local torchvision/timm state-dict file, loaded with
  ``torch.load(PATH, weights_only=True)``; ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers
  and a DataParallel ``module.`` prefix are accepted. Keys that do not fit -> ``VgsslError``.
* ``pretrained="imagenet"``: the ImageNet weights torchvision/timm would download, but only
  when a copy already sits in the local cache (``$TORCH_HOME/hub/checkpoints`` or, for timm,
  the Hugging Face hub cache). Nothing here ever opens a network connection: when no cached
  copy exists, one line is logged and the network keeps its random initialisation.

``initialise`` returns a one-line note saying which initialisation was used
(``DescriptorModel.init_note``), so the CLI can print it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from vgssl_core.errors import VgsslError
from vgssl_core.models.backbones import BACKBONES

log = logging.getLogger(__name__)


def torch_hub_checkpoints() -> Path:
    """``$TORCH_HOME/hub/checkpoints``: where torchvision (and timm's URL path) caches weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _hf_hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def find_imagenet_weights(backbone: str) -> Path | None:
    """The cached ImageNet weight file of ``backbone``, or None. Looks, never downloads."""
    spec = BACKBONES[backbone]
    for name in spec.imagenet_files:
        path = torch_hub_checkpoints() / name
        if path.is_file():
            return path
    if spec.hf_hub_id:
        repo = _hf_hub_cache() / ("models--" + spec.hf_hub_id.replace("/", "--")) / "snapshots"
        for pattern in ("*/model.safetensors", "*/pytorch_model.bin"):
            found = sorted(repo.glob(pattern))
            if found:
                return found[-1]
    return None


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from a local file (safetensors or ``torch.save``), unwrapping wrappers."""
    path = Path(path)
    if not path.is_file():
        raise VgsslError(f"weights file {path} not found; pass an existing torchvision/timm state-dict file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors, truncated files, foreign formats
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise VgsslError(f"weights file {path} could not be read as a torch/safetensors state dict ({reason})") from exc
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise VgsslError(f"weights file {path} holds no state dict (a mapping of parameter names to tensors)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_weights(network: nn.Module, backbone: str, path: str | Path) -> None:
    """Load a local state-dict file into a full (uncut) torchvision/timm ``network``."""
    spec = BACKBONES[backbone]
    state = read_state_dict(path)
    if spec.weights_family == "timm":
        from timm.models.vision_transformer import checkpoint_filter_fn

        try:  # resamples the position embedding if the file was trained at another size
            state = checkpoint_filter_fn(state, network)
        except Exception as exc:
            raise VgsslError(f"weights file {path} does not fit {backbone}: {exc}".splitlines()[0]) from exc
    try:
        missing, unexpected = network.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc).splitlines()[0])
        raise VgsslError(f"weights file {path} does not fit {backbone}: {detail}") from exc
    is_classifier = lambda key: key.startswith(spec.classifier_prefixes)  # noqa: E731
    missing = [k for k in missing if not is_classifier(k)]
    unexpected = [k for k in unexpected if not is_classifier(k)]
    if missing or unexpected:
        parts = ([f"missing keys such as {missing[0]!r} ({len(missing)} in all)"] if missing else []) + (
            [f"unexpected keys such as {unexpected[0]!r} ({len(unexpected)} in all)"] if unexpected else []
        )
        raise VgsslError(
            f"weights file {path} does not fit {backbone}: {'; '.join(parts)}; "
            f"pass a {spec.weights_family} state dict of {backbone}"
        )


def initialise(network: nn.Module, backbone: str, pretrained: str, weights: str | None) -> str:
    """Load the initial weights into ``network``; returns the one-line ``init_note``."""
    if weights is not None:
        load_weights(network, backbone, weights)
        return f"{backbone} initialised from weights file {weights}"
    if pretrained == "none":
        return f"{backbone} uses random initialisation (pretrained: none)"
    found = find_imagenet_weights(backbone)
    if found is None:
        where = f"TORCH_HOME cache ({torch_hub_checkpoints()})"
        if BACKBONES[backbone].hf_hub_id:
            where += f" or Hugging Face cache ({_hf_hub_cache()})"
        note = f"note: ImageNet weights for {backbone} not found in {where}; using random initialisation"
        log.warning(note)
        return note
    load_weights(network, backbone, found)
    return f"{backbone} initialised with ImageNet weights from cache {found}"
