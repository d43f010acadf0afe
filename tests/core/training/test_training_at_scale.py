"""Training at scale on CPU: step checkpoints with exact mid-epoch resume (also after SIGKILL and
SIGTERM), and 2-process DDP (gloo) equal to one process with the same global batch."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import vgssl_core
from testkit import run_cli
from vgssl_core.models.checkpoint import read_checkpoint

# tiny images, frozen backbone BatchNorm, no validation: a few seconds a run
SMALL = ["--quiet", "data.workers=0", "model.image_size=[32,48]", "model.freeze_stages=2", "optim.lr=1e-3",
         "trainer.val_split=null", "trainer.test_split=null", "trainer.batchnorm=frozen",
         "trainer.deterministic=true"]  # bit-exact comparisons: say so (the default is off)
PER_METHOD = {
    "simclr": ["data.batch_size=4", "data.queries_per_epoch=20"],
    # 6 batches per epoch in 3 cache refreshes of 8 queries; full mining carries the previous
    # hardest negatives from refresh to refresh
    "triplet": ["data.batch_size=4", "mining.queries_per_epoch=24", "mining.cache_refresh_queries=8",
                "mining.mode=full", "mining.db_subset=20", "mining.negatives_per_query=2"],
}


def cli_env() -> dict:
    """This process's environment (the same thread count: bit-for-bit comparisons across processes)."""
    return {**os.environ, "PYTHONPATH": str(Path(vgssl_core.__file__).resolve().parents[1])}


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "vgssl_core", "train", *map(str, args)]


def losses(run_dir: Path) -> list[float]:
    with open(run_dir / "logs" / "metrics.csv") as fh:
        return [float(r["loss_step"]) for r in csv.DictReader(fh) if r.get("loss_step")]


def assert_same_weights(a: Path, b: Path, exact: bool = True, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    ca, cb = read_checkpoint(a), read_checkpoint(b)
    assert ca["global_step"] == cb["global_step"] > 0
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    for key, value in ca["state_dict"].items():
        if exact:
            assert torch.equal(value, cb["state_dict"][key]), key
        else:
            torch.testing.assert_close(value, cb["state_dict"][key], rtol=rtol, atol=atol, msg=key)


@pytest.mark.parametrize("method", ["simclr", "triplet"])
def test_resume_from_the_middle_of_an_epoch_is_exact(tiny_world, tmp_path, method):
    # 5 steps straight (with step checkpoints, which must not change training) against 4 steps,
    # stop, resume to 5: the triplet run stops right after its next cache refresh was mined
    # ahead of the optimizer (the data loader prefetches), which the resume must not mine again
    args = [*SMALL, f"method={method}", *PER_METHOD[method], "trainer.checkpoint_every_n_steps=2"]
    assert run_cli("train", "--data", tiny_world, "--out", tmp_path / "whole", "--max-steps", 5, *args) == 0
    part = tmp_path / "part"
    assert run_cli("train", "--data", tiny_world, "--out", part, "--max-steps", 4, *args) == 0
    stopped = read_checkpoint(part / "last.ckpt")
    assert stopped["global_step"] == 4 and stopped["vgssl_data"]["position"] == {"epoch": 0, "batches": 4}
    if method == "triplet":  # 2 batches a refresh: the 4 trained batches needed refreshes 0 and 1; the
        # loader may have mined refresh 2 ahead of the stop (it prefetches), which the resume reuses
        mined = [m["chunk"] for m in stopped["vgssl_data"]["miner"]["mined"]]
        assert mined in ([0, 1], [0, 1, 2]), mined
    assert run_cli("train", "--data", tiny_world, "--out", part, "--max-steps", 5, "--resume", part / "last.ckpt",
                   *args) == 0
    assert_same_weights(tmp_path / "whole" / "last.ckpt", part / "last.ckpt")
    assert losses(part)[-1] == losses(tmp_path / "whole")[-1]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"training ended (status {proc.returncode}) before {path.name} appeared"
        assert time.monotonic() < end, f"no {path.name} after {timeout} s"
        time.sleep(0.02)


def test_a_killed_or_preempted_run_resumes_exactly(tiny_world, tmp_path):
    args = [*SMALL, "method=simclr", *PER_METHOD["simclr"], "--max-steps", 9]
    assert run_cli("train", "--data", tiny_world, "--out", tmp_path / "whole", *args) == 0

    # SIGKILL right after the first step checkpoint (step 2) appears: nothing runs after it
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cli("--data", tiny_world, "--out", killed, *args, "trainer.checkpoint_every_n_steps=2"),
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(killed / "last.ckpt", proc)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    assert 2 <= read_checkpoint(killed / "last.ckpt")["global_step"] < 9
    assert run_cli("train", "--data", tiny_world, "--out", killed, *args, "--resume", killed / "last.ckpt") == 0
    assert_same_weights(tmp_path / "whole" / "last.ckpt", killed / "last.ckpt")

    # SIGTERM (pre-emption) right after a step checkpoint: it stops after the current step and
    # writes that step's checkpoint before exiting with 143
    term = tmp_path / "term"
    proc = subprocess.Popen(cli("--data", tiny_world, "--out", term, *args, "trainer.checkpoint_every_n_steps=2"),
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(term / "last.ckpt", proc)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=240)[1]
    assert proc.returncode == 143, err[-2000:]
    stopped_at = int(err.split("SIGTERM: stopped at step ")[1].split(";")[0])
    assert read_checkpoint(term / "last.ckpt")["global_step"] == stopped_at
    assert 2 <= stopped_at < 9
    assert run_cli("train", "--data", tiny_world, "--out", term, *args, "--resume", term / "last.ckpt") == 0
    assert_same_weights(tmp_path / "whole" / "last.ckpt", term / "last.ckpt")


# feature-nearest positives from kept descriptors: 5 batches an epoch (no database negatives)
# (augment none + frozen BatchNorm: the steps' descriptors are kept too, training.embedding_tap)
FEATURE_NEAREST = ["method=simclr", "data.batch_size=4", "data.queries_per_epoch=20", "data.db_negative_ratio=0",
                   "data.positive=feature-nearest", "data.positive_max_age=2", "data.augment=none"]


def test_feature_nearest_positives_from_kept_descriptors_resume_exactly(tiny_world, tmp_path):
    # stopped at step 3 of epoch 0 (5 steps): epoch 1's positives are chosen from descriptors
    # that steps 1-3 kept (in the step checkpoint) and steps 4-5 of the resumed run kept
    args = [*SMALL, *FEATURE_NEAREST, "trainer.checkpoint_every_n_steps=3"]
    assert run_cli("train", "--data", tiny_world, "--out", tmp_path / "whole", "--max-steps", 8, *args) == 0
    part = tmp_path / "part"
    assert run_cli("train", "--data", tiny_world, "--out", part, "--max-steps", 3, *args) == 0
    kept = read_checkpoint(part / "last.ckpt")["vgssl_data"]["sampler"]["kept"]
    assert len(kept["queries"]["index"]) == 20  # described for epoch 0, all 20 queries
    assert run_cli("train", "--data", tiny_world, "--out", part, "--max-steps", 8, "--resume", part / "last.ckpt",
                   *args) == 0
    assert_same_weights(tmp_path / "whole" / "last.ckpt", part / "last.ckpt")
    assert losses(part)[-1] == losses(tmp_path / "whole")[-1]
    whole, resumed = (read_checkpoint(r / "last.ckpt")["vgssl_data"] for r in (tmp_path / "whole", part))
    assert whole["sampler"]["positives"] == resumed["sampler"]["positives"] and whole["sampler"]["epoch"] == 1
    # epoch 1 described only what epoch 0's steps did not see: fewer than epoch 0's full refresh
    described = [h["described_images"] for h in whole["history"]]
    assert described[1] < described[0] and [h["described_images"] for h in resumed["history"]] == described


@pytest.mark.parametrize("method", ["simclr", "barlow_twins", "vicreg", "simclr-feature-nearest"])
def test_two_processes_train_as_one_with_the_same_global_batch(tiny_world, tmp_path, method):
    # heads without BatchNorm: torch's SyncBatchNorm needs GPUs (trainer.sync_batchnorm there).
    # SGD: Adam divides each weight's step by its gradient's magnitude, so float noise in a
    # near-zero gradient (summation order differs across processes) becomes a full-size step
    # feature-nearest: 7 steps cross into epoch 1, whose positives each rank chooses from the kept
    # descriptors all ranks gathered; a rank choosing otherwise trains on another batch
    steps = 7 if method.endswith("feature-nearest") else 3
    chosen = FEATURE_NEAREST if method.endswith("feature-nearest") else [f"method={method}", "data.queries_per_epoch=20"]
    args = [*SMALL, *chosen, "trainer.accelerator=cpu", "--max-steps", steps,
            "model.head_layers=1", "model.head_dim=32", "model.head_batchnorm=false", "optim.name=sgd", "optim.lr=0.05"]
    with_test = method == "simclr"  # rank 0 alone evaluates and reports
    if with_test:
        args = [a for a in args if a != "trainer.test_split=null"]
    ddp = subprocess.run(cli("--data", tiny_world, "--out", tmp_path / "ddp", *args, "data.batch_size=2",
                             "trainer.devices=2", "trainer.strategy=ddp"),
                         env=cli_env(), capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert run_cli("train", "--data", tiny_world, "--out", tmp_path / "one", *args, "data.batch_size=4",
                   "trainer.devices=1") == 0
    # float noise (the gradient all-reduce sums in another order) grows with the steps: 7 steps
    # of SGD at lr 0.05 drift by ~1e-4 where 3 stay within 1e-5
    np.testing.assert_allclose(losses(tmp_path / "ddp"), losses(tmp_path / "one"), rtol=1e-5 if steps == 3 else 1e-3)
    assert len(losses(tmp_path / "one")) == steps
    if method.endswith("feature-nearest"):  # the ranks compared their choices (VgsslModule._check_same_positives);
        # against one process, float noise in the kept descriptors may flip a near tie
        ddp_data, one_data = (read_checkpoint(tmp_path / r / "last.ckpt")["vgssl_data"] for r in ("ddp", "one"))
        assert ddp_data["sampler"]["epoch"] == 1
        same = sum(a == b for a, b in zip(ddp_data["sampler"]["positives"], one_data["sampler"]["positives"]))
        assert same >= 18 == len(one_data["sampler"]["positives"]) - 2
        assert ddp_data["history"][1]["described_images"] == one_data["history"][1]["described_images"]
    # NHWC (channels-last) CPU kernels sum in another order at batch 2 than at 4: weights differ by
    # up to ~2e-5 after 3 steps (a step at the wrong scale moves them by ~1e-2)
    assert_same_weights(tmp_path / "ddp" / "last.ckpt", tmp_path / "one" / "last.ckpt", exact=False,
                        **({"atol": 1e-4} if steps == 3 else {"rtol": 1e-2, "atol": 1e-3}))
    if with_test:
        assert ddp.stdout.count("trained simclr: 3 steps") == 1
        assert sorted(p.name for p in (tmp_path / "ddp").glob("*.json")) == ["config.json", "summary.json", "test.json"]


@pytest.mark.parametrize("override, message", [
    ("trainer.checkpoint_every_n_steps=0", "'trainer.checkpoint_every_n_steps' must be an integer >= 1 or null"),
    ("trainer.checkpoint_every_minutes=-5", "'trainer.checkpoint_every_minutes' must be > 0 or null"),
    ("trainer.sync_batchnorm=maybe", "'trainer.sync_batchnorm' is 'maybe'; valid: none, heads, all"),
])
def test_bad_scale_settings_are_one_line_errors(tmp_path, capsys, override, message):
    assert run_cli("train", "--data", tmp_path / "none", "--out", tmp_path / "run", override) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
