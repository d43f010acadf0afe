"""Helpers of the fault tests: a fast tiny training run and subprocess CLI runs with limits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from testkit import run_cli

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--quiet", "data.batch_size=6", "data.workers=0", "model.image_size=[64,96]", "model.head_layers=1",
        "model.head_dim=64", "trainer.val_split=null", "trainer.test_split=null", "data.queries_per_epoch=12"]


def train(world, out, *extra) -> int:
    """SimCLR on the tiny world, 2 steps per epoch, no validation or test."""
    return run_cli("train", "--data", world, "--out", out, "method=simclr", *FAST, *extra)


def cli_subprocess(*args, fsize: int | None = None, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    """``vgssl ARGS`` in a child process; ``fsize`` caps the bytes any file may grow to (a full disk:
    with SIGXFSZ ignored, a write past it fails with EFBIG)."""
    code = ["import resource, signal, sys"]
    if fsize is not None:
        code.append("signal.signal(signal.SIGXFSZ, signal.SIG_IGN)")
        code.append(f"resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize}, {fsize}))")
    code.append("from vgssl_core.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "vgssl_core"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", "\n".join(code), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path -> its bytes (to show nothing changed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
