"""`itkd recipe ls|show|cp|validate`."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer
from rich.table import Table

from itkd_cli.cli.common import JsonOpt, SetOpt, console, emit_json, handle_errors, result, say
from itkd_cli.core.errors import ItkdError
from itkd_cli.core.io import write_text
from itkd_cli.recipe.load import (
    RecipeError, apply_overrides, builtin_dir, builtin_names, dump_yaml, load_raw, resolve_path, validate,
)

app = typer.Typer(help="List, show, copy and validate recipes.", no_args_is_help=True)


@app.command("ls")
@handle_errors
def ls(json_out: bool = JsonOpt) -> None:
    """List the built-in recipes with their one-line descriptions."""
    rows = []
    for name in builtin_names():
        raw = load_raw(builtin_dir() / f"{name}.yaml")
        rows.append({"name": name, "description": raw.get("description", "")})
    if json_out:
        emit_json({"recipes": rows})
        return
    table = Table("recipe", "description", title=f"built-in recipes ({builtin_dir()})")
    for row in rows:
        table.add_row(row["name"], row["description"])
    console.print(table)


@app.command("show")
@handle_errors
def show(name: str = typer.Argument(..., help="Recipe name or path."), overrides: List[str] = SetOpt,
         json_out: bool = JsonOpt) -> None:
    """Print a recipe fully resolved (after `extends:` and --set overrides)."""
    path = resolve_path(name)
    recipe = validate(apply_overrides(load_raw(path), overrides), str(path), overrides)
    if json_out:
        emit_json({"source": str(path), "recipe": recipe.model_dump(mode="json")})
    else:
        typer.echo(dump_yaml(recipe), nl=False)


@app.command("cp")
@handle_errors
def cp(name: str = typer.Argument(..., help="Built-in recipe name or path."),
       dest: Path = typer.Argument(..., help="Where to write the copy."),
       force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
       json_out: bool = JsonOpt) -> None:
    """Copy a recipe to edit it (the copy keeps its `extends:` line)."""
    src = resolve_path(name)
    if dest.is_dir():
        dest = dest / src.name
    if dest.exists() and not force:
        raise ItkdError(f"{dest}: already exists", hint="pass --force to overwrite")
    load_raw(src)  # the source must resolve before anything is written
    # `extends:` names built-in recipes, which resolve from anywhere, so the text copies as is.
    write_text(dest, src.read_text())
    if json_out:
        emit_json({"recipe": str(src), "wrote": str(dest)})
    result(f"wrote {dest}")


@app.command("validate")
@handle_errors
def validate_cmd(paths: List[str] = typer.Argument(..., help="Recipe files or names."),
                 json_out: bool = JsonOpt) -> None:
    """Validate recipes; every problem is printed as `file: field.path: message`."""
    problems: list[str] = []
    results = []
    for item in paths:
        try:
            path = resolve_path(item)
            validate(load_raw(path), str(path))
            results.append({"recipe": item, "ok": True, "problems": []})
        except RecipeError as exc:
            problems += exc.problems
            results.append({"recipe": item, "ok": False, "problems": exc.problems})
    if json_out:
        emit_json({"ok": not problems, "results": results})
    else:
        for res in results:
            if res["ok"]:
                say(f"[green]ok[/] {res['recipe']}")
    if problems:
        raise RecipeError(problems)
