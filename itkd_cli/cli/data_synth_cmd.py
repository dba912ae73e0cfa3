"""Commands of `itkd data` (filled in by the data work)."""

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `itkd data` group."""
