"""Owned output folders: a run is never silently replaced, mixed with another, or written by two processes.

A command that writes a run folder claims it first:
- a folder already holding a run (any of the command's products) is refused unless the user continues
  it (``--resume``) or replaces it (``--force``: the old run is moved aside whole, never mixed);
- a lock file holding the owner's pid refuses a second concurrent run of any command; a lock whose
  owner is gone (killed, crashed) is stale and taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

from itkd_cli.core.errors import ItkdError

LOCK = ".itkd.lock"


def process_start(pid: int) -> Optional[str]:
    """Start time of process ``pid`` in clock ticks since boot (Linux /proc), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces or parentheses: count fields after its closing ")"
    return stat.rsplit(")", 1)[1].split()[19]


def owner_alive(pid: int, host: Optional[str], start: Optional[str]) -> bool:
    """False only when the process that recorded (pid, host, start) is certainly gone: when in doubt, alive."""
    if host != socket.gethostname():
        return True  # another machine's process on a shared disk: its pid means nothing here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    return start is None or process_start(pid) in (None, start)  # a recycled pid started at another time


def _owner(lock: Path) -> Optional[dict]:
    """The lock's owner record, or None when the lock is stale (owner gone) or unreadable."""
    try:
        owner = json.loads(lock.read_text())
        pid = int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return owner if owner_alive(pid, owner.get("host"), owner.get("proc_start")) else None


def _refuse_if_in_use(folder: Path, name: str = LOCK) -> None:
    owner = _owner(folder / name)
    if owner is not None and owner.get("pid") != os.getpid():
        raise ItkdError(f"{folder}: in use by a running `{owner.get('command', 'itkd')}` "
                        f"(pid {owner['pid']} on {owner.get('host')}, since {owner.get('started')})",
                        hint="wait for it to finish, or pass another --out")


def _take_lock(folder: Path, command: str, name: str = LOCK) -> Path:
    """Create ``folder/name`` exclusively (O_EXCL: of two racing processes exactly one wins)."""
    lock = folder / name
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                         "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "proc_start": process_start(os.getpid())})
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            _refuse_if_in_use(folder, name)
            lock.unlink(missing_ok=True)  # stale: its owner is gone
            continue
        except OSError as exc:
            raise ItkdError(f"{folder}: output folder is not writable ({exc.strerror or exc})",
                            hint="pick another folder with --out") from None
        with os.fdopen(fd, "w") as f:
            f.write(record + "\n")
        return lock
    raise ItkdError(f"{folder}: its lock {lock} keeps coming back", hint="pass another --out")


def _release(lock: Path) -> None:
    owner = _owner(lock)
    if owner is not None and owner.get("pid") == os.getpid():
        lock.unlink(missing_ok=True)


def aside_name(path: Path) -> Path:
    """A free sibling name for a replaced run: DIR.replaced-YYYYmmdd-HHMMSS[-N]."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, n = path.with_name(f"{path.name}.replaced-{stamp}"), 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.replaced-{stamp}-{n}")
    return candidate


def products_in(folder: Path, products: Sequence[str]) -> list[str]:
    """Which of a command's products (file or folder names, relative) ``folder`` already holds."""
    return [p for p in products if (folder / p).exists()] if folder.is_dir() else []


@contextlib.contextmanager
def claim(folder: Path, command: str, products: Sequence[str], *, resume: bool = False, force: bool = False,
          option: str = "--out", can_resume: bool = True, say=None) -> Iterator[Path]:
    """Own ``folder`` for the block: refuse a run already there (unless resume/force) and lock it.

    Args:
        folder: the run folder.
        command: how the owner is named in a refusal (e.g. "itkd train").
        products: names whose presence means the folder holds a run of this command.
        resume: the caller continues the run that is there.
        force: move an existing run aside (DIR.replaced-...) and start afresh.
        option: the flag that named the folder, for messages.
        can_resume: whether the command has --resume (for the hint).
        say: status-line printer (moving a run aside is reported).

    Raises:
        ItkdError: the folder is a file, holds a run and neither resume nor force was given, or another
            process holds its lock.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ItkdError(f"{option} {folder}: is a file, not a folder", hint=f"pass a folder to {option}")
    if resume and force:
        raise ItkdError("--resume and --force: pick one (resume continues the run, force replaces it)")
    _refuse_if_in_use(folder)  # a live owner is the first thing to say: neither resume nor force may touch it
    found = products_in(folder, products)
    if found and not resume:
        if not force:
            keep = "continue it with --resume, " if can_resume else ""
            raise ItkdError(f"{option} {folder}: already holds a run ({', '.join(found)}); nothing was changed",
                            hint=f"{keep}replace it with --force (the old run is moved aside), or pass another {option}")
        aside = aside_name(folder)
        os.replace(folder, aside)
        if say is not None:
            say(f"--force: moved the old run {folder} to {aside}")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ItkdError(f"{option} {folder}: output folder is not writable ({exc.strerror or exc})",
                        hint=f"pick another folder with {option}") from None
    try:
        with locked(folder, command):
            yield folder
    except BaseException:
        if created and not any(folder.iterdir()):  # a run that failed before writing anything leaves no trace
            folder.rmdir()
        raise


@contextlib.contextmanager
def locked(folder: Path, command: str, name: str = LOCK) -> Iterator[Path]:
    """Hold the lock file ``folder/name`` for the block (refused while a live process holds it)."""
    lock = _take_lock(Path(folder), command, name)
    try:
        yield lock
    finally:
        _release(lock)


def claim_file(path: Path, *, force: bool = False, option: str = "--out") -> None:
    """Refuse to overwrite an existing output file unless ``force`` (the write itself stays atomic)."""
    path = Path(path)
    if path.is_dir():
        raise ItkdError(f"{path}: is a folder; {option} takes the path of a file")
    if path.exists() and not force:
        raise ItkdError(f"{path}: already exists; nothing was changed",
                        hint=f"pass --force to replace it, or choose another {option}")
