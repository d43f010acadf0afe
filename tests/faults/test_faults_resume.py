"""Rows 1, 2 and the Ctrl-C part of 10: a resume changes the run folder only once accepted,
keeps the logs of earlier epochs, and Ctrl-C leaves a checkpoint to resume."""

from __future__ import annotations

import csv
import shutil
import signal
import subprocess
import sys
import time

import pytest
from faultkit import FAST, ROOT, train, tree_bytes

from vgssl_core.models.checkpoint import read_checkpoint


@pytest.fixture(scope="module")
def one_epoch_run(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "run"
    assert train(tiny_world, out, "--max-epochs", "1") == 0
    return out


def test_a_rejected_resume_leaves_the_run_folder_as_it_was(one_epoch_run, tiny_world, tmp_path, capsys):
    copy = tmp_path / "R2"
    shutil.copytree(one_epoch_run, copy)
    before = tree_bytes(copy)
    # another method and another head: refused, and config.json / logs still describe the run
    assert train(tiny_world, copy, "method=byol", "model.head_layers=2", "--resume", copy / "last.ckpt") == 2
    assert "--resume checkpoint was trained with" in capsys.readouterr().err
    assert tree_bytes(copy) == before


def test_the_metrics_log_grows_across_resumes(one_epoch_run, tiny_world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)
    first = _rows(run)
    per_epoch = read_checkpoint(run / "last.ckpt")["global_step"]
    assert first and max(float(r["step"]) for r in first) < per_epoch
    assert train(tiny_world, run, "--max-epochs", "2", "--resume", run / "last.ckpt") == 0
    rows = _rows(run)
    assert rows[: len(first)] == [{k: r.get(k, "") for k in rows[0]} for r in first]  # epoch-0 rows kept
    assert {r["epoch"] for r in rows if r.get("epoch")} == {"0", "1"}
    steps = [float(r["step"]) for r in rows if r.get("loss_step")]
    assert steps == list(range(read_checkpoint(run / "last.ckpt")["global_step"]))  # each step logged once


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tiny_world, tmp_path):
    out = tmp_path / "run"
    env_path = str(ROOT / "vgssl_core")
    proc = subprocess.Popen([sys.executable, "-m", "vgssl_core", "train", "--data", str(tiny_world), "--out", str(out),
                             "method=simclr", *FAST, "data.queries_per_epoch=null", "--max-epochs", "50"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={"PYTHONPATH": env_path, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
                            # a job started in the background by a non-interactive shell inherits SIGINT
                            # ignored; give the child the disposition a user's terminal gives it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 180
    while not (out / "last.ckpt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (out / "last.ckpt").exists(), "training never reached its first checkpoint"
    first = read_checkpoint(out / "last.ckpt")["global_step"]
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err
    assert read_checkpoint(out / "last.ckpt")["global_step"] >= first


def _rows(run):
    with open(run / "logs" / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))
