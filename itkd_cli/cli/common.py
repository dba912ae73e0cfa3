"""What every command shares: console on stderr, --json on stdout, user errors as one line."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping, Sequence, TypeVar

import typer
from rich.console import Console

from itkd_cli.core.errors import ItkdError

F = TypeVar("F", bound=Callable[..., Any])

# Progress, tables and messages go to stderr so that stdout stays clean for --json.
console = Console(stderr=True)
STATE = {"quiet": False, "rank": 0, "emitted": False}  # rank: this process under torchrun (0 alone)

JsonOpt = typer.Option(False, "--json", help="Print the result as JSON on stdout.")
SetOpt = typer.Option([], "--set", help="Override a recipe field: key.path=value (repeatable).")
ForceOpt = typer.Option(False, "--force", help="Replace what --out already holds (an old run folder is moved aside, never mixed).")

# Version of every --json object (error objects too): a CI job can tell a format it was not written for.
# Raise it when a field is removed or changes meaning; a new field keeps it.
SCHEMA_VERSION = 1


def gate_option(name: str, recipe: bool = True) -> Any:
    """The Typer option of one quality gate (``min_map`` -> ``--min-map``), its help the recipe field's."""
    from itkd_cli.recipe.schema import GatesConfig

    extra = " Overrides the recipe's gates." if recipe else ""
    return typer.Option(None, "--" + name.replace("_", "-"), show_default=False,
                        help=GatesConfig.model_fields[name].description + extra)


def owned(folder: Path, command: str, products: Sequence[str], *, resume: bool = False, force: bool = False,
          can_resume: bool = True) -> ContextManager:
    """Claim a run folder for the command (core.run_dir.claim); under torchrun only rank 0 claims it."""
    from itkd_cli.core.run_dir import claim

    if STATE["rank"] > 0:
        return contextlib.nullcontext(folder)
    return claim(folder, command, products, resume=resume, force=force, can_resume=can_resume, say=say)


def say(message: str) -> None:
    """Print a status line on stderr unless --quiet."""
    if not STATE["quiet"]:
        console.print(message)


def result(message: Any) -> None:
    """Print a result (what a command produced: a table, where it wrote) on stderr, --quiet or not."""
    if STATE["rank"] == 0:
        console.print(message)


def emit_json(data: Mapping[str, Any]) -> None:
    """Write machine-readable output on stdout: one object, ``schema_version`` first."""
    if not isinstance(data, Mapping):
        raise TypeError(f"--json output must be an object, got {type(data).__name__}")
    sys.stdout.write(json.dumps({"schema_version": SCHEMA_VERSION, **data}, indent=2, default=str) + "\n")
    sys.stdout.flush()
    STATE["emitted"] = True


def report_error(exc: ItkdError) -> None:
    """Render a user error: every line of the message, then the hint, on stderr."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    for line in str(exc).splitlines() or [type(exc).__name__]:
        err.print(f"[bold red]error:[/] {line}", markup=True)
    if exc.hint:
        err.print(f"[dim]hint: {exc.hint}[/]")


def handle_errors(func: F) -> F:
    """Turn ItkdError into a one-line message + exit code; Ctrl-C into exit 130. Under ``--json`` the error is
    also a JSON object ``{error, hint, exit_code}`` on stdout, unless the command already wrote its result there."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        STATE["emitted"] = False
        try:
            return func(*args, **kwargs)
        except ItkdError as exc:
            report_error(exc)
            if kwargs.get("json_out") and not STATE["emitted"]:
                emit_json({"error": str(exc), "hint": exc.hint, "exit_code": exc.exit_code})
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
