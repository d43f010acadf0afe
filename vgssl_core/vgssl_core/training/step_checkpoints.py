"""``last.ckpt`` between epoch ends: every N steps, every M minutes, at ``max_steps`` and on SIGTERM.

A step checkpoint is written at the end of a training batch, after the optimiser step and the
method's update (``VgsslModule.optimizer_step``); it records the batches of its epoch already
trained on (``VgsslModule.position``), the epoch's feature-nearest positives and the miner's
mined chunks, so ``--resume`` continues the epoch where it stopped, bit for bit on CPU. Files
are written atomically (``SafeCheckpointIO``): a run killed at any moment leaves the previous
checkpoint or the new one, whole.

SIGTERM (a cluster pre-empting the job; SLURM sends it before SIGKILL): Lightning notes the
signal and stops after the current batch (on every rank under DDP); this callback then writes
``last.ckpt`` before the process exits with status 143.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException

SIGTERM_EXIT = 143  # 128 + SIGTERM: what a shell reports for a process the signal ended

log = logging.getLogger("vgssl")


class StepCheckpoint(pl.Callback):
    def __init__(self, run_dir: Path, every_n_steps: int | None, every_minutes: float | None) -> None:
        self.path = Path(run_dir) / "last.ckpt"
        self.every_n_steps, self.every_minutes = every_n_steps, every_minutes
        self._last_save = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._last_save = time.monotonic()

    def _due(self, trainer: pl.Trainer) -> bool:
        if 0 < trainer.max_steps <= trainer.global_step:  # the last step (a run stopped by max_steps)
            return True
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            return True
        if self.every_minutes is None:
            return False
        # rank 0's clock decides for all ranks: writing a checkpoint is a collective (barrier)
        due = time.monotonic() - self._last_save >= 60.0 * self.every_minutes
        return bool(trainer.strategy.broadcast(due, src=0))

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        # the epoch's last batch: the epoch end writes last.ckpt (once, as a finished epoch)
        last_of_epoch = getattr(module, "position", {}).get("batches", 0) >= trainer.num_training_batches
        if not last_of_epoch and self._due(trainer):
            trainer.save_checkpoint(self.path, weights_only=False)
            self._last_save = time.monotonic()

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.path, weights_only=False)
            if trainer.is_global_zero:
                log.warning(f"SIGTERM: stopped at step {trainer.global_step}; wrote {self.path} "
                            f"(continue with --resume {self.path})")
            # Lightning re-raises this SystemExit; exit 143 (128 + SIGTERM) as a process the signal
            # ended, not 0: a scheduler must not take a pre-empted run for a finished one
            exception.code = SIGTERM_EXIT
