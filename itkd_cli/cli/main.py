"""`itkd` entry point: one Typer app, one module per command (nothing imports cli)."""

from __future__ import annotations

import importlib
import warnings
from typing import Optional

import typer

from itkd_cli import __version__
from itkd_cli.cli.common import STATE, report_error
from itkd_cli.core.errors import ItkdError
from itkd_cli.core.torchrun import env_int, env_world_size

# spconv/cumm decorate with torch.cuda.amp APIs that torch deprecates: 8 warnings per process, not ours.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"(spconv|cumm)(\.|$)")

app = typer.Typer(
    name="itkd",
    help="Compress LiDAR CenterPoint detectors with itKD (interchange-transfer knowledge distillation).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# (module, sub-command group name or None for a single command registered by the module)
# Each module exposes `app` (a Typer group) or `register(app)` (top-level commands).
COMMAND_MODULES: list[tuple[str, Optional[str]]] = [
    ("itkd_cli.cli.demo_cmd", None),
    ("itkd_cli.cli.compress_cmd", None),
    ("itkd_cli.cli.eval_cmd", None),
    ("itkd_cli.cli.export_cmd", None),
    ("itkd_cli.cli.report_cmd", None),
    ("itkd_cli.cli.train_cmd", None),
    ("itkd_cli.cli.info_cmd", None),
    ("itkd_cli.cli.data_cmd", "data"),
    ("itkd_cli.cli.checkpoint_cmd", "checkpoint"),
    ("itkd_cli.cli.recipe_cmd", "recipe"),
]


# Commands that train, and so can run as N data-parallel processes under torchrun.
MULTI_PROCESS = ("train", "compress")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"itkd {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors and results."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """itkd: teacher checkpoint in, 1/4-width student out, judged by the official metrics."""
    STATE["quiet"] = quiet
    try:
        _torchrun_state(ctx.invoked_subcommand, quiet)
    except ItkdError as exc:  # the callback runs outside the commands' handle_errors
        report_error(exc)
        raise typer.Exit(exc.exit_code) from None


def _torchrun_state(command: Optional[str], quiet: bool) -> None:
    """Under torchrun (WORLD_SIZE > 1): note the rank, let one process speak, refuse non-training commands."""
    if env_world_size() <= 1:
        return
    STATE["rank"] = env_int("RANK", 0)
    STATE["quiet"] = quiet or STATE["rank"] > 0
    if command not in MULTI_PROCESS:
        raise ItkdError(f"itkd {command}: runs in one process; only {' and '.join(MULTI_PROCESS)} run under "
                        "torchrun", hint=f"run `itkd {command} ...` without torchrun")


for module_name, group in COMMAND_MODULES:
    module = importlib.import_module(module_name)
    if group is None:
        module.register(app)
    else:
        app.add_typer(module.app, name=group)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="itkd")


if __name__ == "__main__":
    main()
