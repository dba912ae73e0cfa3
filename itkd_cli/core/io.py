"""Atomic writes: a file is either complete or absent, never half-written."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from itkd_cli.core.errors import ItkdError


class WriteFailed(ItkdError):
    """An output could not be written (disk full, read-only, quota); any previous file there is intact."""

    def __init__(self, path: Path, reason: str) -> None:
        kept = f"the previous {path.name} is intact" if path.is_file() else "nothing was written there"
        super().__init__(f"{path}: cannot write ({reason}); {kept}", hint="free space or pick a writable folder, "
                         "then run the same command again")
        self.path = path


# torch.save reports a failed write (ENOSPC inside its zip writer) as a RuntimeError naming these
_TORCH_WRITE_ERRORS = ("PytorchStreamWriter", "inline_container", "file write failed", "iostream error")


def _reason(exc: BaseException, folder: Path) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    try:  # torch's writer does not keep the errno: tell a full disk by what is left on it
        free = shutil.disk_usage(folder).free
    except OSError:
        return "the file system refused the write"
    return f"the disk is full: {free / 2**20:.1f} MiB free" if free < 2**26 else "the file system refused the write"


def _fsync(path: Path, directory: bool = False) -> None:
    """Flush to the device, so a rename never exposes a file whose data is still only in the page cache."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some file systems refuse fsync on folders; the data itself must be on disk
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; fsync it and rename it onto ``path`` only if the block succeeds.

    Raises:
        WriteFailed: the folder cannot be created or written, or the disk filled up (``path`` untouched).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise WriteFailed(path, _reason(exc, path.parent)) from None
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would have
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        try:
            yield tmp_path
            _fsync(tmp_path)
            os.replace(tmp_path, path)
            _fsync(path.parent, directory=True)
        except OSError as exc:
            raise WriteFailed(path, _reason(exc, path.parent)) from None
        except RuntimeError as exc:
            if not any(mark in str(exc) for mark in _TORCH_WRITE_ERRORS):
                raise
            raise WriteFailed(path, _reason(exc, path.parent)) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and atomically move the result onto ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write a text file."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, data: Any) -> Path:
    """Atomically write JSON (indented, keys in insertion order)."""
    return write_text(path, json.dumps(data, indent=2) + "\n")


def save_torch(path: str | Path, obj: Any) -> Path:
    """Atomically ``torch.save`` an object (checkpoints survive Ctrl-C and full disks)."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (what a cached or reused result was made from)."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
