"""`itkd data synth|prepare|inspect`."""

from __future__ import annotations

import typer

from itkd_cli.cli import data_pipeline_cmd, data_synth_cmd

app = typer.Typer(help="Write the synthetic world, prepare info caches, inspect datasets.", no_args_is_help=True)
data_synth_cmd.register(app)
data_pipeline_cmd.register(app)
