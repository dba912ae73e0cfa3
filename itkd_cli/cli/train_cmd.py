"""`itkd train`: train a CenterPoint teacher from a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from itkd_cli.cli.common import STATE, JsonOpt, SetOpt, emit_json, handle_errors, say
from itkd_cli.core.errors import ItkdError
from itkd_cli.recipe.load import load_recipe


@handle_errors
def train_command(
    recipe: str = typer.Option("synth-pillar", "--recipe", "-r", help="Recipe name or path."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default runs/teacher, or the --resume folder)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue a run exactly from its folder (or a checkpoint)."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="Start from these weights only (fresh optimiser and schedule)."),
    overrides: List[str] = SetOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Train the recipe's detector (the teacher); writes last.pth, metrics.jsonl and tb/ in the run folder."""
    from itkd_cli.train.train import train

    if resume is not None and init_from is not None:
        raise ItkdError("--resume and --init-from: pick one (resume continues a run, init-from only loads weights)")
    rec = load_recipe(recipe, overrides)
    if out is None:
        out = (resume if resume.is_dir() else resume.parent) if resume is not None else Path("runs/teacher")
    say(f"training {recipe} -> {out}")
    last = train(rec, out, resume=resume, init_from=init_from, quiet=STATE["quiet"] or json_out)
    if json_out:
        emit_json({"checkpoint": str(last), "out": str(out), "metrics": str(out / "metrics.jsonl")})
    else:
        say(f"[green]done[/]: {last}")


def register(app: typer.Typer) -> None:
    """Add the top-level `train` command."""
    app.command("train")(train_command)
