"""One short check of a lent GPU machine (``benchmarks/gpu_check.sh`` runs it; under 8 minutes).

Measures, each part on its own (a failing part is recorded and the rest still runs):

* **train_step**: SimCLR on R50-conv5-GeM + FC-1-2048 at 480x640 (the paper's resolution;
  ``freeze_stages`` as the presets: conv4/conv5 train), one optimiser step (forward of both views,
  backward, Adam) in fp32 and under bf16 autocast: seconds per step and images/s;
* **descriptors**: inference images/s of R50-conv5-GeM and EfficientNet-Lite0-GeM at 480x640;
* **localizer**: frames/s of the in-process ``Localizer`` (640x480 rgb frames in, fixes out) on a
  map of the tiny synthetic world, with a 1-step R50-GeM checkpoint;
* **search**: exact top-10 search of 1,000 queries in 1M x 1024 descriptors with faiss on the GPU
  (when this faiss has GPU support), and the same search as a chunked torch matmul on the GPU.

Random weights (no download: the box has no internet); speed does not depend on them.

    benchmarks/gpu_check.sh                     # on the GPU box, from the repo root
    python benchmarks/gpu_check.py --cpu --quick  # a smoke test anywhere (tiny sizes)

Writes ``$OUT/gpu_check.json`` when ``$OUT`` is set, else ``bench_results/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import machine  # noqa: E402  (benchmarks/benchkit.py, next to this script)

REPO = Path(__file__).resolve().parents[1]
R50 = {"backbone": "resnet50", "layer": "conv5", "aggregation": "gem", "weights": "random"}
LITE0 = {"backbone": "efficientnet_lite0", "aggregation": "gem", "weights": "random"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Seconds per call (mean over ``repeats`` after ``warmup`` calls)."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def train_step(device: torch.device, size: list[int], batch: int, steps: int) -> dict[str, Any]:
    from vgssl_core.methods import build_method

    out: dict[str, Any] = {"model": "R50-conv5-GeM FC-1-2048 (SimCLR)", "image_size": size, "pairs_per_step": batch}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            out[name] = {"skipped": "bf16 not supported on this GPU"}
            continue
        torch.manual_seed(0)
        method = build_method("simclr", {**R50, "image_size": size}, {}).to(device).train()
        optimizer = torch.optim.Adam(method.trainable_parameters(), lr=1e-5)
        a, b = (torch.randn(batch, 3, *size, device=device) for _ in range(2))
        positions = torch.zeros(batch, 2, 2, dtype=torch.float64, device=device)

        def step() -> None:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = method.loss_pairs(a, b, positions)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        seconds = timed(step, device, warmup=2, repeats=steps)
        out[name] = {"step_s": round(seconds, 4), "images_per_s": round(2 * batch / seconds, 1)}
        if device.type == "cuda":
            out[name]["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            torch.cuda.reset_peak_memory_stats(device)
        del method, optimizer
    return out


def descriptors(device: torch.device, size: list[int], batch: int, repeats: int) -> dict[str, Any]:
    from vgssl_core.models.network import build_model
    from vgssl_core.models.config import resolve_model_config

    out: dict[str, Any] = {"image_size": size, "batch": batch}
    for label, cfg in (("R50-conv5-GeM", R50), ("EfficientNet-Lite0-GeM", LITE0)):
        model = build_model(resolve_model_config({**cfg, "image_size": size})).to(device).eval()
        images = torch.randn(batch, 3, *size, device=device)
        entry = {}
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            def forward() -> None:
                with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    model(images)

            seconds = timed(forward, device, warmup=2, repeats=repeats)
            entry[name] = {"batch_s": round(seconds, 4), "images_per_s": round(batch / seconds, 1)}
        out[label] = entry
        del model
    return out


def localizer(device: torch.device, size: list[int], frames: int, work: Path) -> dict[str, Any]:
    from vgssl_core.cli import main as vgssl
    from vgssl_core.localization.localizer import Localizer
    from vgssl_core.synth import generate_world

    world, run, db = work / "world", work / "run", work / "db"
    generate_world(world, preset="tiny", seed=0, progress=False)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    assert vgssl(["train", "--data", str(world), "--out", str(run), "--max-steps", "1", "--quiet", "method=simclr",
                  *(f"model.{k}={v}" for k, v in R50.items()), f"model.image_size=[{size[0]},{size[1]}]",
                  "data.batch_size=4", "data.workers=0", "trainer.val_split=null", "trainer.test_split=null",
                  f"trainer.accelerator={accelerator}", "trainer.devices=1"]) == 0
    assert vgssl(["build-db", "--data", str(world), "--ckpt", str(run / "last.ckpt"), "--out", str(db), "--quiet",
                  "--device", device.type]) == 0
    loc = Localizer(run / "last.ckpt", db, device=device.type)
    rgb = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    for _ in range(3):
        loc.localize(rgb)
    latencies = []
    for _ in range(frames):
        start = time.perf_counter()
        loc.localize(rgb)  # returns numpy: synchronised with the GPU
        latencies.append(time.perf_counter() - start)
    p50 = float(np.median(latencies))
    return {"model": "R50-conv5-GeM FC-1-2048", "image_size": size, "frame": "640x480 rgb8",
            "database_images": len(loc.database), "frames": frames, "p50_ms": round(1000 * p50, 2),
            "frames_per_s": round(1.0 / p50, 1)}


def search(device: torch.device, n_db: int, dim: int, n_queries: int, k: int = 10) -> dict[str, Any]:
    from vgssl_core.evaluation.search import ExactIndex, gpu_available

    rng = np.random.default_rng(0)
    db = rng.standard_normal((n_db, dim), dtype=np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    queries = db[rng.choice(n_db, n_queries, replace=False)] + 0.01 * rng.standard_normal((n_queries, dim), dtype=np.float32)
    out: dict[str, Any] = {"database": [n_db, dim], "queries": n_queries, "k": k}
    on_gpu = gpu_available()
    out["faiss_gpu_available"] = on_gpu
    if on_gpu or device.type == "cpu":  # on a GPU box without faiss-gpu, a 1M CPU search is not what is asked
        index = ExactIndex(db, "ip", use_gpu=on_gpu)
        seconds = timed(lambda: index.search(queries, k), device, warmup=1, repeats=3)
        out["faiss_gpu" if on_gpu else "faiss_cpu"] = {"search_s": round(seconds, 4),
                                                       "queries_per_s": round(n_queries / seconds, 1)}
        del index
    else:
        out["faiss_gpu"] = {"skipped": "this faiss has no GPU support (faiss-cpu); see torch_exact below"}
    db_t = torch.from_numpy(db).to(device)
    q_t = torch.from_numpy(queries).to(device)

    def torch_topk() -> torch.Tensor:
        best = []
        for chunk in torch.split(db_t, 262_144):
            best.append(torch.topk(q_t @ chunk.T, k, dim=1))
        scores = torch.cat([b.values for b in best], dim=1)
        return torch.topk(scores, k, dim=1).values

    seconds = timed(torch_topk, device, warmup=1, repeats=3)
    out["torch_exact"] = {"search_s": round(seconds, 4), "queries_per_s": round(n_queries / seconds, 1),
                          "note": "chunked fp32 matmul + top-k in torch: the same exact search"}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (smoke test)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--out", help="JSON file (default: $OUT/gpu_check.json or bench_results/gpu_check.json)")
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA GPU (use --cpu --quick for a smoke test)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu else "cuda")
    if args.quick:
        size, batch, steps, desc_batch, frames, n_db, dim = [64, 96], 2, 2, 4, 5, 20_000, 64
    else:
        size, batch, steps, desc_batch, frames, n_db, dim = [480, 640], 16, 10, 64, 100, 1_000_000, 1024
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (the bf16 rows show the fast path)
        torch.backends.cudnn.allow_tf32 = False
    out_path = Path(args.out) if args.out else (Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "bench_results") / "gpu_check.json"
    report: dict[str, Any] = {"machine": machine(), "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                              "torch": torch.__version__, "quick": args.quick, "results": {}}
    print(f"gpu_check on {report['device']} ({report['machine']})", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        parts: list[tuple[str, Callable[[], dict]]] = [
            ("train_step", lambda: train_step(device, size, batch, steps)),
            ("descriptors", lambda: descriptors(device, size, desc_batch, steps)),
            ("localizer", lambda: localizer(device, size, frames, Path(tmp))),
            ("search", lambda: search(device, n_db, dim, n_queries=100 if args.quick else 1000)),
        ]
        for name, part in parts:
            start = time.perf_counter()
            try:
                report["results"][name] = part()
            except Exception as exc:  # one failing part must not cost the others' numbers
                traceback.print_exc()
                report["results"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            report["results"][name]["wall_s"] = round(time.perf_counter() - start, 1)
            print(f"{name}: {json.dumps(report['results'][name])}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    from vgssl_core.io import write_json

    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(out_path, report)
    print(f"wrote {out_path}")
    return 1 if any("error" in r for r in report["results"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
