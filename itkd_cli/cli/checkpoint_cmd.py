"""`itkd checkpoint inspect|convert`: look inside teacher checkpoints from the wild, bring them home."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from itkd_cli.cli.common import ForceOpt, JsonOpt, SetOpt, console, emit_json, handle_errors, result, say
from itkd_cli.core.errors import ItkdError
from itkd_cli.core.run_dir import claim_file

app = typer.Typer(help="Inspect and convert checkpoints (OpenPCDet, det3d/CenterPoint, SparseKD, ours).",
                  no_args_is_help=True)

RecipeOpt = typer.Option(None, "--recipe", "-r", help="Recipe (name or path) describing the checkpoint's network.")
LayoutOpt = typer.Option(None, "--spconv-layout", help="Force the spconv weight layout: 2.3, 2.1 or 1.x.")
NonStrictOpt = typer.Option(False, "--non-strict", help="Report missing/unexpected/mismatched keys instead of failing.")


def _file_facts(path: Path, layout: Optional[str]) -> dict:
    """Format, layout, progress and shape-inferred architecture of a checkpoint, without a recipe."""
    from itkd_cli.models.checkpoint import is_ours, progress_of, read_checkpoint
    from itkd_cli.models.convert import convert_state_dict, count_params, describe

    raw = read_checkpoint(path)
    default = "2.3" if is_ours(raw) else None
    try:
        conv = convert_state_dict(raw.state_dict, layout=layout, default_layout=default)
        found = conv.layout
    except ItkdError as exc:
        if "cannot be told" not in exc.message:
            raise
        conv, found = convert_state_dict(raw.state_dict, default_layout="2.3"), "undetermined"
    return {"path": str(path), "format": raw.format, "naming": conv.naming, "spconv_layout": found,
            "progress": progress_of(raw), "num_tensors": len(raw.state_dict),
            "num_params": count_params(conv.state_dict), "architecture": describe(conv.state_dict),
            "stored_recipe": isinstance(raw.meta.get("recipe"), dict)}


def _show(facts: dict) -> None:
    table = Table(show_header=False, title=facts["path"])
    for key in ("format", "naming", "spconv_layout", "num_tensors", "num_params"):
        table.add_row(key, str(facts[key]))
    for key, value in facts["progress"].items():
        table.add_row(key, str(value))
    for key, value in facts["architecture"].items():
        table.add_row(key, str(value))
    if "mapping" in facts:
        m = facts["mapping"]
        table.add_row("recipe fit", "ok" if not m["warnings"] else f"NO ({len(m['warnings'])} kinds of difference)")
        if m["transposed"]:
            table.add_row("transposed", ", ".join(m["transposed"]))
    console.print(table)
    for line in facts.get("mapping", {}).get("warnings", []):
        console.print(f"[yellow]{line}[/]", markup=True, highlight=False)


@app.command("inspect")
@handle_errors
def inspect(path: Path = typer.Argument(..., help="Checkpoint file (.pth/.pt/.tar/.safetensors)."),
            recipe: Optional[str] = RecipeOpt, overrides: List[str] = SetOpt,
            layout: Optional[str] = LayoutOpt, json_out: bool = JsonOpt) -> None:
    """Format, spconv layout, epoch, parameter count and architecture read from the shapes.

    With --recipe, also how the checkpoint maps onto that recipe's model (missing / unexpected /
    shape-mismatched keys).
    """
    from itkd_cli.models.checkpoint import load_teacher
    from itkd_cli.recipe import load_recipe

    facts = _file_facts(path, layout)
    if recipe is not None:
        _, report = load_teacher(path, load_recipe(recipe, overrides), strict=False, layout=layout)
        facts["mapping"] = {k: v for k, v in report.to_dict().items()
                            if k in ("missing", "unexpected", "mismatched", "transposed", "added", "warnings")}
        facts["mapping"]["ok"] = not report.warnings
    if json_out:
        emit_json(facts)
    else:
        _show(facts)


@app.command("convert")
@handle_errors
def convert(path: Path = typer.Argument(..., help="Checkpoint file in any supported format."),
            recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe of the checkpoint's network."),
            out: Path = typer.Option(..., "--out", "-o", help="Where to write the converted checkpoint."),
            overrides: List[str] = SetOpt, layout: Optional[str] = LayoutOpt,
            safetensors: bool = typer.Option(False, "--safetensors", help="Write .safetensors instead of .pth."),
            role: str = typer.Option("teacher", "--role", help="teacher or student."),
            force: bool = ForceOpt,
            non_strict: bool = NonStrictOpt, json_out: bool = JsonOpt) -> None:
    """Convert to our format (OpenPCDet names, spconv 2.3 layout, recipe stored), written atomically."""
    from itkd_cli.models.build import build_model
    from itkd_cli.models.checkpoint import load_into, save_checkpoint, save_safetensors
    from itkd_cli.recipe import load_recipe

    if role not in ("teacher", "student"):
        raise ItkdError(f"--role: {role!r} is not teacher or student")
    claim_file(out, force=force)  # before any work: an existing file is never silently replaced
    rec = load_recipe(recipe, overrides)
    model = build_model(rec.model)
    report = load_into(model, path, strict=not non_strict, layout=layout)
    epoch = int(report.progress.get("epoch", 0) or 0)
    if safetensors:
        meta = {"format": "itkd", "role": role, "recipe": rec.model_dump(mode="json"), "epoch": epoch,
                "spconv_layout": "2.3", "source": str(path)}
        save_safetensors(out, model.state_dict(), meta)
    else:
        save_checkpoint(out, model, rec, role, epoch=epoch, metrics=None)
    for line in report.warnings:
        say(f"[yellow]warning:[/] {line}")
    result(f"wrote {out} ({report.format}, {report.naming} names, "
           f"{f'spconv {report.layout} -> 2.3' if report.layout else 'no sparse convs'}, {_params_line(report)})")
    if json_out:
        emit_json({"out": str(out), **report.to_dict()})


def _params_line(report) -> str:
    """Parameter counts of what was written: the file's own, how many of them the network took, how many of
    the network's stayed at init (non-strict against another architecture loads only part of it)."""
    if report.loaded_params == report.num_params == report.model_params:
        return f"{report.num_params:,} parameters"
    return (f"the file holds {report.num_params:,} parameters, {report.loaded_params:,} of them loaded into the "
            f"recipe's network of {report.model_params:,}; {report.model_params - report.loaded_params:,} "
            "stayed at init")
