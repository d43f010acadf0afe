"""``vgssl train``: a config, a dataset and a run folder in; checkpoints and test.json out.

Lightning runs the loop (CPU, one or many GPUs, several nodes through ``torchrun``/SLURM, AMP,
gradient clipping). vgssl adds what Lightning leaves open: validation Recall@N with the same
evaluation code as ``vgssl eval``; ``last.ckpt`` each epoch and ``best.ckpt`` by validation
R@5, both written atomically; checkpoints read with ``weights_only=True``; and a final test
evaluation written as ``RUN_DIR/test.json`` in the ``vgssl eval`` JSON format.
"""

from __future__ import annotations

import csv
import json
import logging
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from lightning_fabric.plugins.io.checkpoint_io import CheckpointIO

from vgssl_core.models.checkpoint import read_checkpoint
from vgssl_core.data.dataset import load_split
from vgssl_core.errors import VgsslError
from vgssl_core.evaluation.split import evaluate_split
from vgssl_core.models.loading import load_descriptor_model
from vgssl_core.models.weights import init_record
from vgssl_core.io import torch_save, write_json, write_text
from vgssl_core.training.module import VgsslModule, check_resumable
from vgssl_core.training.step_checkpoints import SIGTERM_EXIT, StepCheckpoint

log = logging.getLogger("vgssl")


class SafeCheckpointIO(CheckpointIO):
    """Atomic writes; reads only through ``torch.load(weights_only=True)`` (no code in a checkpoint)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return read_checkpoint(path)

    def remove_checkpoint(self, path) -> None:
        Path(path).unlink(missing_ok=True)


class ValidateAndCheckpoint(pl.Callback):
    """Every ``val_every_n_epochs``: Recall@N on the validation split, ``best.ckpt`` by R@5;
    every epoch and at the end: ``last.ckpt``."""

    def __init__(self, run_dir: Path, val_split, every: int, cfg: dict[str, Any]) -> None:
        self.run_dir, self.val_split, self.every, self.cfg = run_dir, val_split, max(int(every), 1), cfg
        self.best_r5: float | None = None
        self.history: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"best_r5": self.best_r5, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_r5, self.history = state.get("best_r5"), list(state.get("history", []))

    def _validate(self, trainer: pl.Trainer, module: VgsslModule) -> None:
        model = module.method.model
        report = None
        if trainer.is_global_zero:  # under DDP: rank 0 evaluates, the others receive its report
            report, *_ = evaluate_split(model, self.cfg["model"], self.val_split, module.device,
                                        batch_size=self.cfg["trainer"]["eval_batch_size"],
                                        workers=self.cfg["data"]["workers"], progress=False)
        report = trainer.strategy.broadcast(report, src=0)
        for n, r in report["recall"].items():
            module.log(f"val_R@{n}", float(r), prog_bar=n in ("1", "5"), on_epoch=True, sync_dist=True)
        r5 = report["recall"]["5"]
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, "recall": report["recall"]})
        if trainer.is_global_zero:
            log.info(f"epoch {trainer.current_epoch}: val R@1 {report['recall']['1']:.1f}  R@5 {r5:.1f}")
        if self.best_r5 is None or r5 > self.best_r5:
            self.best_r5 = r5
            trainer.save_checkpoint(self.run_dir / "best.ckpt", weights_only=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: VgsslModule) -> None:
        if self.val_split is not None and (trainer.current_epoch + 1) % self.every == 0:
            self._validate(trainer, module)
        # an epoch cut short by max_steps keeps the step checkpoint of its last batch
        # (StepCheckpoint): written here it would read as a finished epoch, and a resume would skip the rest
        cut_short = 0 < trainer.max_steps <= trainer.global_step and module.position["batches"] < trainer.num_training_batches
        if not cut_short:
            trainer.save_checkpoint(self.run_dir / "last.ckpt", weights_only=False)

    def on_exception(self, trainer: pl.Trainer, module: VgsslModule, exception: BaseException) -> None:
        # Ctrl-C: keep what was learnt so far (Lightning then exits; ``train`` reports it)
        if isinstance(exception, KeyboardInterrupt) and trainer.global_step > 0:
            trainer.save_checkpoint(self.run_dir / "last.ckpt", weights_only=False)
            self.interrupted_at = trainer.global_step


def _appending_csv_logger(run_dir: Path, resume_step: int):
    """Lightning's CSV logger, except that ``logs/metrics.csv`` grows across resumes.

    Lightning deletes an existing ``metrics.csv``; here its rows are kept (those at or after the
    resumed step are dropped: the resumed run logs them again) and new rows are appended under
    the same header.
    """
    from pytorch_lightning.loggers import CSVLogger
    from pytorch_lightning.loggers.csv_logs import ExperimentWriter

    class AppendingWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            path = Path(self.metrics_file_path)
            if not path.is_file():
                return
            with open(path, newline="") as fh:
                reader = csv.DictReader(fh)
                keys, rows = list(reader.fieldnames or []), list(reader)
            rows = [r for r in rows if _step(r) < resume_step]
            self.metrics_keys = keys
            text = _csv_text(keys, rows)
            write_text(path, text)

    class AppendingCSVLogger(CSVLogger):
        @property
        def experiment(self):
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = AppendingWriter(log_dir=self.log_dir)
            return self._experiment

    return AppendingCSVLogger(str(run_dir), name="logs", version="")


def _step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("nan")


def _csv_text(keys: list[str], rows: list[dict[str, str]]) -> str:
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _loggers(cfg: dict[str, Any], run_dir: Path, resume_step: int = 0) -> list:
    wanted = cfg["trainer"]["loggers"] or []
    out: list = []
    for name in wanted:
        if name == "csv":
            out.append(_appending_csv_logger(run_dir, resume_step))
        elif name == "tensorboard":
            try:
                from pytorch_lightning.loggers import TensorBoardLogger

                out.append(TensorBoardLogger(str(run_dir), name="tensorboard", version=""))
            except ModuleNotFoundError:
                log.info("note: tensorboard is not installed; logging to CSV only")
        elif name == "wandb":
            from pytorch_lightning.loggers import WandbLogger

            out.append(WandbLogger(save_dir=str(run_dir), name=cfg.get("name")))
        else:
            raise VgsslError(f"unknown logger '{name}'; valid: csv, tensorboard, wandb")
    return out


def _init_netvlad(module: VgsslModule, cfg: dict[str, Any], n_images: int = 500) -> None:
    """NetVLAD centroids by k-means on training features, then the momentum copy (if any) is
    synced, so it starts from the initialised clusters rather than random ones."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from vgssl_core.evaluation.descriptors import ImageFiles

    split, model = module.train_split, module.method.model
    rng = np.random.default_rng(cfg["trainer"]["seed"])
    chosen = rng.choice(len(split.database), size=min(n_images, len(split.database)), replace=False)
    loader = DataLoader(ImageFiles([split.database.paths[i] for i in chosen], cfg["model"]["image_size"]),
                        batch_size=cfg["trainer"]["eval_batch_size"])
    generator = torch.Generator().manual_seed(int(cfg["trainer"]["seed"]))
    per_image = 100  # local features kept per image: enough for k-means, bounded memory at 480x640
    chunks = []
    model.eval()
    with torch.no_grad():
        for batch in loader:
            local = model.local_features(batch)
            chunks.append(local[torch.randperm(len(local), generator=generator)[: per_image * len(batch)]])
    features = torch.cat(chunks)
    model.train()
    model.init_netvlad_from_features(features)
    module.method.sync_momentum()


def _uses_gpu(trainer_cfg: dict[str, Any]) -> bool:
    import torch

    return trainer_cfg["accelerator"] in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def _precision(name: str, gpu: bool) -> str:
    """``auto``: bf16 autocast on a GPU that has bf16 (Ampere and later), float32 elsewhere."""
    import torch

    if name != "auto":
        return name
    return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"


def compile_backbones(method: torch.nn.Module) -> None:
    """``trainer.compile``: ``torch.compile`` the method's backbone(s) in place (``nn.Module.compile``:
    the state-dict keys, and so the checkpoints, stay as they are; the hooks of the descriptor
    network's outer modules, ``training.embedding_tap``, keep working)."""
    for net in (method.model, getattr(method, "momentum_model", None)):
        if net is not None:
            net.backbone.compile()


def train(cfg: dict[str, Any], data: str | Path, run_dir: str | Path, *, resume: str | Path | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Train one strategy; returns the summary also written to ``RUN_DIR/summary.json``."""
    run_dir = Path(run_dir)
    resume_step = 0  # logged rows from this step on are the new run's (all of them without --resume)
    if resume is not None:
        # a missing / truncated / foreign file, or one of another model, fails here: the run
        # folder (config.json, logs) changes only once the resume is accepted
        resumed = read_checkpoint(resume)
        check_resumable(resumed, cfg)
        resume_step = int(resumed.get("global_step", 0))
        del resumed
    elif (run_dir / "last.ckpt").exists():
        raise VgsslError(f"{run_dir} already holds a run (last.ckpt); use --resume {run_dir / 'last.ckpt'} or a new --out")
    trainer_cfg = cfg["trainer"]
    gpu = _uses_gpu(trainer_cfg)
    log_every = trainer_cfg["log_every_n_steps"] or (50 if gpu else 1)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # its banner lines, not its warnings
    pl.seed_everything(int(trainer_cfg["seed"]), workers=True, verbose=False)
    train_split = load_split(data, "train")
    val_split = load_split(data, trainer_cfg["val_split"]) if trainer_cfg["val_split"] else None
    test_split = load_split(data, trainer_cfg["test_split"]) if trainer_cfg["test_split"] else None
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", cfg)
    module = VgsslModule(cfg, train_split)
    init = init_record(module.method.model)  # which weights the run started from (file + sha256)
    if module.n_queries_without_positive:
        log.info(f"note: {module.n_queries_without_positive} training queries have no database image within "
                 f"{cfg['data']['train_radius_m']} m and are left out")
    if cfg["model"]["aggregation"] == "netvlad" and resume is None:
        _init_netvlad(module, cfg)
    # NHWC convolutions: tensor cores on a GPU, and oneDNN's fast path on a CPU (EfficientNet-Lite0 step
    # x0.66, ResNet-50 x0.92 here; README "Training speed"); the batches follow in on_after_batch_transfer
    module.method.to(memory_format=torch.channels_last)
    if trainer_cfg["compile"]:
        compile_backbones(module.method)
    callback = ValidateAndCheckpoint(run_dir, val_split, trainer_cfg["val_every_n_epochs"], cfg)
    steps = StepCheckpoint(run_dir, trainer_cfg["checkpoint_every_n_steps"], trainer_cfg["checkpoint_every_minutes"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
        # our batch samplers skip what a mid-epoch checkpoint trained on (VgsslModule.position)
        warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
        trainer = pl.Trainer(
            default_root_dir=str(run_dir),
            max_epochs=int(trainer_cfg["max_epochs"]),
            max_steps=int(trainer_cfg["max_steps"]),
            accelerator=trainer_cfg["accelerator"],
            devices=trainer_cfg["devices"],
            num_nodes=int(trainer_cfg["num_nodes"]),
            strategy=trainer_cfg["strategy"],
            precision=_precision(trainer_cfg["precision"], gpu),
            gradient_clip_val=cfg["optim"]["grad_clip"],
            deterministic=bool(trainer_cfg["deterministic"]),
            logger=_loggers(cfg, run_dir, resume_step) or False,
            callbacks=[callback, steps, *([TQDMProgressBar(refresh_rate=log_every)] if progress else [])],
            enable_checkpointing=False,
            enable_progress_bar=progress,
            enable_model_summary=False,
            reload_dataloaders_every_n_epochs=1,
            use_distributed_sampler=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            log_every_n_steps=log_every,
            plugins=[SafeCheckpointIO()],
        )
        start = time.perf_counter()
        try:
            trainer.fit(module, ckpt_path=str(resume) if resume else None, weights_only=True)
        except SystemExit as exc:  # Lightning's answer to Ctrl-C (after ``on_exception``) and to SIGTERM
            if exc.code == SIGTERM_EXIT:  # pre-empted: StepCheckpoint wrote last.ckpt; exit as the signal would
                raise
            signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning left it ignored
            step = getattr(callback, "interrupted_at", None)
            where = f"; step {step} saved in {run_dir / 'last.ckpt'} (--resume it)" if step else ""
            raise KeyboardInterrupt(f"interrupted{where}") from None
    seconds = time.perf_counter() - start
    summary: dict[str, Any] = {"run_dir": str(run_dir), "method": cfg["method"], "name": cfg.get("name"),
                               "epochs": trainer.current_epoch, "steps": trainer.global_step,
                               "init": init, "train_seconds": round(seconds, 2), "best_val_r5": callback.best_r5,
                               "val_history": callback.history, "data_history": module.data_history}
    if test_split is not None and trainer.is_global_zero:
        best = run_dir / "best.ckpt"
        ckpt = best if best.exists() else run_dir / "last.ckpt"
        model, model_cfg, _ = load_descriptor_model(ckpt)
        report, *_ = evaluate_split(model.to(module.device), model_cfg, test_split, module.device,
                                    batch_size=trainer_cfg["eval_batch_size"], progress=progress)
        report["checkpoint"] = str(ckpt)
        report["init"] = init
        write_json(run_dir / "test.json", report)
        summary["test"] = report
    if trainer.is_global_zero:
        write_json(run_dir / "summary.json", summary)
    return summary


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None

