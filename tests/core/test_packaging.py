"""vgssl_core installed from a wheel (not editable) still finds its presets and runs its commands.

Presets are package data found with ``importlib.resources``; a layout that only works from an
editable checkout (``parents[2] / "config"``) would pass every other test and fail for a user
who ran ``pip install ./vgssl_core``. The wheel is built and installed into a scratch folder
with ``--no-deps`` (the dependencies come from this venv); the checkout is kept off the path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A folder holding vgssl_core as pip installs it from the wheel."""
    root = tmp_path_factory.mktemp("wheel")
    wheels, target = root / "dist", root / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(REPO / "vgssl_core")], check=True, cwd=root, timeout=300)
    (wheel,) = wheels.glob("vgssl_core-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "vgssl_core/presets/demo-simclr.yaml" in names
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target),
                    str(wheel)], check=True, cwd=root, timeout=300)
    return target


def run_installed(target: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(target)}  # before the venv's editable path to the checkout
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_a_wheel_install_finds_its_presets_by_name(installed, tmp_path):
    done = run_installed(installed, (
        "import vgssl_core, pathlib\n"
        "from vgssl_core.training.config import load_config, presets\n"
        "print(pathlib.Path(vgssl_core.__file__).parent)\n"
        "print(load_config('demo-simclr')['name'], len(presets()))\n"), tmp_path)
    assert done.returncode == 0, done.stderr
    where, found = done.stdout.strip().splitlines()
    assert Path(where).is_relative_to(installed)  # the wheel's copy, not the checkout's
    name, count = found.split()
    assert name == "demo-simclr" and int(count) >= 7


def test_a_wheel_install_trains_from_a_preset_name(installed, tiny_world, tmp_path):
    code = ("import sys\nfrom vgssl_core.cli import main\n"
            f"sys.exit(main(['train', '--config', 'demo-simclr', '--data', {str(tiny_world)!r}, '--out', "
            f"{str(tmp_path / 'run')!r}, '--max-steps', '1', 'model.image_size=[32,48]', 'data.batch_size=4', "
            "'data.workers=0', 'trainer.test_split=null', 'trainer.val_split=null', '--quiet']))\n")
    done = run_installed(installed, code, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "last.ckpt").is_file() and "trained demo-simclr" in done.stdout
