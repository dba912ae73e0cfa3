"""The one error type for user mistakes (bad recipe, missing file, wrong checkpoint)."""

from __future__ import annotations


class ItkdError(Exception):
    """A user-facing error: the CLI prints it as one line (plus an optional hint) and exits 2.

    Args:
        message: What is wrong, naming the file/field/token concerned.
        hint: Optional next step for the user (a command to run, a flag to set).
        exit_code: Process exit code the CLI uses (2 = user error, 1 = job failure).
    """

    def __init__(self, message: str, hint: str | None = None, exit_code: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class JobFailed(ItkdError):
    """The job ran but its result is not acceptable (e.g. ONNX parity above tolerance): exit 1."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint, exit_code=1)
