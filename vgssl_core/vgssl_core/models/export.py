"""``vgssl export``: a descriptor model as one TorchScript or ONNX file, usable without vgssl's model code.

The exported file maps a batch of *normalised* images (B, 3, H, W) float32 to the retrieval
descriptor (B, D), exactly ``DescriptorModel.retrieval_descriptor`` (L2-normalised when the
model config says so). A sidecar JSON beside it, ``<file>.json``, says everything a user needs::

    export_model("run/best.ckpt", "onnx", "deploy/model.onnx", dynamic=True)
    model = load_exported("deploy/model.onnx")          # reads deploy/model.onnx.json
    descriptors = model(images)                          # what the checkpoint computes, within 1e-4
    Localizer("deploy/model.onnx", "maps/city")          # a database built with run/best.ckpt

Sidecar keys: ``format`` ("vgssl-export"), ``format_version``, ``export_format`` (torchscript |
onnx), ``file`` and ``file_sha256`` of the exported file, ``checkpoint`` {file, sha256} of the
checkpoint it came from (the map database's checkpoint check uses this hash), ``model_config``,
``preprocessing`` {mean, std, image_size [h, w], ...}, ``input_name``/``output_name``,
``dynamic`` (height/width may differ from ``image_size``; the batch size always may),
``descriptor_dim``, ``metric``, ``normalized``, and ``check``: the largest absolute difference
from the checkpoint's descriptors measured at export, per input size, and the tolerance.

Trust model. A checkpoint never runs code (``torch.load(weights_only=True)``). A TorchScript
file is a program: ``torch.jit.load`` executes the code serialised in it, so load only exports
you made yourself or that you would run as a program. An ONNX file is a graph of standard
operators interpreted by onnxruntime (no Python inside), still treat it as trusted input.
Before loading, the file's sha256 must equal the sidecar's: a sidecar describing another file
(an overwritten export) is refused. That guards against mix-ups, not against an attacker who
can write both files.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from vgssl_core import __version__
from vgssl_core.io import file_sha256, fsync_dir, fsync_file, remove_stale_temporaries, temp_prefix
from vgssl_core.errors import VgsslError
from vgssl_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD

FORMAT = "vgssl-export"
FORMAT_VERSION = 1
FORMATS = ("torchscript", "onnx")
SUFFIXES = {"torchscript": ".ts", "onnx": ".onnx"}
TOLERANCE = 1e-4  # max |exported - checkpoint| of any descriptor value, fp32 on the CPU
INPUT_NAME, OUTPUT_NAME = "images", "descriptor"
ONNX_OPSET = 18


class SearchDescriptor(nn.Module):
    """``model.retrieval_descriptor`` as ``forward``: what export, Grad-CAM and search all see."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model.retrieval_descriptor(images)


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """torch marks TorchScript deprecated and the tracer warns about shape arithmetic; the export
    is checked numerically at every size it claims, so those warnings say nothing here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+.* is deprecated.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        yield


def _check_sizes(image_size: list[int], dynamic: bool) -> list[list[int]]:
    """Input sizes the export is verified at: its own, and with ``dynamic`` a larger one (a
    multiple-of-16 step, so a DeiT patch grid still fits)."""
    h, w = image_size
    return [[h, w], [h + 32, w + 64]] if dynamic else [[h, w]]


def _sample(batch: int, size: list[int], seed: int) -> Tensor:
    """A normalised batch of uniform-noise images: inputs in the model's real range."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, 3, *size, generator=g)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (pixels - mean) / std


def _export_torchscript(module: nn.Module, example: Tensor, out: Path) -> None:
    with _quiet_exporters(), torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
        buffer = io.BytesIO()  # saved in memory, written by Python: a full disk is an OSError, not an abort
        torch.jit.save(traced, buffer)
    with open(out, "wb") as fh:
        fh.write(buffer.getbuffer())


def _export_onnx(module: nn.Module, example: Tensor, out: Path, dynamic: bool) -> None:
    try:
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ModuleNotFoundError:
        raise VgsslError("ONNX export needs the 'onnx' and 'onnxscript' packages: "
                         "pip install onnx==1.23.2 onnxscript==0.7.2 (and onnxruntime==1.31.1 to run it)") from None
    dim = torch.export.Dim
    shapes = {0: dim("batch", min=1, max=4096)}
    if dynamic:
        shapes.update({2: dim("height", min=32, max=8192), 3: dim("width", min=32, max=8192)})
    chatty = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [log.level for log in chatty]
    for log in chatty:  # the graph optimisers log every pass at INFO
        log.setLevel(logging.WARNING)
    try:
        with _quiet_exporters(), contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its steps
            torch.onnx.export(module, (example,), str(out), dynamo=True, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_shapes={INPUT_NAME: shapes},
                              opset_version=ONNX_OPSET, external_data=False, verbose=False)
    finally:
        for log, level in zip(chatty, levels):
            log.setLevel(level)


def export_model(ckpt: str | Path, fmt: str, out: str | Path, *, dynamic: bool = False,
                 image_size: list[int] | tuple[int, int] | None = None, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Export the descriptor model of ``ckpt`` to ``out``; writes and returns the sidecar.

    ``image_size`` [h, w] is the input size the export is made and verified at (default the
    model config's). The exported model's descriptors are compared with the checkpoint's on
    the CPU in fp32 at that size (batch 1 and 3) and, with ``dynamic``, at a second size; a
    difference above ``tolerance`` raises ``VgsslError``. The file and its sidecar replace ``out``
    only once verified: a failed export leaves an earlier one intact.
    """
    from vgssl_core.models.loading import load_descriptor_model
    from vgssl_core.models import resolve_model_config

    if fmt not in FORMATS:
        raise VgsslError(f"unknown export format '{fmt}'; valid: {', '.join(FORMATS)}")
    ckpt, out = Path(ckpt), Path(out)
    model, cfg, _ = load_descriptor_model(ckpt)
    size = [int(v) for v in (image_size or cfg["image_size"])]
    try:  # the same checks as a training config's image size
        resolve_model_config({**cfg, "image_size": size})
    except VgsslError as exc:
        raise VgsslError(f"--height/--width: {exc}") from None
    if cfg["backbone"].startswith("deit_s") and (size[0] % 16 or size[1] % 16):
        raise VgsslError(f"DeiT needs height and width divisible by 16, got {size[0]}x{size[1]}")
    module = SearchDescriptor(model.float().eval()).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f"{temp_prefix(out)}partial")
    example = _sample(2, size, seed=0)
    try:
        if fmt == "torchscript":
            _export_torchscript(module, example, partial)
        else:
            _export_onnx(module, example, partial, dynamic)
        exported = _load_file(partial, fmt, torch.device("cpu"))
        check = {"tolerance": tolerance, "max_abs_diff": {}}
        for i, check_size in enumerate(_check_sizes(size, dynamic)):
            worst = 0.0
            for batch in (1, 3):
                x = _sample(batch, check_size, seed=1 + i)
                with torch.no_grad():
                    want, got = module(x), exported(x)
                if got.shape != want.shape:
                    raise VgsslError(f"exported model gives shape {tuple(got.shape)} at input {tuple(x.shape)}, "
                                     f"the checkpoint {tuple(want.shape)}")
                worst = max(worst, float((got - want).abs().max()))
            check["max_abs_diff"][f"{check_size[0]}x{check_size[1]}"] = worst
            if worst > tolerance:
                raise VgsslError(f"exported {fmt} model differs from the checkpoint by {worst:.2e} at input "
                                 f"{check_size[0]}x{check_size[1]} (tolerance {tolerance:g})"
                                 + ("; export without --dynamic" if i else ""))
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(out)) from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    normalized = bool(cfg["normalize_descriptor"])
    sidecar = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vgssl_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "export_format": fmt,
        "file": out.name,
        "file_sha256": file_sha256(partial),
        "checkpoint": {"file": ckpt.name, "sha256": file_sha256(ckpt)},
        "model_config": {**cfg, "image_size": size},
        "preprocessing": {
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "image_size": size,
            "input": "RGB float32 (B, 3, H, W): pixels / 255 resized to image_size (bilinear, antialiased), "
                     "then (x - mean) / std per channel (vgssl_core.data.transforms.eval_transform)",
        },
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "dynamic": bool(dynamic),
        "descriptor_dim": int(model.descriptor_dim),
        "metric": cfg["metric"],
        "normalized": normalized,
        "check": check,
    }
    side_partial = sidecar_path(partial)
    try:
        side_partial.write_text(json.dumps(sidecar, indent=2) + "\n")
        fsync_file(partial)
        fsync_file(side_partial)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        side_partial.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(sidecar_path(out))) from exc
    os.replace(partial, out)  # a moment with the new file and the old sidecar: its sha256 refuses it
    os.replace(side_partial, sidecar_path(out))
    fsync_dir(out.parent)
    remove_stale_temporaries(out)
    return sidecar


# --- loading -------------------------------------------------------------------------------
def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The validated sidecar of an exported model (``VgsslError`` naming what is wrong)."""
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise VgsslError(f"{path}: exported model not found")
    if not side.is_file():
        raise VgsslError(f"{path}: no sidecar {side.name} beside it; re-export with 'vgssl export'")
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise VgsslError(f"{side}: unreadable JSON ({exc}); re-export with 'vgssl export'") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise VgsslError(f"{side}: not a vgssl export sidecar")
    if not isinstance(meta.get("format_version"), int) or meta["format_version"] > FORMAT_VERSION:
        raise VgsslError(f"{side}: export format {meta.get('format_version')} is newer than this vgssl supports")
    for key in ("export_format", "file_sha256", "checkpoint", "model_config", "preprocessing", "descriptor_dim"):
        if key not in meta:
            raise VgsslError(f"{side}: sidecar has no '{key}'; re-export with 'vgssl export'")
    if meta["export_format"] not in FORMATS:
        raise VgsslError(f"{side}: unknown export format '{meta['export_format']}'")
    pre = meta["preprocessing"]
    if [float(v) for v in pre.get("mean", [])] != list(IMAGENET_MEAN) or \
            [float(v) for v in pre.get("std", [])] != list(IMAGENET_STD):
        raise VgsslError(f"{side}: preprocessing mean/std differ from vgssl's ImageNet normalisation; "
                         "this vgssl cannot feed that model")
    return meta


def is_exported(path: str | Path) -> bool:
    """True when ``path`` has a vgssl export sidecar beside it (else: treat it as a checkpoint)."""
    side = sidecar_path(path)
    if not side.is_file():
        return False
    try:
        return json.loads(side.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


class _OnnxModule(nn.Module):
    """An onnxruntime session as a module: torch tensors in and out, on the session's device."""

    def __init__(self, path: Path, device: torch.device) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ModuleNotFoundError:
            raise VgsslError(f"{path}: running an ONNX model needs onnxruntime: pip install onnxruntime==1.31.1") from None
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, images: Tensor) -> Tensor:
        x = images.detach().float().cpu().contiguous().numpy()
        (out,) = self.session.run(None, {self.input_name: x})
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(images.device)


def _load_file(path: Path, fmt: str, device: torch.device) -> nn.Module:
    if fmt == "torchscript":
        try:
            with _quiet_exporters():
                module = torch.jit.load(str(path), map_location=device)  # runs the file's code: see "Trust model"
        except RuntimeError as exc:
            raise VgsslError(f"{path}: not a loadable TorchScript file ({str(exc).strip().splitlines()[0][:160]})") from None
        return module.eval()
    try:
        return _OnnxModule(path, device)
    except VgsslError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types
        raise VgsslError(f"{path}: not a loadable ONNX model ({str(exc).strip().splitlines()[0][:160]})") from None


class ExportedModel(nn.Module):
    """An exported descriptor model with its sidecar; drop-in for a ``DescriptorModel`` at inference.

    ``model(images)`` and ``model.retrieval_descriptor(images)`` both give the searched
    descriptor. ``config`` is the model config with ``image_size`` the export's input size;
    ``checkpoint_sha256`` the hash of the checkpoint it was exported from.
    """

    def __init__(self, path: Path, module: nn.Module, sidecar: dict[str, Any]) -> None:
        super().__init__()
        self.path, self.module, self.sidecar = path, module, sidecar
        self.config = {**sidecar["model_config"], "image_size": list(sidecar["preprocessing"]["image_size"])}
        self.preprocess = {k: sidecar["preprocessing"][k] for k in ("mean", "std", "image_size")}
        self.descriptor_dim = int(sidecar["descriptor_dim"])
        self.checkpoint_sha256 = str(sidecar["checkpoint"]["sha256"])
        self.note = (f"{sidecar['export_format']} export {path.name} of checkpoint {sidecar['checkpoint'].get('file')} "
                     f"(sha256 {self.checkpoint_sha256[:12]})")

    def forward(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return self.module(images)

    def retrieval_descriptor(self, images: Tensor) -> Tensor:
        return self(images)

    def check_database(self, manifest: dict[str, Any], force: bool = False) -> None:
        """An export at another input size computes other descriptors than the map's: refuse."""
        built = (manifest.get("model_config") or {}).get("image_size")
        if built is not None and list(built) != self.config["image_size"] and not force:
            h, w = self.config["image_size"]
            raise VgsslError(f"{self.path.name} was exported for {h}x{w} input but the database was built at "
                             f"{built[0]}x{built[1]}; export with --height {built[0]} --width {built[1]} or pass --force")


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> ExportedModel:
    """Load an exported model after checking its sidecar and its sha256 (see "Trust model")."""
    path = Path(path)
    meta = read_sidecar(path)
    if file_sha256(path) != meta["file_sha256"]:
        raise VgsslError(f"{path}: file does not match its sidecar (sha256 differs); re-export with 'vgssl export'")
    device = torch.device(device)
    return ExportedModel(path, _load_file(path, meta["export_format"], device), meta).to(device)
