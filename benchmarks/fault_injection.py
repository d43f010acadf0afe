"""Kill -9 vgssl commands at random moments and check what they leave behind.

For each of train (resumed onto a finished run), build-db, synth, eval --json and export, N runs
start the command over an earlier good output, SIGKILL it after a random delay (up to the time a
full run took), and then check the output with the loader every consumer uses:

- ``invalid_loaded``: it loads but is not what it claims (must be 0);
- ``good_lost``: the earlier good output no longer loads and nothing valid replaced it;
- ``refused``: it does not load, with a one-line ``VgsslError`` (a partial synthetic world);
- ``valid``: it loads (the old output or the new one).

    PYTHONPATH=vgssl_core python benchmarks/fault_injection.py --n 5 --out /tmp/faults
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--quiet", "method=simclr", "data.batch_size=6", "data.workers=0", "model.image_size=[64,96]",
        "model.head_layers=1", "model.head_dim=64", "trainer.val_split=null", "trainer.test_split=null",
        "data.queries_per_epoch=12"]


def vgssl(*args: object, kill_after: float | None = None) -> int | None:
    """Run ``vgssl ARGS``; with ``kill_after`` SIGKILL it then (None: it finished first -> its rc)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "vgssl_core"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vgssl_core", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if kill_after is None:
        return proc.wait()
    try:
        return proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None


def check(kind: str, path: Path, before: object) -> str:
    """One of valid / refused / invalid_loaded / good_lost for the output at ``path``."""
    from vgssl_core.errors import VgsslError

    try:
        if kind == "train":
            from vgssl_core.models.loading import load_descriptor_model

            load_descriptor_model(path / "last.ckpt")
            json.loads((path / "config.json").read_text())
        elif kind == "build-db":
            from vgssl_core.localization.database import MapDatabase

            db = MapDatabase.load(path)
            if len(db) == 0 or len(db) != before:
                return "invalid_loaded"
        elif kind == "synth":
            from vgssl_core.data.dataset import load_split

            for split in ("train", "val", "test"):
                load_split(path, split)
            if not (path / "world.json").is_file():
                return "invalid_loaded"
        elif kind == "eval":
            if "recall" not in json.loads(path.read_text()):
                return "invalid_loaded"
        elif kind == "export":
            from vgssl_core.models.export import load_exported

            load_exported(path)
    except VgsslError:
        return "refused" if kind == "synth" else "good_lost"
    except (OSError, ValueError):
        return "good_lost"
    return "valid"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3, help="kills per command (default 3)")
    parser.add_argument("--out", type=Path, default=Path("runs/fault_injection"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--commands", default="train,build-db,synth,eval,export")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    world, run = out / "world", out / "run"
    timings: dict[str, float] = {}

    def timed(name: str, *cmd: object) -> None:
        start = time.perf_counter()
        assert vgssl(*cmd) == 0, f"setup {name} failed"
        timings[name] = time.perf_counter() - start

    timed("synth", "synth", "--out", world, "--preset", "tiny", "--quiet")
    timed("train", "train", "--data", world, "--out", run, *FAST, "--max-epochs", "1")
    timed("build-db", "build-db", "--data", world, "--ckpt", run / "last.ckpt", "--out", out / "db", "--quiet")
    timed("eval", "eval", "--data", world, "--split", "val", "--ckpt", run / "last.ckpt", "--json", out / "e.json",
          "--quiet")
    timed("export", "export", "--ckpt", run / "last.ckpt", "--format", "torchscript", "--out", out / "m.pt")
    from vgssl_core.localization.database import MapDatabase

    n_db = len(MapDatabase.load(out / "db"))
    commands = {
        "train": (lambda t: ["train", "--data", world, "--out", t, *FAST, "--max-epochs", "3", "--resume",
                             t / "last.ckpt"], run, None),
        "build-db": (lambda t: ["build-db", "--data", world, "--ckpt", run / "last.ckpt", "--out", t, "--quiet"],
                     out / "db", n_db),
        "synth": (lambda t: ["synth", "--out", t, "--preset", "tiny", "--quiet"], world, None),
        "eval": (lambda t: ["eval", "--data", world, "--split", "val", "--ckpt", run / "last.ckpt", "--json", t,
                            "--quiet"], out / "e.json", None),
        "export": (lambda t: ["export", "--ckpt", run / "last.ckpt", "--format", "torchscript", "--out", t],
                   out / "m.pt", None),
    }
    results: dict[str, Counter] = {}
    for name in args.commands.split(","):
        make, good, before = commands[name]
        counts: Counter = Counter()
        for i in range(args.n):
            target = out / "trials" / f"{name}{i}" / good.name
            target.parent.mkdir(parents=True)
            (shutil.copytree if good.is_dir() else shutil.copy2)(good, target)
            if name == "export":
                shutil.copy2(good.with_name(good.name + ".json"), target.with_name(target.name + ".json"))
            rc = vgssl(*make(target), kill_after=rng.uniform(0.1, 0.7) * timings[name])
            counts["killed" if rc is None else f"finished_rc{rc}"] += 1
            counts[check(name, target, before)] += 1
            shutil.rmtree(target.parent, ignore_errors=True)
        results[name] = counts
        print(f"{name:9s} {dict(sorted(counts.items()))}", flush=True)
    bad = sum(c["invalid_loaded"] for c in results.values())
    lost = sum(c["good_lost"] for c in results.values())
    print(f"setup seconds: { {k: round(v, 1) for k, v in timings.items()} }")
    print(f"invalid outputs loaded: {bad}; earlier good outputs lost: {lost}")
    return 1 if bad or lost else 0


if __name__ == "__main__":
    sys.exit(main())
