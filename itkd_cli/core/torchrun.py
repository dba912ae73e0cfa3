"""What torchrun tells a process through its environment (no torch import: the CLI reads it at start-up)."""

from __future__ import annotations

import os

from itkd_cli.core.errors import ItkdError


def env_int(name: str, default: int) -> int:
    """An integer torchrun variable (WORLD_SIZE, RANK, LOCAL_RANK); ``default`` when unset.

    Raises:
        ItkdError: the variable is set but not a number.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ItkdError(f"{name}: {raw!r} is not a number (set by torchrun)") from None


def env_world_size() -> int:
    """Processes torchrun started (1 without torchrun)."""
    return env_int("WORLD_SIZE", 1)
