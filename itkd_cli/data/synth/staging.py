"""Staging folders of `generate()`: made beside `out`, owned by a pid, cleared when their owner is gone.

A run killed with SIGKILL cannot clean up after itself, so its staging folder (about 90 MB for the
default preset) stays behind. Each staging folder carries a record of its owner (pid, host, process
start time, target); the next run for the same `out` removes those whose owner no longer runs. A
folder without that record is never removed: it may not be ours.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

from itkd_cli.core.run_dir import owner_alive, process_start

STAGING = ".itkd-synth-staging.json"


def prefix(out: Path) -> str:
    """Name prefix of the staging folders of `out` (hidden, beside it)."""
    return f".{out.name}.synth-"


def _owner_alive(record: dict) -> bool:
    """True unless the recorded owner is certainly gone (when in doubt, the folder is left alone)."""
    pid = record.get("pid")
    return not isinstance(pid, int) or owner_alive(pid, record.get("host"), record.get("started"))


def make(out: Path, args: dict) -> Path:
    """Create a staging folder for `out` with normal permissions and its owner record.

    Raises:
        OSError: the parent folder cannot be written.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix(out), dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the dataset gets normal permissions
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": process_start(os.getpid()),
                  "out": str(out.resolve()), "args": args}
        (tmp / STAGING).write_text(json.dumps(record) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a folder without its record could never be cleared
        raise
    return tmp


def clear_leftovers(out: Path) -> tuple[list[str], list[str]]:
    """Remove the staging folders of `out` left by runs that were killed.

    Returns:
        (removed folders, folders left alone: staging-like names without our owner record), as strings.
        Folders of runs still going are neither.
    """
    removed: list[str] = []
    unknown: list[str] = []
    if not out.parent.is_dir():
        return removed, unknown
    target = str(out.resolve())
    for folder in sorted(out.parent.glob(prefix(out) + "*")):
        if not folder.is_dir() or folder.is_symlink():
            continue
        try:
            record = json.loads((folder / STAGING).read_text())
        except (OSError, ValueError):
            unknown.append(str(folder))
            continue
        if not isinstance(record, dict) or record.get("out") != target:
            unknown.append(str(folder))
        elif not _owner_alive(record):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
    return removed, unknown


def finish(tmp: Path, out: Path) -> None:
    """Rename the finished staging folder onto `out` (absent or empty: atomic) and drop the owner record."""
    os.replace(tmp, out)
    (out / STAGING).unlink(missing_ok=True)
