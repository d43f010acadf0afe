"""Where a descriptor model looks: Grad-CAM for retrieval, and how much of it falls on the places' fixed parts.

Grad-CAM (Selvaraju et al., ICCV 2017, through the ``grad-cam`` package) needs a scalar to
explain. For a place descriptor that is the similarity the search ranks by: the query's
descriptor against a database descriptor, either the one it retrieved (``target="retrieved"``:
why did it match?) or the true nearest database image (``target="true"``: what should it have
matched on?). The target layer is the backbone's last stage (ResNet ``layer3``/``layer4``; for
DeiT the last transformer block, its patch tokens reshaped to a map).

On the synthetic world every image has a class mask, so the attention can be measured: the
*geo-relevance* of a model is the share of its Grad-CAM mass on buildings and landmarks (what
identifies a place), the *transient* share that on vehicles and pedestrians (what does not).
Both are in [0, 1], averaged over queries. Since a class that fills half the image would get
half the mass from a uniform map, each share is also divided by the classes' pixel share
(*lift*: 1 = no preference, > 1 = attends to them more than their area)::

    maps = gradcam_maps(model, cfg, images, reference_descriptors)       # (B, H, W) in [0, 1]
    report = geo_relevance(model, cfg, "worlds/tiny", split="test", n=8)  # {"geo_share": ..., ...}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vgssl_core.data.dataset import GeoSplit, load_image, load_split
from vgssl_core.data.geo import EVAL_RADIUS_M
from vgssl_core.errors import VgsslError
from vgssl_core.models.export import SearchDescriptor
from vgssl_core.data.transforms import eval_transform

GEO_CLASSES = ("building", "landmark")
TRANSIENT_CLASSES = ("vehicle", "pedestrian")
TARGETS = ("retrieved", "true")


# --- Grad-CAM on a descriptor model --------------------------------------------------------
class SimilarityTarget:
    """Grad-CAM target: the search similarity of one image's descriptor to a reference descriptor.

    ``ip``: cosine similarity (the descriptors are searched L2-normalised); ``l2``: minus the
    squared distance. Called by the ``grad-cam`` package on the model output of one image (D,).
    """

    def __init__(self, reference: Tensor, metric: str = "ip") -> None:
        self.reference, self.metric = reference.detach().float(), metric

    def __call__(self, output: Tensor) -> Tensor:
        ref = self.reference.to(output.device)
        if self.metric == "ip":
            return (F.normalize(output, dim=0) * F.normalize(ref, dim=0)).sum()
        return -((output - ref) ** 2).sum()


class _TokensToMap:
    """ViT tokens (B, N, C) -> (B, C, h, w) without the class/prefix tokens, for Grad-CAM."""

    def __init__(self, prefix_tokens: int, grid: tuple[int, int]) -> None:
        self.prefix, self.grid = prefix_tokens, grid

    def __call__(self, tokens: Tensor) -> Tensor:
        patches = tokens[:, self.prefix:]
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *self.grid)


def target_layer(model: nn.Module, image_size: Sequence[int]) -> tuple[nn.Module, Any]:
    """(the backbone's last stage, reshape transform or None) of a ``DescriptorModel``."""
    from vgssl_core.models.backbones import ViTFeatureMap

    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, ViTFeatureMap):
        ph, pw = backbone.patch_size
        grid = (int(image_size[0]) // ph, int(image_size[1]) // pw)
        return backbone.vit.blocks[-1], _TokensToMap(backbone.vit.num_prefix_tokens, grid)
    if isinstance(backbone, nn.Sequential) and len(backbone):
        return backbone[-1], None
    raise VgsslError("Grad-CAM needs a vgssl DescriptorModel (backbone -> aggregation -> head), "
                     "not an exported model; pass the checkpoint")


def gradcam_maps(model: nn.Module, cfg: dict[str, Any], images: Tensor, references: Tensor) -> np.ndarray:
    """Grad-CAM maps (B, H, W) in [0, 1] at the input size: why each image is similar to its reference.

    ``images`` is a preprocessed batch (``eval_transform``), ``references`` (B, D) the descriptors
    to explain the similarity to. The weights are untouched; their ``.grad`` is cleared, the mode restored.
    """
    from pytorch_grad_cam import GradCAM

    layer, reshape = target_layer(model, images.shape[-2:])
    was_training = model.training
    wrapper = SearchDescriptor(model).eval()
    targets = [SimilarityTarget(r, cfg.get("metric", "ip")) for r in references]
    # an input that needs gradients: they reach the target layer even when earlier stages are frozen
    x = images.detach().float().clone().requires_grad_(True)
    with GradCAM(model=wrapper, target_layers=[layer], reshape_transform=reshape) as cam:
        maps = cam(input_tensor=x, targets=targets)
    wrapper.zero_grad(set_to_none=True)  # Grad-CAM's backward leaves .grad on the weights
    model.train(was_training)
    return np.asarray(maps, dtype=np.float32)


# --- how much of the attention falls on which classes ----------------------------------------
def class_ids(root: str | Path, names: Sequence[str]) -> list[int]:
    """Mask ids of class ``names`` from ``<root>/classes.json`` ({"id": "name"})."""
    path = Path(root) / "classes.json"
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        raise VgsslError(f"{root}: no classes.json, so no class masks to measure attention with "
                         "(the synthetic world from 'vgssl synth' has them)") from None
    except (OSError, ValueError) as exc:
        raise VgsslError(f"{path}: unreadable ({exc})") from None
    by_name = {str(v): int(k) for k, v in table.items()}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise VgsslError(f"{path}: no class '{missing[0]}'; it has {', '.join(by_name)}")
    return [by_name[n] for n in names]


def mask_path(root: str | Path, split: str, image: str | Path, side: str = "queries") -> Path:
    return Path(root) / "masks" / split / side / (Path(image).stem + ".png")


def has_masks(root: str | Path, split: str) -> bool:
    return (Path(root) / "classes.json").is_file() and (Path(root) / "masks" / split).is_dir()


def read_mask(path: Path) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise VgsslError(f"{path}: class mask missing or unreadable")
    return mask if mask.ndim == 2 else mask[..., 0]


def attention_shares(cam: np.ndarray, mask: np.ndarray, groups: dict[str, Sequence[int]]) -> dict[str, float]:
    """For each named group of class ids: ``<name>_share`` (fraction of the CAM mass on its pixels)
    and ``<name>_pixels`` (fraction of the image it covers). The CAM is resized to the mask.

    A CAM with no mass (all zero) has no shares: they are NaN.
    """
    cam = np.asarray(cam, dtype=np.float64)
    if cam.shape != mask.shape:
        cam = cv2.resize(cam.astype(np.float32), (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR)
        cam = np.maximum(cam.astype(np.float64), 0.0)
    total = cam.sum()
    out = {}
    for name, ids in groups.items():
        inside = np.isin(mask, list(ids))
        out[f"{name}_share"] = float(cam[inside].sum() / total) if total > 0 else float("nan")
        out[f"{name}_pixels"] = float(inside.mean())
    return out


def summarise_shares(per_query: list[dict[str, float]], groups: Sequence[str] = ("geo", "transient")) -> dict[str, Any]:
    """Means over queries, and each group's lift = mean share / mean pixel share (NaN-free queries)."""
    out: dict[str, Any] = {"n_queries": len(per_query)}
    for name in groups:
        shares = np.array([q[f"{name}_share"] for q in per_query], dtype=np.float64)
        pixels = np.array([q[f"{name}_pixels"] for q in per_query], dtype=np.float64)
        ok = np.isfinite(shares)
        share = float(shares[ok].mean()) if ok.any() else float("nan")
        pixel = float(pixels[ok].mean()) if ok.any() else float("nan")
        out[f"{name}_share"] = share
        out[f"{name}_pixel_share"] = pixel
        out[f"{name}_lift"] = share / pixel if ok.any() and pixel > 0 else float("nan")
    out["n_without_attention"] = int(sum(not np.isfinite(q["geo_share"]) for q in per_query))
    return out


# --- queries, their targets, and the whole measurement -------------------------------------
def pick_queries(n_queries: int, n: int) -> list[int]:
    """``n`` query indices spread evenly over the split (the same for every model compared)."""
    if n < 1:
        raise VgsslError(f"--n must be >= 1, got {n}")
    return sorted({int(i) for i in np.linspace(0, n_queries - 1, min(n, n_queries)).round()})


def explain_queries(model: nn.Module, cfg: dict[str, Any], split: GeoSplit, queries: Sequence[int], *,
                    target: str = "retrieved", device: torch.device | None = None, batch_size: int = 8,
                    db_desc: np.ndarray | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """Grad-CAM of each query in ``queries`` against its target database image.

    Returns one dict per query: ``query`` (index), ``query_id``, ``target`` (database index),
    ``target_id``, ``target_kind``, ``correct`` (target within 25 m), ``cam`` (H, W) array.
    """
    from vgssl_core.evaluation.descriptors import extract_descriptors
    from vgssl_core.evaluation.search import ExactIndex

    if target not in TARGETS:
        raise VgsslError(f"unknown Grad-CAM target '{target}'; valid: {', '.join(TARGETS)}")
    device = device or next(model.parameters()).device
    size = cfg["image_size"]
    q_paths = [split.queries.paths[i] for i in queries]
    transform = eval_transform(size)
    images = torch.stack([transform(load_image(p)) for p in q_paths])
    if target == "retrieved":
        if db_desc is None:
            db_desc = extract_descriptors(model, split.database.paths, size, device, batch_size=32,
                                          progress=progress, desc="database")
        q_desc = extract_descriptors(model, q_paths, size, device, batch_size=32, progress=False)
        _, idx = ExactIndex(db_desc, cfg.get("metric", "ip"), use_gpu=False).search(q_desc, 1)
        chosen = idx[:, 0]
        references = torch.from_numpy(np.ascontiguousarray(db_desc[chosen]))
    else:
        gaps = np.linalg.norm(split.database.utm[None, :, :] - split.queries.utm[list(queries)][:, None, :], axis=2)
        chosen = gaps.argmin(1)
        references = torch.from_numpy(extract_descriptors(model, [split.database.paths[i] for i in chosen], size,
                                                          device, batch_size=32, progress=False))
    maps = []
    for start in range(0, len(queries), batch_size):
        batch = images[start:start + batch_size].to(device)
        maps.append(gradcam_maps(model, cfg, batch, references[start:start + batch_size].to(device)))
    maps = np.concatenate(maps)
    out = []
    for j, qi in enumerate(queries):
        gap = float(np.linalg.norm(split.database.utm[chosen[j]] - split.queries.utm[qi]))
        out.append({"query": int(qi), "query_id": split.queries.ids[qi], "target": int(chosen[j]),
                    "target_id": split.database.ids[chosen[j]], "target_kind": target,
                    "target_distance_m": round(gap, 2), "correct": gap <= EVAL_RADIUS_M, "cam": maps[j]})
    return out


def measure_shares(root: str | Path, split: str, explained: list[dict[str, Any]]) -> tuple[list[dict], dict]:
    """(per-query shares, summary) of Grad-CAM maps against the split's class masks."""
    groups = {"geo": class_ids(root, GEO_CLASSES), "transient": class_ids(root, TRANSIENT_CLASSES)}
    per_query = []
    for item in explained:
        mask = read_mask(mask_path(root, split, item["query_id"]))
        per_query.append({"query": item["query"], **attention_shares(item["cam"], mask, groups)})
    return per_query, summarise_shares(per_query)


def geo_relevance(model: nn.Module, cfg: dict[str, Any], root: str | Path, *, split: str = "test", n: int = 8,
                  target: str = "retrieved", device: torch.device | None = None,
                  progress: bool = False) -> dict[str, Any]:
    """The attention shares of one model on ``n`` queries of a split with class masks (see module doc)."""
    if not has_masks(root, split):
        raise VgsslError(f"{root}: split '{split}' has no class masks (masks/{split}/ and classes.json); "
                         "geo-relevance needs the synthetic world from 'vgssl synth'")
    geo = load_split(root, split)
    explained = explain_queries(model, cfg, geo, pick_queries(len(geo.queries), n), target=target, device=device,
                                progress=progress)
    per_query, summary = measure_shares(root, split, explained)
    return {**summary, "split": split, "target": target, "classes": {"geo": list(GEO_CLASSES),
                                                                    "transient": list(TRANSIENT_CLASSES)},
            "per_query": [{**q, "query_id": e["query_id"], "correct": e["correct"]}
                          for q, e in zip(per_query, explained)]}


# --- pictures ---------------------------------------------------------------------------------
def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The CAM as a JET heat map over an RGB uint8 image (resized to the image), RGB uint8."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    cam = cv2.resize(np.asarray(cam, np.float32), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    return show_cam_on_image(image.astype(np.float32) / 255.0, np.clip(cam, 0, 1), use_rgb=True,
                             image_weight=1.0 - alpha)


def save_panel(path: Path, images: list[np.ndarray], columns: dict[str, list[np.ndarray]],
               row_notes: list[str] | None = None) -> Path:
    """The paper's figure: one row per query, the query then one overlay per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(images), 1 + len(columns)
    h, w = images[0].shape[:2]
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.2 * n_cols * w / h, 2.2 * n_rows + 0.3), squeeze=False)
    for r in range(n_rows):
        cells = [("query", images[r])] + [(label, maps[r]) for label, maps in columns.items()]
        for c, (label, picture) in enumerate(cells):
            ax = axes[r][c]
            ax.imshow(picture)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=9)
            if c == 0 and row_notes:
                ax.set_ylabel(row_notes[r], fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
