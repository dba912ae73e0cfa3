"""The one error type for user mistakes (bad recipe, missing file, wrong checkpoint)."""

from __future__ import annotations

# A DataLoader worker's exception reaches the main process as its type plus the worker's formatted traceback
# (torch re-raises ``type(text)``): the hint travels in the message behind this mark, and the main process
# takes the original message and hint back out of that text.
WORKER_HINT = " <<hint>> "
WORKER_TRACEBACK = "Original Traceback (most recent call last):"


class ItkdError(Exception):
    """A user-facing error: the CLI prints it as one line (plus an optional hint) and exits 2.

    Args:
        message: What is wrong, naming the file/field/token concerned.
        hint: Optional next step for the user (a command to run, a flag to set).
        exit_code: Process exit code the CLI uses (2 = user error, 1 = job failure).
    """

    def __init__(self, message: str, hint: str | None = None, exit_code: int = 2) -> None:
        if WORKER_TRACEBACK in message:  # re-raised from a DataLoader worker: keep the user's message only
            message, hint = _from_worker(message, hint)
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


    def for_worker(self) -> "ItkdError":
        """The same error with the hint inside the message, to cross a DataLoader worker's process boundary."""
        return type(self)(self.message + (WORKER_HINT + self.hint if self.hint else ""))


def _from_worker(text: str, hint: str | None) -> tuple[str, str | None]:
    """(message, hint) of an ItkdError from the traceback text a DataLoader worker sent."""
    last = text.rstrip().splitlines()[-1]
    for name in ("JobFailed: ", "ItkdError: "):
        if name in last:
            last = last.split(name, 1)[1]
            break
    message, _, worker_hint = last.partition(WORKER_HINT)
    return message, worker_hint or hint


class JobFailed(ItkdError):
    """The job ran but its result is not acceptable (e.g. ONNX parity above tolerance): exit 1."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint, exit_code=1)
