"""Training cost (issue 3): pipeline step vs model alone; GeoPair vs mining epoch preparation.

How much the real training path adds to the model's own step, and what preparing an epoch
costs with GeoPairs and with the triplet baseline's hard-negative mining.

(a) Step time of SimCLR-FC-1-2048 (preset ``arxiv-simclr-fc-1-2048-1`` with its backbone and
    aggregation replaced by R18-conv4-GeM and the ``strong`` augmentations, as measured before) at batch 16,
    224x224. *pipeline*: the real ``vgssl train`` path, ``vgssl_core.training.train()`` itself
    (Lightning Trainer + ``VgsslModule`` + DataLoader of ``GeoPairImages``: JPEG decode,
    augmentation, place-aware batches, CSV logging) on a synthetic world rendered at 224x224; a
    step is the period between two ``on_train_batch_start`` calls, over steps
    ``warmup..warmup+steps`` whose batch and previous batch both hold 16 pairs. *model only*:
    forward + backward + Adam step of the same method on batches of the same world already
    collated in memory. Each worker count runs in a fresh subprocess that times model-only steps
    before and after the training run, so the ratio compares like with like on a machine whose
    load changes. A breakdown of the data path (decode, augmentation on 1 and on the process's
    torch threads, per op; collate; loader alone), CPU seconds per step, and optionally a cProfile
    of the run say where any difference goes.
(b) Epoch preparation on the ``demo`` world at 160x120: ``GeoPairSampler.batches(epoch)`` (pairs
    + place-aware batching) vs ``TripletMiner.triplets(epoch, VgsslModule._describe)`` in modes
    partial and full (descriptor extraction of the cache with the model, faiss search, mining).
    Each variant runs in a fresh subprocess whose baseline is taken after imports, the
    ``VgsslModule`` (model, sampler / miner) and one warm-up descriptor batch; peak memory is the
    peak-RSS increase over that baseline (VmHWM reset through ``/proc/self/clear_refs``, else
    ``ru_maxrss``), or the tracemalloc peak of a second pass where that is larger (GeoPair, whose
    few freed MB the RSS can hide; ``--tracemalloc-mining`` adds the pass to mining, whose torch
    tensors tracemalloc does not see). Extraction runs with ``--describe-workers`` (default 0, so
    all of its memory is in the measured process).
    ``seconds`` is one epoch of this world (its 600 queries: one cache refresh); the projection
    gives the benchmark's epoch (N queries, a refresh every 1000) at the ``full`` preset's size,
    with GeoPair batching and the mining search measured on its real positions and descriptor
    extraction priced at the measured seconds per image.

(c) Whole runs at the paper's settings (``--only epochs``): preset ``wacv-r50-simclr`` (ResNet-50,
    feature-nearest positives, no database negatives) at a reduced image size (96x128) and batch
    16 on the ``tiny`` world, 4 epochs, in one process: model-only steps (deterministic off and
    on), then the same run with uniform positives, with feature-nearest positives from kept
    descriptors (``data.positive_max_age``, the default) and with a full refresh each epoch
    (``positive_max_age=0``, the reference). Per epoch: preparation (``train_dataloader``: the
    plan and any description), step time (sum of the epoch's step periods), the median step
    against the model-only median, validation R@1/R@5; for the kept run, each epoch's positives
    against those a full refresh with the same model would choose (agreement %, computed outside
    the timed span), and that refresh against the previous epoch's. Data loading runs in the
    process (``data.workers=0``) on ``--threads`` torch threads (default 1), so its CPU seconds
    are the whole cost: wall and CPU ratios are both reported, CPU ones being the ones that hold
    on a loaded machine. With random weights the candidates' descriptors are near-ties, so the
    agreement says little there: ``--preset`` runs another shipped preset at its own size and
    batch (e.g. ``demo-lite-simclr``, ImageNet EfficientNet-Lite0), ``--set`` overrides keys of
    it, ``--world-preset``/``--data`` choose the world (``--data``: one already rendered, only read).

    python benchmarks/bench_training.py [--quick] [--workers 0,1,2] [--repeats 1] [--profile] [--cache DIR]
    python benchmarks/bench_training.py --only epochs [--epochs 4] [--lr 1e-5] [--repeats 3] [--compile]
    python benchmarks/bench_training.py --only epochs --preset demo-lite-simclr --data WORLD \
        --set data.queries_per_epoch=96 --out bench_results/training-demo-lite.json

Synthetic worlds are rendered once into ``--cache`` (default /tmp/vgssl_bench_training; about
4 minutes on 2 busy cores the first time) and reused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit import machine  # benchmarks/benchkit.py, next to this script

REPO = Path(__file__).resolve().parents[1]
STEP_PRESET = "arxiv-simclr-fc-1-2048-1"  # shipped preset names: load_config and --config take them
# the model and data path this benchmark has always measured (R18-conv4-GeM, strong augmentations)
STEP_MODEL = ["model.backbone=resnet18", "model.aggregation=gem", "data.augment=strong", "data.queries_per_epoch=null"]
MINING_PRESETS = {"partial": "triplet-partial",
                  "full": "triplet-full"}
STEP_SIZE = (224, 224)  # (height, width) of (a); square, so (width, height) for the renderer too
BATCH = 16
PREP_SIZE = (120, 160)  # (height, width) of (b): the synthetic world's native size
RESULT = "RESULT "  # a child process prints its result on one line after this marker


# -- worlds ---------------------------------------------------------------------------------
def world(cache: Path, preset: str, hw: tuple[int, int]) -> Path:
    """A synthetic world rendered at ``hw`` (height, width), generated once into ``cache``."""
    from vgssl_core.synth import generate_world

    root = cache / f"{preset}-{hw[1]}x{hw[0]}"
    try:
        meta = json.loads((root / "world.json").read_text())
        if meta["preset"] == preset and meta["image_size"] == [hw[1], hw[0]] and meta["seed"] == 0:
            return root
    except (OSError, ValueError, KeyError):
        pass
    print(f"rendering the '{preset}' world at {hw[1]}x{hw[0]} into {root} (once) ...", flush=True)
    generate_world(root, preset, 0, image_size=(hw[1], hw[0]), progress=False)
    return root


# -- configs (the presets, with only what the benchmark needs changed) ------------------------
def step_config(workers: int, max_steps: int) -> dict:
    from vgssl_core.training.config import load_config

    return load_config(STEP_PRESET, [
        *STEP_MODEL, f"model.image_size=[{STEP_SIZE[0]},{STEP_SIZE[1]}]", f"data.batch_size={BATCH}", f"data.workers={workers}",
        f"trainer.max_steps={max_steps}", "trainer.max_epochs=1", "trainer.val_split=null",
        "trainer.test_split=null", "trainer.loggers=[csv]", "trainer.devices=1"])


def prep_config(variant: str, workers: int) -> dict:
    from vgssl_core.training.config import load_config

    preset = STEP_PRESET if variant == "geopair" else MINING_PRESETS[variant]
    model = STEP_MODEL if variant == "geopair" else []
    return load_config(preset, [*model, f"model.image_size=[{PREP_SIZE[0]},{PREP_SIZE[1]}]", f"data.workers={workers}"])


def geopair_config(cfg: dict):
    from vgssl_core.data.geopairs import GeoPairConfig

    d = cfg["data"]
    return GeoPairConfig(train_radius_m=d["train_radius_m"], eval_radius_m=d["eval_radius_m"],
                         queries_per_epoch=d["queries_per_epoch"], db_negative_ratio=d["db_negative_ratio"],
                         positive=d["positive"], batch_size=d["batch_size"], seed=cfg["trainer"]["seed"])


def full_steps(data: Path, cfg: dict, first: int, last: int) -> list[int]:
    """Steps in [first, last) whose batch and previous batch both hold ``BATCH`` pairs (place-aware
    batching leaves a few smaller ones; they would make a step look cheaper)."""
    from vgssl_core.data.dataset import load_split
    from vgssl_core.data.geopairs import GeoPairSampler

    sizes = [len(b) for b in GeoPairSampler(load_split(data, "train"), geopair_config(cfg)).shard(0)]
    return [s for s in range(max(first, 1), min(last, len(sizes))) if sizes[s] == sizes[s - 1] == BATCH]


# -- memory ---------------------------------------------------------------------------------
def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb(resettable: bool) -> float:
    hwm = _status_kb("VmHWM") if resettable else None
    return (hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def rss_mb() -> float:
    return (_status_kb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


# -- child processes ------------------------------------------------------------------------
class ModelOnly:
    """Forward + backward + Adam step of the pipeline's method on batches of its world already
    collated in memory: the step with no data path and no Lightning."""

    def __init__(self, data: Path, cfg: dict, batch: int = BATCH) -> None:
        import torch

        from vgssl_core.methods import build_method

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.method = build_method(cfg["method"], cfg["model"], cfg["method_config"]).to(self.device).train()
        self.method.to(memory_format=torch.channels_last)  # as vgssl_core.training.run does
        optim = cfg["optim"]
        self.optimizer = torch.optim.Adam(self.method.trainable_parameters(), lr=optim["lr"],
                                          weight_decay=optim["weight_decay"])
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # set-up, not timed: augmentation is fastest on one thread, as in a worker
        self.batches = [[t.to(self.device).contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t.to(self.device)
                         for t in b] for b in _collated_batches(data, cfg, 4, batch)]
        torch.set_num_threads(threads)
        self.done = 0

    def run(self, warmup: int, steps: int, deterministic: bool = False) -> tuple[list[float], list[float]]:
        """Wall and CPU seconds (all threads) of ``steps`` steps after ``warmup`` untimed ones,
        with ``torch.use_deterministic_algorithms(deterministic)`` (as ``trainer.deterministic``)."""
        import torch

        torch.use_deterministic_algorithms(deterministic)

        wall, cpu = [], []
        for i in range(warmup + steps):
            view_a, view_b, places = self.batches[self.done % len(self.batches)]
            start, start_cpu = time.perf_counter(), time.process_time()
            loss = self.method.loss_pairs(view_a, view_b, places)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.method.after_optimizer_step(self.done, 10**6)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                wall.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
            self.done += 1
        return wall, cpu


def child_pipeline(job: dict) -> dict:
    """(a) one paired measurement: model-only steps, the real training run, model-only steps
    again, all in this process, so that a change in the machine's load during the run hits
    both sides of the ratio alike.

    The run is ``vgssl_core.training.train()`` itself; its callback class is swapped for a
    subclass that only reads the clock at ``on_train_batch_start`` / ``on_train_batch_end``.
    A step's time is the period between two batch starts (data wait + forward + backward +
    optimiser + Lightning); "compute" is start to end of the batch (no data wait).
    """
    import warnings

    from vgssl_core.training import run as run_module

    data, workers, warmup, steps = Path(job["data"]), job["workers"], job["warmup"], job["steps"]
    cfg = step_config(workers, warmup + steps + 1)
    model_only = ModelOnly(data, cfg)
    before, before_cpu = model_only.run(2, job["model_steps"])
    starts: list[float] = []
    compute: list[float] = []

    class TimedCallback(run_module.ValidateAndCheckpoint):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            starts.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            compute.append(time.perf_counter() - starts[-1])

    run_dir = Path(tempfile.mkdtemp(prefix="bench-train-", dir=job["tmp"]))
    original = run_module.ValidateAndCheckpoint
    run_module.ValidateAndCheckpoint = TimedCallback
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            run_module.train(cfg, data, run_dir, progress=False)
            total = time.perf_counter() - start
    finally:
        run_module.ValidateAndCheckpoint = original
        shutil.rmtree(run_dir, ignore_errors=True)
    after, after_cpu = model_only.run(1, job["model_steps"])
    timed = full_steps(data, cfg, warmup, len(starts))
    period = [starts[s] - starts[s - 1] for s in timed]
    inside = [compute[s - 1] for s in timed]
    model = statistics.median(before + after)
    pipeline = statistics.median(period)
    return {"workers": workers, "pipeline_s": pipeline, "pipeline_min_s": min(period),
            "compute_in_pipeline_s": statistics.median(inside), "model_only_s": model,
            "model_only_before_s": statistics.median(before), "model_only_after_s": statistics.median(after),
            "model_only_min_s": min(before + after), "model_only_cpu_s": statistics.median(before_cpu + after_cpu),
            "ratio": pipeline / model, "ratio_of_fastest": min(period) / min(before + after),
            "n": len(period), "run_s": total}


def _collated_batches(data: Path, cfg: dict, count: int, batch: int = BATCH) -> list:
    """The first ``count`` full batches of epoch 0, as the DataLoader would hand them over."""
    from torch.utils.data import default_collate

    from vgssl_core.data.dataset import load_split
    from vgssl_core.data.geopairs import GeoPairSampler
    from vgssl_core.training.data import GeoPairImages

    split = load_split(data, "train")
    dataset = GeoPairImages(split, cfg["model"]["image_size"], cfg["data"]["augment"])
    plan = [b for b in GeoPairSampler(split, geopair_config(cfg)).shard(0) if len(b) == batch][:count]
    return [default_collate([dataset[p] for p in b]) for b in plan]


EPOCH_PRESET = "wacv-r50-simclr"  # the paper's positive rule (feature-nearest), ResNet-50, r = 0
EPOCH_SIZE = (96, 128)  # the default preset's reduction (its random-weight ResNet-50 at full size is too slow)
EPOCH_BATCH = 16


def epoch_config(job: dict, positive: str, max_age: int | None, epochs: int) -> dict:
    """``job["preset"]`` with the variant's positive rule; only the default preset is reduced
    (EPOCH_SIZE, EPOCH_BATCH): another one keeps its own size and batch, ``job["set"]`` last."""
    from vgssl_core.training.config import load_config

    reduce = ([f"model.image_size=[{EPOCH_SIZE[0]},{EPOCH_SIZE[1]}]", f"data.batch_size={EPOCH_BATCH}"]
              if job["preset"] == EPOCH_PRESET else [])
    age = [] if max_age is None else [f"data.positive_max_age={max_age}"]
    lr = [] if job["lr"] is None else [f"optim.lr={job['lr']}"]
    return load_config(job["preset"], [
        *reduce, "data.workers=0", f"data.positive={positive}", *age, *lr, f"trainer.max_epochs={epochs}",
        "trainer.val_split=val", "trainer.test_split=null", "trainer.loggers=[csv]", "trainer.devices=1", *job["set"]])


def _full_refresh(module, epoch: int) -> dict:
    """{query: positive} that a full refresh with the module's current model chooses for ``epoch``."""
    import dataclasses

    from vgssl_core.data.geopairs import GeoPairSampler

    full = GeoPairSampler(module.train_split, dataclasses.replace(module.sampler.cfg, positive_max_age=0))
    q_idx, db_idx = full.needs_descriptors(epoch)
    split = module.train_split
    desc = module._describe_paths([split.queries.paths[i] for i in q_idx] + [split.database.paths[i] for i in db_idx])
    full.set_descriptors(epoch, q_idx, desc[:len(q_idx)], db_idx, desc[len(q_idx):])
    return dict(full._nearest[1])


def _agreement(module, epoch: int, previous_fresh: dict, one_epoch_old: dict | None) -> tuple[dict, dict]:
    """The kept run's positives for ``epoch`` against a full refresh with the current model; that
    refresh against the previous epoch's (how much the reference's own choice moves, on the
    queries both epochs sampled) and against ``one_epoch_old``, a full refresh for ``epoch`` by
    the previous epoch's model (what descriptors all one epoch old would choose, on every query)."""
    kept, fresh = module.sampler._nearest[1], _full_refresh(module, epoch)
    # queries with a single candidate agree by construction: report the others too
    multi = [q for q in fresh if len(module.sampler.positives[q]) > 1]
    both = [q for q in fresh if q in previous_fresh]
    old = one_epoch_old or {}
    return {"queries": len(fresh), "agree": sum(kept[q] == fresh[q] for q in fresh),
            "multi_candidate": len(multi), "agree_multi": sum(kept[q] == fresh[q] for q in multi),
            "fresh_vs_previous_fresh": sum(fresh[q] == previous_fresh[q] for q in both) / max(len(both), 1),
            "fresh_vs_previous_fresh_queries": len(both),
            "fresh_vs_one_epoch_old": (sum(fresh[q] == old.get(q) for q in fresh) / len(fresh)) if old else None}, fresh


def child_epochs(job: dict) -> dict:
    """(c) one variant's whole run, timed per epoch (see the module docstring)."""
    import warnings

    import torch

    torch.set_num_threads(job["threads"])

    from vgssl_core.training import module as module_module
    from vgssl_core.training import run as run_module

    data = Path(job["data"])
    cfg = epoch_config(job, job["positive"], job["max_age"], job["epochs"])
    prep: list[float] = []
    epochs: list[dict] = []
    agreement: list[dict] = []
    starts: list[float] = []
    cpu: list[float] = []
    state: dict = {}
    original_loader = module_module.VgsslModule.train_dataloader

    def timed_loader(self):
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            return original_loader(self)
        finally:
            prep.append((time.perf_counter() - start, time.process_time() - start_cpu))

    class TimedCallback(run_module.ValidateAndCheckpoint):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if job["agreement"] and trainer.current_epoch == 0:  # epoch 0 describes all: a full refresh
                state["fresh"] = dict(pl_module.sampler._nearest[1])
            if job["agreement"] and trainer.current_epoch > 0:  # outside the timed span (and the run's)
                start = time.perf_counter()
                row, state["fresh"] = _agreement(pl_module, trainer.current_epoch, state["fresh"], state.get("next"))
                agreement.append({"epoch": trainer.current_epoch, **row, "s": time.perf_counter() - start})
            if job["agreement"] and trainer.current_epoch + 1 < trainer.max_epochs:  # next epoch's, this model
                start = time.perf_counter()
                state["next"] = _full_refresh(pl_module, trainer.current_epoch + 1)
                agreement.append({"epoch": None, "s": time.perf_counter() - start})  # its time only
            starts.clear()
            cpu.clear()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            starts.append(time.perf_counter())
            cpu.append(time.process_time())

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            end, end_cpu = time.perf_counter(), time.process_time()
            periods = [b - a for a, b in zip(starts, starts[1:] + [end])]
            cpu_periods = [b - a for a, b in zip(cpu, cpu[1:] + [end_cpu])]
            epochs.append({"epoch": trainer.current_epoch, "steps": len(periods), "step_s": sum(periods),
                           "median_step_s": statistics.median(periods),
                           "step_cpu_s": sum(cpu_periods), "median_step_cpu_s": statistics.median(cpu_periods)})
            start = time.perf_counter()
            super().on_train_epoch_end(trainer, pl_module)
            epochs[-1]["validate_and_checkpoint_s"] = time.perf_counter() - start

    run_dir = Path(tempfile.mkdtemp(prefix="bench-epochs-", dir=job["tmp"]))
    run_module.ValidateAndCheckpoint = TimedCallback
    module_module.VgsslModule.train_dataloader = timed_loader
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            summary = run_module.train(cfg, data, run_dir, progress=False)
            total = time.perf_counter() - start
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    for e, (p, p_cpu) in zip(epochs, prep):
        e["preparation_s"], e["preparation_cpu_s"] = p, p_cpu
        e["prep_over_steps"] = p / e["step_s"]
        e["prep_over_steps_cpu"] = p_cpu / e["step_cpu_s"]
    by_epoch = {e["epoch"]: e for e in epochs}
    for h in summary["val_history"]:  # the epochs the preset validates after (trainer.val_every_n_epochs)
        if h["epoch"] in by_epoch:
            by_epoch[h["epoch"]]["val_recall"] = {n: h["recall"][n] for n in ("1", "5")}
    total -= sum(a["s"] for a in agreement)  # the diagnostic is not part of the run
    return {"positive": job["positive"], "max_age": job["max_age"], "run_s": total, "epochs": epochs,
            "agreement": agreement, "described": [h.get("described_images") for h in summary["data_history"]],
            "train_s": sum(e["preparation_s"] + e["step_s"] for e in epochs),
            "train_cpu_s": sum(e["preparation_cpu_s"] + e["step_cpu_s"] for e in epochs)}


def child_model_steps(job: dict) -> dict:
    """(c) model-only steps of the epoch runs' model and batch, deterministic off and on."""
    import torch

    cfg = epoch_config(job, "uniform", None, 1)
    model_only = ModelOnly(Path(job["data"]), cfg, cfg["data"]["batch_size"])
    torch.set_num_threads(job["threads"])
    off, off_cpu = model_only.run(1, job["model_steps"], deterministic=False)
    on, on_cpu = model_only.run(1, job["model_steps"], deterministic=True)
    more, more_cpu = model_only.run(0, job["model_steps"], deterministic=False)
    off, off_cpu = off + more, off_cpu + more_cpu
    out = {"model_only_s": statistics.median(off), "model_only_deterministic_s": statistics.median(on),
           "model_only_cpu_s": statistics.median(off_cpu), "model_only_deterministic_cpu_s": statistics.median(on_cpu),
           "n": len(off)}
    if job.get("compile"):  # trainer.compile: the backbones compiled in place, as training.run does
        from vgssl_core.training.run import compile_backbones

        compile_backbones(model_only.method)
        start = time.perf_counter()
        model_only.run(1, 0)  # the first step pays the compilation
        out["compile_s"] = time.perf_counter() - start
        compiled, _ = model_only.run(1, job["model_steps"])
        out["model_only_compiled_s"] = statistics.median(compiled)
    return out


def bench_epochs(args, cache: Path) -> dict:
    data = Path(args.data) if args.data else world(cache, args.world_preset, PREP_SIZE)
    print(f"(c) whole runs of {args.preset} on {data} ...", flush=True)
    base = {"data": str(data), "tmp": str(cache), "epochs": args.epochs, "lr": args.lr, "model_steps": args.model_steps,
            "threads": args.threads, "preset": args.preset, "set": args.set}
    cfg = epoch_config(base, "uniform", None, args.epochs)
    model = spawn({**base, "task": "model_steps", "compile": args.compile})
    print(f"  model only: {model['model_only_s']:.3f} s/step, {model['model_only_cpu_s']:.3f} CPU s "
          f"(deterministic: {model['model_only_deterministic_s']:.3f}, {model['model_only_deterministic_cpu_s']:.3f} CPU s)" +
          (f"; compiled backbone {model['model_only_compiled_s']:.3f} s/step after {model['compile_s']:.0f} s of compiling"
           if "model_only_compiled_s" in model else "") +
          f"  load {load_average()[0]}", flush=True)
    variants = (("uniform", "uniform", None), ("kept", "feature-nearest", None), ("full_refresh", "feature-nearest", 0))
    every: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
    for rep in range(args.repeats):  # interleaved, the order rotated: a slow spell of the machine hits every variant
        for name, positive, age in variants[rep % 3:] + variants[:rep % 3]:
            r = spawn({**base, "task": "epochs", "positive": positive, "max_age": age, "agreement": name == "kept" and rep == 0})
            every[name].append(r)
            print(f"  {name} ({rep + 1}/{args.repeats}): run {r['run_s']:.1f} s, train (prep + steps) {r['train_s']:.1f} s; "
                  "per epoch prep/steps " +
                  ", ".join(f"{e['preparation_s']:.2f}/{e['step_s']:.2f} (CPU {e['preparation_cpu_s']:.2f}/{e['step_cpu_s']:.2f})"
                            for e in r["epochs"]) + f"  load {load_average()[0]}", flush=True)
    # the per-epoch table shows each variant's first run (the kept one carries the agreement); the
    # whole-run ratios are medians over the repeats of ratios within one repeat
    runs = {name: rs[0] for name, rs in every.items()}
    per_repeat = {f"{name}_train_over_uniform_cpu": [r["train_cpu_s"] / u["train_cpu_s"] for r, u in zip(every[name], every["uniform"])]
                  for name in ("kept", "full_refresh")}
    # within one run: what preparing its epochs added to its own steps (free of the run-to-run
    # noise of step times between processes, +-10 % on the 2-core VM)
    per_repeat["kept_prep_over_steps_whole_run_cpu"] = [sum(e["preparation_cpu_s"] for e in r["epochs"]) /
                                                        sum(e["step_cpu_s"] for e in r["epochs"]) for r in every["kept"]]
    later = lambda r, key: statistics.median(e[key] for e in r["epochs"][1:])  # noqa: E731 (second epoch on)
    steps_over_model = {name: [later(r, "median_step_cpu_s") / model["model_only_cpu_s"] for r in rs] for name, rs in every.items()}
    kept = runs["kept"]
    kept["agreement"] = [a for a in kept["agreement"] if a["epoch"] is not None]  # rows of time only were counted
    agree = sum(a["agree"] for a in kept["agreement"]) / max(sum(a["queries"] for a in kept["agreement"]), 1)
    agree_multi = (sum(a["agree_multi"] for a in kept["agreement"]) /
                   max(sum(a["multi_candidate"] for a in kept["agreement"]), 1))
    return {"preset": args.preset, "overrides": args.set, "data": str(data), "size": list(cfg["model"]["image_size"]),
            "batch": cfg["data"]["batch_size"], "epochs": args.epochs, "threads": args.threads,
            "queries_per_epoch": cfg["data"]["queries_per_epoch"], "lr": cfg["optim"]["lr"], "model": model, "runs": runs,
            "kept_prep_over_steps_median_from_epoch_1": later(kept, "prep_over_steps"),
            "full_refresh_prep_over_steps_median_from_epoch_1": later(runs["full_refresh"], "prep_over_steps"),
            "kept_step_over_model_only": later(kept, "median_step_s") / model["model_only_s"],
            "kept_prep_over_steps_cpu_median_from_epoch_1": later(kept, "prep_over_steps_cpu"),
            "kept_step_over_model_only_cpu": later(kept, "median_step_cpu_s") / model["model_only_cpu_s"],
            "uniform_step_over_model_only_cpu": later(runs["uniform"], "median_step_cpu_s") / model["model_only_cpu_s"],
            "repeats": args.repeats, "per_repeat": {**per_repeat, "step_over_model_only_cpu": steps_over_model},
            "kept_train_over_uniform_cpu": statistics.median(per_repeat["kept_train_over_uniform_cpu"]),
            "kept_prep_over_steps_whole_run_cpu": statistics.median(per_repeat["kept_prep_over_steps_whole_run_cpu"]),
            "full_refresh_train_over_uniform_cpu": statistics.median(per_repeat["full_refresh_train_over_uniform_cpu"]),
            "kept_step_over_model_only_cpu_median_of_repeats": statistics.median(steps_over_model["kept"]),
            "uniform_step_over_model_only_cpu_median_of_repeats": statistics.median(steps_over_model["uniform"]),
            "uniform_step_over_model_only": later(runs["uniform"], "median_step_s") / model["model_only_s"],
            "kept_run_over_uniform": kept["run_s"] / runs["uniform"]["run_s"],
            "kept_train_over_uniform": kept["train_s"] / runs["uniform"]["train_s"],
            "full_refresh_run_over_uniform": runs["full_refresh"]["run_s"] / runs["uniform"]["run_s"],
            "agreement": agree, "agreement_multi_candidate": agree_multi,
            "agreement_by_epoch": [round(a["agree"] / a["queries"], 3) for a in kept["agreement"]],
            "fresh_stability": [round(a["fresh_vs_previous_fresh"], 3) for a in kept["agreement"]],
            "fresh_stability_queries": [a["fresh_vs_previous_fresh_queries"] for a in kept["agreement"]],
            "fresh_vs_one_epoch_old": [None if a["fresh_vs_one_epoch_old"] is None else round(a["fresh_vs_one_epoch_old"], 3)
                                       for a in kept["agreement"]],
            "deterministic_cost": model["model_only_deterministic_s"] / model["model_only_s"],
            "deterministic_cost_cpu": model["model_only_deterministic_cpu_s"] / model["model_only_cpu_s"]}


def print_epochs(c: dict) -> None:
    print(f"\n(c) whole runs, {c['preset']} {' '.join(c.get('overrides', []))} on {c.get('data', '?')} at "
          f"{c['size'][0]}x{c['size'][1]}, batch {c['batch']}, {c.get('queries_per_epoch')} queries per epoch, "
          f"{c['epochs']} epochs, lr {c['lr']:g}; model only {c['model']['model_only_s']:.3f} s/step "
          f"(deterministic on: x{c['deterministic_cost']:.3f} wall, x{c['deterministic_cost_cpu']:.3f} CPU)")
    m, mc = c["model"]["model_only_s"], c["model"]["model_only_cpu_s"]
    print("| run | epoch | prep s (CPU s) | steps s (CPU s) | prep / steps: wall, CPU | median step / model only: wall, CPU "
          "| val R@1 | val R@5 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in c["runs"].items():
        for e in r["epochs"]:
            rec = e.get("val_recall", {})
            print(f"| {name} | {e['epoch']} | {e['preparation_s']:.2f} ({e['preparation_cpu_s']:.2f}) | {e['step_s']:.2f} "
                  f"({e['step_cpu_s']:.2f}) | {e['prep_over_steps']:.3f}, {e['prep_over_steps_cpu']:.3f} | "
                  f"{e['median_step_s'] / m:.2f}, {e['median_step_cpu_s'] / mc:.2f} | {rec.get('1', '-')} | {rec.get('5', '-')} |")
    print(f"    from epoch 1 on (medians): kept prep/steps {c['kept_prep_over_steps_median_from_epoch_1']:.3f} "
          f"(full refresh {c['full_refresh_prep_over_steps_median_from_epoch_1']:.3f}); step / model-only: kept "
          f"{c['kept_step_over_model_only']:.3f}, uniform {c['uniform_step_over_model_only']:.3f}")
    print(f"    CPU seconds, from epoch 1 on (medians): kept prep/steps {c['kept_prep_over_steps_cpu_median_from_epoch_1']:.3f}; "
          f"step / model-only: kept {c['kept_step_over_model_only_cpu']:.3f}, uniform {c['uniform_step_over_model_only_cpu']:.3f}")
    print(f"    whole run / uniform, first repeat: kept {c['kept_run_over_uniform']:.3f} (prep + steps only: "
          f"{c['kept_train_over_uniform']:.3f}), full refresh {c['full_refresh_run_over_uniform']:.3f}")
    rep = c.get("per_repeat", {})
    print(f"    CPU seconds (prep + steps) / uniform's, median of {c.get('repeats', 1)} interleaved repeats: kept "
          f"{c['kept_train_over_uniform_cpu']:.3f} {[round(x, 3) for x in rep.get('kept_train_over_uniform_cpu', [])]}, "
          f"full refresh {c['full_refresh_train_over_uniform_cpu']:.3f} "
          f"{[round(x, 3) for x in rep.get('full_refresh_train_over_uniform_cpu', [])]}; within the kept runs, all preparation / "
          f"all steps {[round(x, 3) for x in rep.get('kept_prep_over_steps_whole_run_cpu', [])]}; median step / model-only (CPU) per "
          f"repeat: " + "; ".join(f"{k} {[round(x, 3) for x in v]}" for k, v in rep.get("step_over_model_only_cpu", {}).items()))
    print(f"    kept positives = full refresh's on {100 * c['agreement']:.1f} % of queries "
          f"({100 * c['agreement_multi_candidate']:.1f} % of those with > 1 candidate; by epoch "
          f"{c['agreement_by_epoch']}); a full refresh agrees with the previous epoch's on {c['fresh_stability']} "
          f"(of {c.get('fresh_stability_queries')} queries sampled in both), with one by the previous epoch's model "
          f"on {c.get('fresh_vs_one_epoch_old')}; described per epoch: kept "
          f"{c['runs']['kept']['described']}, full {c['runs']['full_refresh']['described']}")


def child_breakdown(job: dict) -> dict:
    """(a) where the data path's time goes, per batch of 16 pairs, in the main process."""
    import torch
    from torch.utils.data import DataLoader, default_collate

    from vgssl_core.data.dataset import load_image, load_split
    from vgssl_core.data.geopairs import QUERY, EpochBatches, GeoPairSampler
    from vgssl_core.training.data import GeoPairImages
    from vgssl_core.data.transforms import seeded

    data = Path(job["data"])
    cfg = step_config(0, 1)
    split = load_split(data, "train")
    dataset = GeoPairImages(split, cfg["model"]["image_size"], cfg["data"]["augment"])
    sampler = GeoPairSampler(split, geopair_config(cfg))
    batch = next(b for b in sampler.shard(0) if len(b) == BATCH)

    def path_a(p):
        return split.queries.paths[p.a] if p.kind == QUERY else split.database.paths[p.a]

    def timed(fn, repeats=3, clock=time.perf_counter):
        out = []
        for _ in range(repeats):
            start = clock()
            fn()
            out.append(clock() - start)
        return statistics.median(out)

    result: dict = {"torch_threads": torch.get_num_threads()}
    result["decode_s"] = timed(lambda: [load_image(path_a(p)) for p in batch] +
                               [load_image(split.database.paths[p.b]) for p in batch])
    images = [load_image(path_a(p)) for p in batch]
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        repeats = 3 if threads == 1 else 1  # many threads can be very slow here: once is enough
        result[f"augment_s_{threads}_thread"] = timed(lambda: [seeded(dataset.augmented, im, i) for i, im in enumerate(images)], repeats)
        result[f"plain_s_{threads}_thread"] = timed(lambda: [dataset.plain(im) for im in images], repeats)
        # a whole batch of items, as a worker (1 thread) or the main process with workers=0 makes it
        result[f"item_s_{threads}_thread"] = timed(lambda: [dataset[p] for p in batch], repeats)
    # what a worker (1 thread) spends on a batch, in CPU seconds: the share it takes from the model
    torch.set_num_threads(1)
    result["item_cpu_s_1_thread"] = timed(lambda: [dataset[p] for p in batch], 3, time.process_time)
    torch.set_num_threads(result["torch_threads"])
    items = [dataset[p] for p in batch]
    result["collate_s"] = timed(lambda: default_collate(items))
    one = dataset.augmented
    image = images[0]
    per_op = {}
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        x = image
        for op in one.transforms:
            per_op.setdefault(type(op).__name__, {})[threads] = timed(lambda: op(x), 3) * BATCH
            x = op(x)
    torch.set_num_threads(result["torch_threads"])
    result["augment_ops_s_per_batch"] = per_op  # op -> {threads: seconds for 16 images}
    loaders = {"0": result[f"item_s_{result['torch_threads']}_thread"] + result["collate_s"]}  # what workers=0 does
    for workers in (w for w in job["workers"] if w > 0):
        batches = EpochBatches(sampler)
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers)
        it = iter(loader)
        next(it)  # worker start-up and the first batch
        start = time.perf_counter()
        n = 0
        for _ in range(job["loader_batches"]):
            next(it)
            n += 1
        loaders[str(workers)] = (time.perf_counter() - start) / n
        del it
    result["loader_s_per_batch"] = loaders  # data alone, no model: workers -> seconds per batch
    return result


def child_prepare(job: dict) -> dict:
    """(b) one epoch's preparation of one variant, time and peak memory over a fixed baseline."""
    import gc
    import tracemalloc

    import numpy as np

    from vgssl_core.data.dataset import load_split
    from vgssl_core.training.module import VgsslModule

    variant = job["variant"]
    cfg = prep_config(variant, job["describe_workers"])
    split = load_split(job["data"], "train")
    module = VgsslModule(cfg, split)
    module._describe("database", np.arange(min(len(split.database), cfg["trainer"]["eval_batch_size"])))  # warm-up
    described: list[int] = []

    def describe(side: str, indices: np.ndarray) -> np.ndarray:
        described.append(len(indices))
        return module._describe(side, indices)

    def epoch(e: int):
        return module.sampler.batches(e) if variant == "geopair" else module.miner.triplets(e, describe)

    gc.collect()
    base = rss_mb()
    resettable = reset_peak_rss()
    if not resettable:
        base = peak_rss_mb(False)  # ru_maxrss cannot be reset: compare with the peak so far
    start = time.perf_counter()
    plan = epoch(0)
    seconds = [time.perf_counter() - start]
    rss_peak = max(peak_rss_mb(resettable) - base, 0.0)
    n_items, n_described = len(plan), sum(described)
    del plan
    for e in range(1, job["time_repeats"]):  # cheap variants: more epochs for a stable median
        start = time.perf_counter()
        epoch(e)
        seconds.append(time.perf_counter() - start)
    traced = None
    if job["tracemalloc"]:
        gc.collect()
        tracemalloc.start()
        epoch(job["time_repeats"])
        traced = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    out = {"seconds": statistics.median(seconds), "seconds_first_epoch": seconds[0], "rss_peak_mb": rss_peak,
           "tracemalloc_peak_mb": traced, "peak_mb": max(rss_peak, traced or 0.0), "items": n_items,
           "described_images": n_described, "rss_resettable": resettable,
           "database": len(split.database), "queries": len(split.queries)}
    if variant != "geopair":
        per_refresh = int(cfg["mining"]["cache_refresh_queries"])
        out["queries_per_refresh"] = min(per_refresh, len(module.miner.usable))
        # the benchmark's epoch: every usable query once, the cache refreshed every 1000 of them
        out["refreshes_per_epoch"] = math.ceil(len(module.miner.usable) / per_refresh)
    else:
        out["queries_per_epoch"] = module.sampler.n_query_pairs()
    return out


def child_projection(job: dict) -> dict:
    """(b) the benchmark's epoch at the ``full`` preset's size, on its real capture positions:
    GeoPair batching and the mining's search + bookkeeping measured (descriptors random; no
    images exist), and how many images each refresh describes."""
    import numpy as np

    from vgssl_core.data.dataset import GeoSplit, ImageSet
    from vgssl_core.data.geo import GeoTag
    from vgssl_core.data.geopairs import GeoPairSampler
    from vgssl_core.synth.captures import plan_captures
    from vgssl_core.synth.city import LETTER, ZONE, City, blocks_for_length
    from vgssl_core.synth.presets import PRESETS
    from vgssl_core.training.mining import TripletMiner

    preset = PRESETS[job["preset"]]
    n_db, n_q = preset.counts("train")
    city = City(seed=0, district=0, blocks=blocks_for_length(n_db * preset.db_spacing_m), image_size=(160, 120))
    db, queries = plan_captures(city, n_db, n_q, 0)

    def images(captures, side):
        return ImageSet([Path(f"{side}{c.index}.jpg") for c in captures],
                        [GeoTag(c.east, c.north, ZONE, LETTER) for c in captures])

    split = GeoSplit(Path(job["preset"]), "train", images(db, "database"), images(queries, "queries"), ZONE, LETTER)
    out: dict = {"preset": job["preset"], "database": n_db, "queries": n_q}
    cfg = prep_config("geopair", 0)
    sampler = GeoPairSampler(split, geopair_config(cfg))
    start = time.perf_counter()
    sampler.batches(0)
    out["geopair"] = {"seconds": time.perf_counter() - start, "queries_per_epoch": sampler.n_query_pairs()}
    rng = np.random.default_rng(0)
    for variant in ("partial", "full"):
        cfg = prep_config(variant, 0)
        miner = TripletMiner(split, cfg["mining"], cfg["data"], 0)
        described: list[int] = []

        def describe(side: str, indices: np.ndarray) -> np.ndarray:
            described.append(len(indices))
            return rng.standard_normal((len(indices), 256), dtype=np.float32)  # R18-conv4-GeM: 256-D

        start = time.perf_counter()
        miner.triplets(0, describe)
        per_refresh = int(cfg["mining"]["cache_refresh_queries"])
        out[variant] = {"search_and_mining_s_per_refresh": time.perf_counter() - start,
                        "described_per_refresh": sum(described),
                        "refreshes_per_epoch": math.ceil(len(miner.usable) / per_refresh)}
    return out


def child_profile(job: dict) -> dict:
    """(a) cProfile of the real training path (main process): where a step's wall time goes."""
    import cProfile
    import pstats
    import warnings

    from vgssl_core.training import train

    data, workers = Path(job["data"]), job["workers"]
    cfg = step_config(workers, job["warmup"] + job["steps"] + 1)
    run_dir = Path(tempfile.mkdtemp(prefix="bench-profile-", dir=job["tmp"]))
    profiler = cProfile.Profile()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            profiler.enable()
            train(cfg, data, run_dir, progress=False)
            profiler.disable()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (calls, ncalls, tottime, cumtime, callers)

    def cumulative(file_part: str, name: str) -> tuple[float, int]:
        hits = [(v[3], v[1]) for (f, _, n), v in stats.items() if n == name and file_part in f.replace(os.sep, "/")]
        return max(hits, default=(0.0, 0))

    parts = {  # (file, function): each a disjoint part of the training loop's main-process time
        "fetch batch (DataLoader __next__)": ("torch/utils/data/dataloader.py", "__next__"),
        "forward + loss (loss_pairs)": ("vgssl_core/methods/simclr.py", "loss_pairs"),
        "backward": ("torch/autograd/__init__.py", "backward"),
        "Adam update": ("torch/optim/adam.py", "adam"),
        "zero_grad": ("torch/optim/optimizer.py", "zero_grad"),
        "self.log": ("pytorch_lightning/core/module.py", "log"),
        "logger (CSV) writes": ("pytorch_lightning/trainer/connectors/logger_connector/logger_connector.py", "log_metrics"),
        "train dataloader setup (epoch plan, workers start)": ("pytorch_lightning/loops/fit_loop.py", "setup_data"),
    }
    out = {name: {"s": cumulative(*where)[0], "calls": cumulative(*where)[1]} for name, where in parts.items()}
    loop = cumulative("pytorch_lightning/loops/fit_loop.py", "run")[0]
    out["training loop (fit_loop.run)"] = {"s": loop, "calls": 1}
    accounted = sum(v["s"] for k, v in out.items() if k != "training loop (fit_loop.run)")
    out["rest of Lightning's loop"] = {"s": max(loop - accounted, 0.0), "calls": 0}
    return {"workers": workers, "steps": job["warmup"] + job["steps"] + 1, "parts": out}


CHILDREN = {"epochs": child_epochs, "model_steps": child_model_steps, "profile": child_profile, "pipeline": child_pipeline, "breakdown": child_breakdown,
            "prepare": child_prepare, "projection": child_projection}


def spawn(job: dict) -> dict:
    """Run one measurement in a fresh interpreter; its result comes back as one JSON line."""
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"benchmark child {job['task']} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len(RESULT):])


# -- the benchmark --------------------------------------------------------------------------
def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def torch_setup() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}"


def bench_step(data: Path, args, tmp: Path) -> dict:
    runs: dict[str, list[dict]] = {str(w): [] for w in args.workers}
    for r in range(args.repeats):
        for w in args.workers:
            job = {"task": "pipeline", "data": str(data), "tmp": str(tmp), "warmup": args.warmup,
                   "steps": args.steps, "model_steps": args.model_steps, "workers": w}
            res = spawn(job)
            runs[str(w)].append(res)
            print(f"  repeat {r + 1}/{args.repeats}, {w} worker(s): pipeline {res['pipeline_s']:.3f} s/step "
                  f"(compute inside {res['compute_in_pipeline_s']:.3f}), model only {res['model_only_s']:.3f} "
                  f"({res['model_only_before_s']:.3f} before, {res['model_only_after_s']:.3f} after) -> "
                  f"{res['ratio']:.2f} (fastest steps: {res['pipeline_min_s']:.3f} / {res['model_only_min_s']:.3f} -> "
                  f"{res['ratio_of_fastest']:.2f})  load {load_average()[0]}", flush=True)

    def med(w: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[w])

    best = min(args.workers, key=lambda w: med(str(w), "ratio"))
    model_only = statistics.median(x["model_only_s"] for v in runs.values() for x in v)
    breakdown = spawn({"task": "breakdown", "data": str(data), "workers": args.workers,
                       "loader_batches": args.loader_batches})
    model_cpu = statistics.median(x["model_only_cpu_s"] for v in runs.values() for x in v)
    data_cpu = breakdown["item_cpu_s_1_thread"] + breakdown["collate_s"]
    # with >= 1 worker on cores the model already fills, the workers' CPU time is taken from the
    # model: the ratio to expect from CPU seconds alone, whatever the machine's load
    estimate = {"model_cpu_s_per_step": round(model_cpu, 3), "data_cpu_s_per_batch": round(data_cpu, 3),
                "ratio_with_workers_est": round(1 + data_cpu / model_cpu, 3)}
    profile = None
    if args.profile:
        profile = spawn({"task": "profile", "data": str(data), "tmp": str(tmp), "warmup": args.warmup,
                         "steps": args.steps, "workers": best if args.profile_workers is None else args.profile_workers})
    b = str(best)
    return {
        "pipeline_s": round(med(b, "pipeline_s"), 4), "model_only_s": round(med(b, "model_only_s"), 4),
        "ratio": round(med(b, "ratio"), 3), "workers": best, "batch": BATCH, "size": list(STEP_SIZE),
        "ratio_of_fastest": round(med(b, "ratio_of_fastest"), 3),  # least disturbed by other processes' load
        "by_workers": {w: {"pipeline_s": round(med(w, "pipeline_s"), 4),
                           "compute_in_pipeline_s": round(med(w, "compute_in_pipeline_s"), 4),
                           "model_only_s": round(med(w, "model_only_s"), 4), "ratio": round(med(w, "ratio"), 3),
                           "pipeline_min_s": round(med(w, "pipeline_min_s"), 4),
                           "model_only_min_s": round(med(w, "model_only_min_s"), 4),
                           "ratio_of_fastest": round(med(w, "ratio_of_fastest"), 3)}
                       for w in runs},
        "model_only_s_all_runs": round(model_only, 4),
        "runs": runs, "timed_steps": f"{args.warmup}..{args.warmup + args.steps} (full batches only)",
        "breakdown": breakdown, "cpu_estimate": estimate, "profile": profile,
    }


def bench_preparation(data: Path, args) -> dict:
    out: dict = {}
    for variant in ("geopair", "partial", "full"):
        job = {"task": "prepare", "variant": variant, "data": str(data), "describe_workers": args.describe_workers,
               "time_repeats": 5 if variant == "geopair" else 1,
               "tracemalloc": variant == "geopair" or args.tracemalloc_mining}
        out[variant] = spawn(job)
        r = out[variant]
        print(f"  {variant:>8}: {r['seconds']:.3f} s, peak {r['peak_mb']:.1f} MB (RSS {r['rss_peak_mb']:.1f}, "
              f"tracemalloc {r['tracemalloc_peak_mb'] if r['tracemalloc_peak_mb'] is not None else '-'})  "
              f"load {load_average()[0]}", flush=True)
    geo = out["geopair"]
    for variant in ("partial", "full"):
        r = out[variant]
        r["seconds_per_refresh"] = r["seconds"]
        r["s_per_described_image"] = r["seconds"] / max(r["described_images"], 1)
        r["seconds"] = r["seconds_per_epoch"] = r["seconds_per_refresh"] * r["refreshes_per_epoch"]
        out[f"time_ratio_{variant}"] = round(r["seconds"] / geo["seconds"], 1)
        out[f"time_ratio_{variant}_per_refresh"] = round(r["seconds_per_refresh"] / geo["seconds"], 1)
        out[f"memory_ratio_{variant}"] = round(r["peak_mb"] / max(geo["peak_mb"], 1e-3), 1)
    if not args.quick:
        proj = spawn({"task": "projection", "preset": "full"})
        s_img = statistics.median(out[v]["s_per_described_image"] for v in ("partial", "full"))
        for variant in ("partial", "full"):
            p = proj[variant]
            p["seconds_per_refresh_est"] = p["search_and_mining_s_per_refresh"] + p["described_per_refresh"] * s_img
            p["seconds_per_epoch_est"] = p["seconds_per_refresh_est"] * p["refreshes_per_epoch"]
            proj[f"time_ratio_{variant}_per_epoch_est"] = round(p["seconds_per_epoch_est"] / proj["geopair"]["seconds"], 1)
        proj["s_per_described_image"] = s_img
        out["projection"] = proj
    return out


def print_tables(result: dict) -> None:
    if result.get("epochs"):
        print_epochs(result["epochs"])
    s = result.get("step")
    if s:
        print("\n(a) training step, SimCLR-FC-1-2048 R18-conv4-GeM, batch 16, 224x224 (median s/step)")
        print("| data-loader workers | pipeline s/step | of which compute (no data wait) | model only s/step (same process) "
              "| ratio | fastest step: pipeline / model only | ratio of fastest |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for w, r in s["by_workers"].items():
            mark = " (best)" if int(w) == s["workers"] else ""
            print(f"| {w}{mark} | {r['pipeline_s']:.3f} | {r['compute_in_pipeline_s']:.3f} | {r['model_only_s']:.3f} | "
                  f"{r['ratio']:.2f} | {r['pipeline_min_s']:.3f} / {r['model_only_min_s']:.3f} | {r['ratio_of_fastest']:.2f} |")
        b = s["breakdown"]
        n = b["torch_threads"]
        print(f"\n    data path per batch of 16 pairs, main process ({n} torch threads): "
              f"decode 32 JPEGs {b['decode_s']:.3f} s; augment 16 views {b[f'augment_s_{n}_thread']:.3f} s "
              f"({b['augment_s_1_thread']:.3f} s at 1 thread); plain 16 {b[f'plain_s_{n}_thread']:.3f} s; "
              f"whole items {b[f'item_s_{n}_thread']:.3f} s ({b['item_s_1_thread']:.3f} s at 1 thread); "
              f"collate {b['collate_s']:.3f} s")
        ops = ", ".join(f"{op} " + "/".join(f"{v:.3f}" for v in by.values()) for op, by in b["augment_ops_s_per_batch"].items())
        print(f"    augmentation ops, s per 16 views at {'/'.join(map(str, sorted({1, n})))} thread(s): {ops}")
        print("    data loader alone, s/batch by workers: " +
              ", ".join(f"{w}: {t:.3f}" for w, t in b["loader_s_per_batch"].items()))
        e = s["cpu_estimate"]
        print(f"    CPU seconds: model {e['model_cpu_s_per_step']:.3f} per step, data {e['data_cpu_s_per_batch']:.3f} per batch "
              f"(1 thread) -> ratio to expect with workers on saturated cores {e['ratio_with_workers_est']:.2f}")
        if s.get("profile"):
            prof = s["profile"]
            print(f"\n    cProfile of the pipeline, main process, {prof['workers']} worker(s), {prof['steps']} steps "
                  f"(whole run, warm-up included):")
            print("    | part | s | calls |\n    |---|---:|---:|")
            for name, v in prof["parts"].items():
                print(f"    | {name} | {v['s']:.2f} | {v['calls']} |")
    p = result.get("preparation")
    if p:
        g = p["geopair"]
        print(f"\n(b) epoch preparation, world {PREP_SIZE[1]}x{PREP_SIZE[0]} ({g['database']} database, {g['queries']} "
              f"queries; GeoPair: one epoch; mining: one cache refresh of {p['partial']['queries_per_refresh']} queries, "
              f"{p['partial']['refreshes_per_epoch']} per epoch)")
        print("| variant | s per refresh | s per epoch | peak MB | RSS MB | tracemalloc MB | images described | time x | memory x |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for v in ("geopair", "partial", "full"):
            r = p[v]
            tm = "-" if r["tracemalloc_peak_mb"] is None else f"{r['tracemalloc_peak_mb']:.1f}"
            tx = "1" if v == "geopair" else p[f"time_ratio_{v}"]
            mx = "1" if v == "geopair" else p[f"memory_ratio_{v}"]
            per_refresh = "-" if v == "geopair" else f"{r['seconds_per_refresh']:.3f}"
            per_epoch = r["seconds"] if v == "geopair" else r["seconds_per_epoch"]
            print(f"| {v} | {per_refresh} | {per_epoch:.3f} | {r['peak_mb']:.1f} | {r['rss_peak_mb']:.1f} | {tm} | "
                  f"{r['described_images']} | {tx} | {mx} |")
        proj = p.get("projection")
        if proj:
            print(f"\n    benchmark epoch at the '{proj['preset']}' preset's size ({proj['database']} database, "
                  f"{proj['queries']} queries; a refresh every 1000 queries; extraction at "
                  f"{proj['s_per_described_image'] * 1000:.1f} ms/image as measured above):")
            print(f"    geopair: {proj['geopair']['seconds']:.3f} s per epoch (measured)")
            for v in ("partial", "full"):
                r = proj[v]
                print(f"    {v}: {r['refreshes_per_epoch']} refreshes x ({r['described_per_refresh']} images + "
                      f"{r['search_and_mining_s_per_refresh']:.2f} s search/mining) = {r['seconds_per_epoch_est']:.0f} s "
                      f"per epoch (est.), {proj[f'time_ratio_{v}_per_epoch_est']}x GeoPair")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, one repeat, worker counts 0 and 1")
    parser.add_argument("--workers", default=None, help="data-loader worker counts to try (default 0,1,2)")
    parser.add_argument("--repeats", type=int, default=None, help="paired runs per worker count; (c) interleaved runs of each variant (default 1)")
    parser.add_argument("--warmup", type=int, default=None, help="steps left out at the start (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="steps timed after the warm-up (default 15; 8 with --quick)")
    parser.add_argument("--model-steps", type=int, default=None,
                        help="model-only steps timed before and after each run (default 6; 4 with --quick)")
    parser.add_argument("--loader-batches", type=int, default=None, help="batches timed for the loader alone")
    parser.add_argument("--describe-workers", type=int, default=0,
                        help="data-loader workers of descriptor extraction in (b) (0: its memory is all in one process)")
    parser.add_argument("--tracemalloc-mining", action="store_true",
                        help="also a tracemalloc pass for the mining variants (one more extraction each; their "
                             "peak is the RSS one: torch's tensors are not traced)")
    parser.add_argument("--profile", action="store_true", help="also one cProfile'd pipeline run (where its time goes)")
    parser.add_argument("--profile-workers", type=int, default=None, help="workers of the profiled run (default: the best)")
    parser.add_argument("--only", choices=("step", "preparation", "epochs"), default=None,
                        help="one part; 'epochs' (c) runs only when asked for")
    parser.add_argument("--epochs", type=int, default=4, help="(c) epochs of each whole run")
    parser.add_argument("--compile", action="store_true",
                        help="(c) also time the model-only step with the backbone torch.compile'd (trainer.compile)")
    parser.add_argument("--lr", type=float, default=None, help="(c) learning rate (default: the preset's)")
    parser.add_argument("--preset", default=EPOCH_PRESET,
                        help=f"(c) shipped preset of the runs (default {EPOCH_PRESET}, reduced to "
                             f"{EPOCH_SIZE[0]}x{EPOCH_SIZE[1]}, batch {EPOCH_BATCH}; another keeps its own size and batch)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="(c) config override applied last, repeatable (e.g. data.queries_per_epoch=96)")
    parser.add_argument("--world-preset", default="tiny", help="(c) synthetic world rendered at 160x120 (default tiny)")
    parser.add_argument("--data", default=None, help="(c) an already rendered world to use instead (read only)")
    parser.add_argument("--threads", type=int, default=1,
                        help="(c) torch threads: with 1, CPU seconds do not count threads spin-waiting on a "
                             "loaded machine, so the CPU ratios hold whatever else runs")
    parser.add_argument("--cache", default="/tmp/vgssl_bench_training", help="where the synthetic worlds are kept")
    parser.add_argument("--out", default="bench_results/training.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        job = json.loads(args.child)
        print(RESULT + json.dumps(CHILDREN[job["task"]](job)), flush=True)
        return
    quick = args.quick
    args.workers = [int(w) for w in (args.workers or ("0,1" if quick else "0,1,2")).split(",")]
    args.repeats = args.repeats or 1
    args.warmup = args.warmup if args.warmup is not None else 3
    args.steps = args.steps or (8 if quick else 15)
    args.model_steps = args.model_steps or (4 if quick else 6)
    args.loader_batches = args.loader_batches or (3 if quick else 6)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    started, load_start = time.perf_counter(), load_average()
    result: dict = {"machine": machine(), "torch": torch_setup(), "load_average_start": load_start, "quick": quick}
    if args.only in (None, "step"):
        data = world(cache, "demo", STEP_SIZE)
        print(f"(a) step time on {data} ...", flush=True)
        result["step"] = bench_step(data, args, cache)
    if args.only in (None, "preparation"):
        data = world(cache, "tiny" if quick else "demo", PREP_SIZE)
        print(f"(b) epoch preparation on {data} ...", flush=True)
        result["preparation"] = bench_preparation(data, args)
    if args.only == "epochs":
        result["epochs"] = bench_epochs(args, cache)
    result["load_average_end"] = load_average()
    result["seconds"] = round(time.perf_counter() - started, 1)
    print_tables(result)
    out = Path(args.out)
    if not out.is_absolute():
        out = REPO / out
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.only and out.is_file():  # one part re-measured: keep the other part of the earlier run
        try:
            earlier = json.loads(out.read_text())
        except ValueError:
            earlier = {}
        for other in ("step", "preparation", "epochs"):
            if other != args.only and other in earlier:
                result[other] = earlier[other]
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nload average {load_start} -> {result['load_average_end']}; {result['seconds']} s; wrote {out}")


if __name__ == "__main__":
    main()
