"""Writing files so that a crash, Ctrl-C or a full disk never leaves a half-written output.

Every output of vgssl goes through :func:`atomic_path`: the bytes go to a hidden temporary file
in the target's folder, are flushed to disk, and replace the target with one ``rename`` only
when complete. A reader therefore sees the old file or the new one, never a mix; on any error
the temporary file is removed and the old file stays as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from vgssl_core.errors import VgsslError


def fsync_dir(folder: str | Path) -> None:
    """Make a rename inside ``folder`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    ``suffix`` keeps writers that insist on an extension (``np.savez`` adds ``.npz``) from
    renaming the temporary file behind our back.
    """
    path = Path(path)
    if path.is_dir():
        raise VgsslError(f"{path}: is a folder; give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, payload: Any) -> None:
    """``payload`` as indented JSON, atomically."""
    write_text(path, json.dumps(payload, indent=2) + "\n")


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Arrays as an uncompressed ``.npz`` (no pickle: object arrays are refused), atomically."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()}, allow_pickle=False)


def save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically (checkpoints)."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes: how databases and exports name the checkpoint they belong to."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
