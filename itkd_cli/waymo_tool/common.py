"""What every waymo_tool command shares: the user-error exit, atomic writes, the official difficulty rule."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, BinaryIO, Callable, NoReturn

import numpy as np

LEVEL_2_MAX_POINTS = 5  # unlabelled difficulty: LEVEL_2 when the box holds <= 5 lidar points


def fail(msg: str) -> NoReturn:
    """A user error: one `waymo_tool: msg` line on stderr, exit 2 (itkd turns it into an ItkdError)."""
    print(f"waymo_tool: {msg}", file=sys.stderr)
    sys.exit(2)


def write_atomically(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``path.tmp`` and os.replace: readers see the old file or the whole new one.

    Raises:
        OSError: the write failed (the tmp file is removed; ``path`` is untouched).
    """
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except OSError:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def write_json_atomically(path: str, data: Any) -> None:
    """JSON (indent 1) through :func:`write_atomically`."""
    text = json.dumps(data, indent=1).encode()
    write_atomically(path, lambda fh: fh.write(text))


def difficulty(level: np.ndarray, num_points: np.ndarray) -> np.ndarray:
    """Official rule: an annotated level is kept; UNKNOWN (0) becomes LEVEL_2 at <= 5 points, else LEVEL_1."""
    auto = np.where(num_points <= LEVEL_2_MAX_POINTS, 2, 1)
    return np.where(level == 0, auto, level).astype(np.uint8)
