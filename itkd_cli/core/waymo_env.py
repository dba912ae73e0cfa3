"""The Waymo venv and the worker that runs in it (`itkd_cli/waymo_tool/tool.py`).

waymo-open-dataset cannot share itkd's environment (it pins tensorflow and typing_extensions 4.5, which
break torch and pydantic): every Waymo step (reading TFRecords, writing them, the official metrics) runs
`tool.py` in that venv as a separate process. Imports nothing of ours but core.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable, Optional, Union

from itkd_cli.core.errors import ItkdError

TOOL = Path(__file__).resolve().parents[1] / "waymo_tool" / "tool.py"
PYTHON_ENV = "ITKD_WAYMO_PYTHON"
ERROR_PREFIX = "waymo_tool: "


def waymo_python() -> Path:
    """The Waymo venv's interpreter: $ITKD_WAYMO_PYTHON, else .venv-waymo/ beside the itkd checkout."""
    found = os.environ.get(PYTHON_ENV)
    path = Path(found) if found else Path(__file__).resolve().parents[2] / ".venv-waymo" / "bin" / "python"
    if not path.is_file():
        raise ItkdError(f"Waymo tools: no Waymo environment at {path} (waymo-open-dataset cannot share itkd's venv)",
                        hint=f"run `make waymo-env` in the itkd checkout, or set {PYTHON_ENV} to its python")
    return path


def _error(returncode: int, stderr: str) -> ItkdError:
    """The worker's own `waymo_tool: ...` line as a user error (exit 2); anything else is a crash (exit 1)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    mine = [ln for ln in lines if ln.startswith(ERROR_PREFIX)]
    msg = mine[-1][len(ERROR_PREFIX):] if mine else (lines[-1] if lines else f"exit status {returncode}")
    return ItkdError(f"Waymo tool: {msg}", exit_code=2 if mine else 1)


def run_tool(*args: Union[str, Path], on_line: Optional[Callable[[str], None]] = None) -> None:
    """Run one tool.py command in the Waymo venv; its own error line becomes an ItkdError.

    Args:
        args: the command and its arguments.
        on_line: called with each line the worker prints on stdout, as it prints it (progress).
    """
    cmd = [str(waymo_python()), str(TOOL), *map(str, args)]
    if on_line is None:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise _error(proc.returncode, proc.stderr)
        return
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        for line in proc.stdout:
            on_line(line.rstrip("\n"))
        stderr = proc.stderr.read()
    if proc.returncode != 0:
        raise _error(proc.returncode, stderr)
