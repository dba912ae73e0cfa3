"""Run logs: metrics.jsonl (one JSON object a line), TensorBoard scalars, and a rich progress bar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)

from itkd_cli.core.io import WriteFailed, write_text

METRICS = "metrics.jsonl"


def _step_of(line: str, unreadable: int) -> int:
    """The step of a metrics.jsonl line; ``unreadable`` for a blank or cut line (a write killed half-way)."""
    try:
        record = json.loads(line)
    except ValueError:
        return unreadable
    return record.get("step", 0) if isinstance(record, dict) else unreadable


class MetricsLogger:
    """Appends metric records to ``out_dir/metrics.jsonl`` and mirrors scalars to ``out_dir/tb``.

    Args:
        out_dir: run folder.
        resume_step: when resuming, records logged after this step (by the interrupted run) are
            dropped so that the file reads like one uninterrupted run.
    """

    def __init__(self, out_dir: Path, resume_step: Optional[int] = None) -> None:
        self.path = Path(out_dir) / METRICS
        self.tb_dir = Path(out_dir) / "tb"
        self._writer: Any = None
        self._file: Any = None
        if resume_step is not None and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines() if _step_of(line, resume_step + 1) <= resume_step]
            write_text(self.path, "".join(f"{line}\n" for line in kept))
        elif resume_step is None and self.path.is_file():
            self.path.unlink()  # a fresh run in an old folder starts a fresh log

    def __enter__(self) -> "MetricsLogger":
        from torch.utils.tensorboard import SummaryWriter  # slow import, only when training

        self._file = self.path.open("a")
        self._writer = SummaryWriter(log_dir=str(self.tb_dir))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._file is not None:
            self._file.close()
        if self._writer is not None:
            self._writer.close()

    def _write(self, record: dict) -> None:
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as exc:  # disk full / quota: the checkpoints, not this log, decide what is kept
            raise WriteFailed(self.path, exc.strerror or str(exc)) from None

    def log_step(self, step: int, epoch: int, lr: float, logs: dict[str, float], sec_per_step: float) -> None:
        """Record training scalars at an optimiser step."""
        self._write({"step": step, "epoch": epoch, "lr": lr, **logs, "sec_per_step": sec_per_step})
        self._writer.add_scalar("train/lr", lr, step)
        self._writer.add_scalar("train/sec_per_step", sec_per_step, step)
        for name, value in logs.items():
            self._writer.add_scalar(f"train/{name}", value, step)

    def log_eval(self, step: int, epoch: int, metrics: dict[str, Any]) -> None:
        """Record evaluation metrics (numbers also go to TensorBoard as eval/<name>)."""
        self._write({"step": step, "epoch": epoch, "eval": metrics})
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(f"eval/{name}", value, step)


class NullLogger:
    """MetricsLogger's interface, writing nothing: the logger of every process but rank 0 under torchrun."""

    def __enter__(self) -> "NullLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def log_step(self, step: int, epoch: int, lr: float, logs: dict[str, float], sec_per_step: float) -> None:
        pass

    def log_eval(self, step: int, epoch: int, metrics: dict[str, Any]) -> None:
        pass


class TrainProgress:
    """A rich progress bar on stderr with the running loss and the ETA (nothing when quiet)."""

    def __init__(self, total: int, completed: int, quiet: bool) -> None:
        self._progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("eta"),
            TimeRemainingColumn(), console=Console(stderr=True), disable=quiet, transient=False)
        self._task = self._progress.add_task("train", total=total, completed=completed, loss="-")

    def __enter__(self) -> "TrainProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()

    def advance(self, loss: float) -> None:
        """One step done."""
        self._progress.update(self._task, advance=1, loss=f"{loss:.4f}")
