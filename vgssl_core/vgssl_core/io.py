"""Writing files so that a crash, Ctrl-C or a full disk never leaves a half-written output.

Every output of vgssl goes through :func:`atomic_path`: the bytes go to a hidden temporary file
in the target's folder, are flushed to disk, and replace the target with one ``rename`` only
when complete. A reader therefore sees the old file or the new one, never a mix; on any error
the temporary file is removed and the old file stays as it was.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

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


# Errors of the file system rather than of vgssl: the CLI says them in one line (exit 2).
DISK_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
               errno.EFBIG: "no space left on device (file size limit)", errno.EROFS: "read-only file system",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied"}


def disk_error_message(exc: OSError) -> str | None:
    """``"no space left on device writing PATH"`` for a full / read-only / forbidden disk, else None."""
    reason = DISK_ERRNOS.get(exc.errno or 0)
    if reason is None:
        return None
    return f"{reason} writing {exc.filename}" if exc.filename else reason


def temp_prefix(path: Path) -> str:
    """Hidden name prefix of the temporary files of ``path``: ``.NAME.PID.`` (the pid tells whether
    the writer still lives, so leftovers of a killed writer can be told apart and removed)."""
    return f".{path.name}.{os.getpid()}."


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporary siblings of ``path`` (``.NAME.PID.*``) whose writing process is dead."""
    path = Path(path)
    removed = []
    try:
        siblings = list(path.parent.glob(f".{glob_escape(path.name)}.*"))
    except OSError:
        return removed
    for sibling in siblings:
        rest = sibling.name[len(path.name) + 2:]
        pid_text = rest.split(".", 1)[0]
        if not pid_text.isdigit() or not (".tmp" in rest or ".partial" in rest):
            continue
        pid = int(pid_text)
        if pid == os.getpid() or pid_alive(pid):
            continue  # still being written
        try:
            sibling.unlink()
            removed.append(sibling)
        except OSError:
            pass
    return removed


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a writer whose leftovers must not be removed yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    ``suffix`` keeps writers that insist on an extension (``np.savez`` adds ``.npz``) from
    renaming the temporary file behind our back. A full or read-only disk surfaces as an
    ``OSError`` that names ``path`` (the CLI says it in one line); the temporary file is removed,
    and so are those a killed earlier writer of ``path`` left behind.
    """
    path = Path(path)
    if path.is_dir():
        raise VgsslError(f"{path}: is a folder; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=temp_prefix(path), suffix=f".tmp{suffix}", dir=path.parent)
    except OSError as exc:
        raise _naming(exc, path) from exc
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _naming(exc, path) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    remove_stale_temporaries(path)


def _naming(exc: OSError, path: Path) -> OSError:
    """The same error, naming the output rather than its temporary file (or nothing)."""
    if exc.errno in DISK_ERRNOS:
        return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))
    return exc


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
        np.save(_Stream(fh), array, allow_pickle=False)


class _Stream:
    """A file numpy takes for a plain stream: it then writes in chunks through Python's ``write``,
    so a full disk is an ``OSError`` with its errno (``ndarray.tofile`` drops the errno)."""

    def __init__(self, fh: Any) -> None:
        self.write = fh.write


def torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically (checkpoints)."""
    import io as _io

    import torch

    # serialised in memory, then written by Python: a full disk is an OSError, not an abort in C++
    buffer = _io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getbuffer())


def write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes: how databases and exports name the checkpoint they belong to."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- the guard every command runs on its outputs before any work ------------------------------
OUTPUT_KINDS = ("json", "npz", "png")  # others: the caller says what is ours (``ours=``)


def check_output(path: str | Path, *, inputs: Iterable[str | Path | None] = (), kind: str = "json",
                 ours: Callable[[Path], bool] | None = None) -> Path:
    """Refuse, before any work, an output that would destroy something or could not be written.

    Refused: ``path`` is one of the command's ``inputs`` (or the same file under another name);
    it exists and is not a vgssl output of this ``kind`` (a checkpoint, an image, someone's
    notes); it is a folder; its folder lies under a file or cannot be written. ``ours`` tells a
    file of another ``kind`` (an export, which only its module can recognise) from a foreign one.
    """
    if kind not in OUTPUT_KINDS and ours is None:
        raise ValueError(f"unknown output kind {kind!r}")
    path = Path(path)
    for given in inputs:
        if given is not None and _same_file(path, Path(given)):
            raise VgsslError(f"{path}: is an input of this command; give another output path")
    if path.is_dir():
        raise VgsslError(f"{path}: is a folder; give a file path")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise VgsslError(f"{path}: cannot be written: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise VgsslError(f"{path}: cannot be written: folder {folder} is not writable")
    if path.exists() and not (ours(path) if ours is not None else _is_ours(path, kind)):
        raise VgsslError(f"{path}: exists and is not a vgssl {kind} output; refusing to overwrite it "
                         f"(remove it or give another path)")
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _is_ours(path: Path, kind: str) -> bool:
    """Whether an existing ``path`` is a file vgssl writes as ``kind`` (so replacing it loses nothing foreign)."""
    try:
        if kind == "json":
            return isinstance(json.loads(path.read_text(encoding="utf-8")), (dict, list))
        if kind == "npz":
            with np.load(path, allow_pickle=False) as npz:
                return isinstance(npz, np.lib.npyio.NpzFile)
        if kind == "png":
            with open(path, "rb") as fh:
                return fh.read(8) == b"\x89PNG\r\n\x1a\n"
    except (OSError, ValueError, UnicodeDecodeError, VgsslError, EOFError):
        return False
    except Exception:  # np.load of a foreign zip and the like
        return False
    return False
