"""The Lightning module: one training step for every method, data planned per epoch.

An SSL method sees batches of GeoPairs (two views of one place); the triplet baseline sees
mined triplets. Either way the epoch's plan is made when its data loader is built (Lightning
reloads it every epoch), from (seed, epoch) alone, so a resumed run replays the same batches;
a checkpoint also records how many batches of its epoch were trained on (``position``), and a
run resumed mid-epoch skips those.

Under DDP every rank plans the same epoch with global batches of ``data.batch_size`` x ranks and
trains on its contiguous slice of each, so a step of N ranks is a step of one process on the
global batch (with gathered losses, ``methods.distributed``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from vgssl_core import __version__
from vgssl_core.models.checkpoint import FORMAT_VERSION, KEY
from vgssl_core.data.dataset import GeoSplit
from vgssl_core.evaluation.descriptors import extract_descriptors
from vgssl_core.errors import VgsslError
from vgssl_core.data.geopairs import EpochBatches, GeoPairConfig, GeoPairSampler
from vgssl_core.methods import build_method
from vgssl_core.evaluation.search import prepare
from vgssl_core.training.data import GeoPairImages, TripletImages
from vgssl_core.training.embedding_tap import EmbeddingTap, comparable_sides
from vgssl_core.training.mining import MinedBatches, TripletMiner

MODEL_PREFIX = "method.model."
DATA_KEY = "vgssl_data"  # checkpoint entry: the per-epoch data history and the miner's state (resume)
log = logging.getLogger("vgssl")


class _CurrentBatches:
    """The run's DataLoader's batch sampler: the current epoch's (``train_dataloader`` swaps them)."""

    batches: Any = None

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class VgsslModule(pl.LightningModule):
    def __init__(self, cfg: dict[str, Any], train_split: GeoSplit) -> None:
        super().__init__()
        self.cfg = cfg
        self.train_split = train_split
        self.method = build_method(cfg["method"], cfg["model"], cfg["method_config"])
        data = cfg["data"]
        if self.method.batch_kind == "triplets":
            self.miner = TripletMiner(train_split, cfg["mining"], data, cfg["trainer"]["seed"])
            self.sampler = None
            skipped = self.miner.n_queries_without_positive
        else:
            self.sampler = GeoPairSampler(train_split, GeoPairConfig(
                train_radius_m=data["train_radius_m"], eval_radius_m=data["eval_radius_m"],
                queries_per_epoch=data["queries_per_epoch"], db_negative_ratio=data["db_negative_ratio"],
                positive=data["positive"], positive_max_age=data["positive_max_age"],
                batch_size=data["batch_size"], seed=cfg["trainer"]["seed"]))
            skipped = self.sampler.n_queries_without_positive
        # feature-nearest positives also from the descriptors the steps compute, where those are
        # what a description would give (data.kept_embeddings, training.embedding_tap)
        reuse = self.sampler is not None and data["positive"] == "feature-nearest" and data["positive_max_age"] > 0
        sides = comparable_sides(self.method.model, data["augment"], cfg["trainer"]["batchnorm"]) if reuse else ()
        self.tap = EmbeddingTap(self.method, sides) if sides else None
        self._loader: DataLoader | None = None  # one loader for the run: its workers persist across epochs
        self._batches: EpochBatches | MinedBatches | None = None
        self._nonfinite: torch.Tensor | None = None  # on a GPU: any non-finite loss since the last check
        self.n_queries_without_positive = skipped
        self._tick: float | None = None
        self.position = {"epoch": 0, "batches": 0}  # batches of the current epoch trained on
        self._resume_at: dict[str, int] | None = None  # a mid-epoch checkpoint's position
        # what each epoch's plan held (EpochStats / the miner's counts): summary.json's data_history
        self.data_history: list[dict[str, Any]] = []

    # -- distributed --------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Once the process group exists: plan global batches, synchronise BatchNorm if asked."""
        world = self.trainer.world_size
        if world > 1 and self.sampler is not None:
            self.sampler = GeoPairSampler(self.train_split, dataclasses.replace(
                self.sampler.cfg, batch_size=int(self.cfg["data"]["batch_size"]) * world))
        if world > 1:
            self._sync_batchnorm(self.cfg["trainer"]["sync_batchnorm"])

    def _sync_batchnorm(self, mode: str) -> None:
        """``trainer.sync_batchnorm``: heads/predictors (BT, VICReg, BYOL, SimSiam heads) or all
        training BatchNorm layers compute statistics over the global batch."""
        if mode == "none":
            return
        skip_backbone = mode == "heads" or self.cfg["trainer"]["batchnorm"] == "frozen"

        def convert(parent: torch.nn.Module, dry_run: bool) -> int:
            found = 0
            for name, child in parent.named_children():
                if skip_backbone and name == "backbone":
                    continue
                if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
                    found += 1
                    if not dry_run:
                        setattr(parent, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(child))
                else:
                    found += convert(child, dry_run)
            return found

        if self.trainer.strategy.root_device.type == "cpu":
            if convert(self.method, dry_run=True) and self.trainer.is_global_zero:
                log.warning(f"note: trainer.sync_batchnorm={mode} needs GPUs (torch's SyncBatchNorm); "
                            "on CPU each rank's BatchNorm uses its own batch statistics")
            return
        convert(self.method, dry_run=False)

    # -- data ---------------------------------------------------------------------------
    def _describe(self, side: str, indices: np.ndarray) -> np.ndarray:
        images = self.train_split.queries if side == "queries" else self.train_split.database
        return self._describe_paths([images.paths[i] for i in indices])

    def _describe_paths(self, paths: list) -> np.ndarray:
        if not paths:
            return np.empty((0, 0), np.float32)
        desc = extract_descriptors(self.method.model, paths, self.cfg["model"]["image_size"], self.device,
                                   batch_size=self.cfg["trainer"]["eval_batch_size"],
                                   workers=self.cfg["data"]["workers"], progress=False)
        if self.training:  # extraction restored train mode on every layer; frozen BatchNorm stays frozen
            self._apply_batchnorm_mode()
        return prepare(desc, "ip")

    def train_dataloader(self) -> DataLoader:
        data, epoch = self.cfg["data"], self.current_epoch
        size = self.cfg["model"]["image_size"]
        rank, world = self.trainer.global_rank, self.trainer.world_size
        skip = 0
        if self._resume_at is not None and self._resume_at["epoch"] == epoch:
            skip = int(self._resume_at["batches"])  # a mid-epoch resume: these were trained on
        self._resume_at = None
        if self.sampler is None:
            batches = MinedBatches(self.miner, epoch, self._describe, data["batch_size"], rank, world, skip)
            dataset = TripletImages(self.train_split, size, data["augment"])
            self._record_data({"epoch": epoch, "queries": self.miner.queries_per_epoch,
                               "cache_refreshes": len(batches.chunks), "batches": len(batches)},
                              f"epoch {epoch} data: {self.miner.queries_per_epoch} queries, "
                              f"{len(batches.chunks)} cache refreshes ({self.cfg['mining']['mode']} mining), "
                              f"{len(batches)} batches")
        else:
            self._flush_kept()
            needed = self.sampler.needs_descriptors(epoch)
            line_end, extra = "", {}
            if needed is not None:  # the sampled queries and candidate positives with no recent kept descriptor
                start = time.perf_counter()
                q_idx, db_idx = needed  # one extraction (one start of its loader's workers)
                split = self.train_split
                desc = self._describe_paths([split.queries.paths[i] for i in q_idx] +
                                            [split.database.paths[i] for i in db_idx])
                self.sampler.set_descriptors(epoch, q_idx, desc[:len(q_idx)], db_idx, desc[len(q_idx):])
                refresh_s = round(time.perf_counter() - start, 3)
                line_end = f"; descriptor refresh {len(q_idx) + len(db_idx)} images in {refresh_s} s"
                extra = {"descriptor_refresh_s": refresh_s, "described_images": int(len(q_idx) + len(db_idx))}
            if needed is not None and world > 1:
                self._check_same_positives(epoch)
            stats = self.sampler.plan(epoch)[1]
            self._record_data({**stats.as_dict(), **extra}, stats.line() + line_end)
            dataset, batches = GeoPairImages(self.train_split, size, data["augment"]), EpochBatches(self.sampler, rank, world, skip)
            batches.set_epoch(epoch)
        return self._loader_for(dataset, batches)

    def _check_same_positives(self, epoch: int) -> None:
        """Under DDP every rank must train on its slice of one plan: the ranks compare a digest of
        the epoch's feature-nearest positives (one small all-gather an epoch) and stop if they differ."""
        nearest = self.sampler.state_dict()
        pairs = np.asarray([nearest["queries"], nearest["positives"]], dtype=np.int64)
        digest = torch.tensor([int.from_bytes(hashlib.sha256(pairs.tobytes()).digest()[:7], "little")],
                              dtype=torch.int64, device=self.device)
        everyone = self.all_gather(digest).reshape(-1)
        if not bool((everyone == digest).all()):
            raise RuntimeError(f"epoch {epoch}: the ranks chose different feature-nearest positives")

    def _loader_for(self, dataset, batches) -> DataLoader:
        """The run's one DataLoader, given this epoch's batches: with workers, they persist across
        epochs (a dataset item is a pure function of its planned item: their copy never goes stale)."""
        self._batches = batches
        if self._loader is None:
            workers = int(self.cfg["data"]["workers"])
            self._current = _CurrentBatches()
            self._loader = DataLoader(dataset, batch_sampler=self._current, num_workers=workers,
                                      persistent_workers=workers > 0, pin_memory=self.device.type == "cuda")
        self._current.batches = batches
        return self._loader

    def _record_data(self, stats: dict[str, Any], line: str) -> None:
        # an epoch resumed mid-way keeps what its first start recorded (its descriptor refresh)
        earlier = next((h for h in self.data_history if h["epoch"] == stats["epoch"]), {})
        self.data_history = [h for h in self.data_history if h["epoch"] != stats["epoch"]] + [{**earlier, **stats}]
        if self.trainer.is_global_zero:
            log.info(line)

    # -- training -----------------------------------------------------------------------
    def _batch_flip(self, batch):
        """``augment.batch_hflip_p``: flip every image of the batch horizontally, or none (the
        reference's one flip decision per batch). The decision is a function of (seed, step), so
        a resumed run flips the same batches."""
        p = float(self.cfg["data"]["augment"].get("batch_hflip_p", 0.0))
        if p <= 0:
            return batch
        generator = torch.Generator().manual_seed(int(self.cfg["trainer"]["seed"]) * 1_000_003 + int(self.global_step))
        if float(torch.rand((), generator=generator)) >= p:
            return batch
        return [t.flip(-1) if t.is_floating_point() else t for t in batch]

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        batch = self._batch_flip(batch)
        if self.method.batch_kind == "triplets":
            query, positive, negatives = batch
            loss = self.method.loss_triplets(query, positive, negatives)
            n_images = query.shape[0] * (2 + negatives.shape[1])
        else:
            view_a, view_b, positions = batch
            if self.tap is not None:
                self.tap.active = True
            loss = self.method.loss_pairs(view_a, view_b, positions)
            n_images = 2 * view_a.shape[0]
        self._check_loss(loss)
        if self.tap is not None:
            self.tap.active = False
            self.tap.record(self._batches._batches()[batch_idx], view_a, view_b, int(self.current_epoch))
        self.position = {"epoch": int(self.current_epoch), "batches": int(batch_idx) + 1}
        now = time.perf_counter()
        if self._tick is not None:  # all ranks' images: the global batch
            self.log("img_s", n_images * self.trainer.world_size / max(now - self._tick, 1e-9), prog_bar=True,
                     on_step=True, on_epoch=False)
        self._tick = now
        # the mean over ranks: the global batch's loss (each rank's is its slice's mean, or the
        # whole batch's where the method gathers)
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=n_images, sync_dist=True)
        return loss

    def _check_loss(self, loss: torch.Tensor, force: bool = False) -> None:
        """A non-finite loss stops the run. On CPU every step; on a GPU the flag stays on the
        device and is read (a sync) every ``log_every_n_steps`` and before any checkpoint."""
        bad = ~torch.isfinite(loss.detach())
        self._nonfinite = bad if self._nonfinite is None else (self._nonfinite | bad)
        step = int(self.global_step)
        if self.device.type == "cuda" and not force and (step + 1) % int(self.trainer.log_every_n_steps or 1):
            return
        if bool(self._nonfinite):
            where = f"at step {step}" if self.device.type != "cuda" else f"by step {step}"
            raise VgsslError(f"loss is {loss.item()} {where} (epoch {self.current_epoch}); "
                             "stopped; the last good checkpoint is kept — lower optim.lr or check the data")
        self._nonfinite = None

    def _flush_kept(self) -> None:
        if self.tap is not None:
            world = self.trainer.world_size
            self.tap.flush(self.sampler, self.all_gather if world > 1 else None, world)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        return [t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t for t in batch]  # NHWC, as run.train made the network

    def on_train_epoch_end(self) -> None:
        self._flush_kept()

    def on_train_epoch_start(self) -> None:
        self._tick = None
        self._apply_batchnorm_mode()

    def on_train_start(self) -> None:  # a run resumed mid-epoch gets no on_train_epoch_start
        self._apply_batchnorm_mode()

    def train(self, mode: bool = True) -> "VgsslModule":
        super().train(mode)
        if mode:
            self._apply_batchnorm_mode()
        return self

    def _apply_batchnorm_mode(self) -> None:
        """With ``trainer.batchnorm: frozen``, the backbones' BatchNorm layers stay in eval mode
        whenever the module trains (Lightning leaves modes as it finds them, and restores them
        after validation, so this runs at every epoch start and on every ``train()``).

        Why: with random initialisation a BatchNorm at its initial statistics (mean 0, var 1)
        passes colour and brightness through, and that network is a fair place descriptor;
        recomputing the statistics on the data alone (no gradient step) drops the demo world's
        validation R@1 from 20 to 9 (benchmarks/probe_batchnorm.py), so a short run spends its
        budget climbing back. Frozen statistics make training a refinement of the descriptor it
        starts from (with ImageNet weights: the ImageNet statistics, the usual choice for small
        fine-tuning batches).
        The projection heads' BatchNorm1d (BYOL, SimSiam, Barlow Twins, VICReg) always trains:
        those methods rely on it.
        """
        if self.cfg["trainer"]["batchnorm"] == "frozen":
            for module in self.method.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.eval()

    def optimizer_step(self, *args, **kwargs) -> None:
        """The step, then the method's update (momentum encoders) at once, so a checkpoint
        written by a callback at the batch's end already holds it."""
        super().optimizer_step(*args, **kwargs)
        max_steps = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        self.method.after_optimizer_step(self.global_step, int(max_steps))

    def configure_optimizers(self):
        optim = self.cfg["optim"]
        params = self.method.trainable_parameters()
        if optim["name"] == "sgd":
            optimizer = torch.optim.SGD(params, lr=optim["lr"], momentum=optim["momentum"], weight_decay=optim["weight_decay"])
        else:
            cls = torch.optim.AdamW if optim["name"] == "adamw" else torch.optim.Adam
            optimizer = cls(params, lr=optim["lr"], weight_decay=optim["weight_decay"])
        if optim["scheduler"] == "none" and not optim["warmup_steps"]:
            return optimizer
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(optim["warmup_steps"])
        cosine = optim["scheduler"] == "cosine"

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if not cosine:
                return 1.0
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoints --------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._nonfinite is not None:  # a GPU run's unchecked steps: no checkpoint of a diverged model
            self._check_loss(torch.zeros((), device=self.device), force=True)
        self._flush_kept()
        checkpoint[KEY] = {
            "format": FORMAT_VERSION,
            "vgssl_version": __version__,
            "model_config": self.cfg["model"],
            "method": self.cfg["method"],
            "config": self.cfg,
            "model_prefix": MODEL_PREFIX,
        }
        checkpoint[DATA_KEY] = {"history": self.data_history, "position": dict(self.position),
                                "miner": self.miner.state_dict() if self.sampler is None else None,
                                "sampler": self.sampler.state_dict() if self.sampler is not None else None}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        data = checkpoint.get(DATA_KEY) or {}
        self.data_history = list(data.get("history", []))
        if self.sampler is None and data.get("miner") is not None:
            self.miner.load_state_dict(data["miner"])
        if self.sampler is not None and data.get("sampler"):
            self.sampler.load_state_dict(data["sampler"])
        if data.get("position"):
            self.position = dict(data["position"])
            self._resume_at = dict(data["position"])
        check_resumable(checkpoint, self.cfg)


def check_resumable(checkpoint: dict[str, Any], cfg: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint of another method or model: its weights and optimiser state
    would not fit (``train`` calls this before it touches the run folder)."""
    meta = checkpoint.get(KEY, {})
    if meta.get("method") not in (None, cfg["method"]):
        raise VgsslError(f"--resume checkpoint was trained with method '{meta['method']}', the config says "
                         f"'{cfg['method']}'; use the run's own config or a new --out")
    theirs = meta.get("model_config")
    if theirs is not None and theirs != cfg["model"]:
        diff = sorted(k for k in set(theirs) | set(cfg["model"]) if theirs.get(k) != cfg["model"].get(k))
        raise VgsslError(f"--resume checkpoint was trained with a different model (differs in: {', '.join(diff)})")
