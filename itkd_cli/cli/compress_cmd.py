"""`itkd compress`: derive a narrower student from a teacher checkpoint and distil it."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from itkd_cli.cli.common import (
    STATE, ForceOpt, JsonOpt, SetOpt, emit_json, gate_option, handle_errors, owned, result as show_result, say,
)
from itkd_cli.core.errors import ItkdError
from itkd_cli.core.io import WriteFailed
from itkd_cli.pipeline import gates as gating
from itkd_cli.recipe.load import apply_flags, compress_flags, load_recipe
from itkd_cli.recipe.schema import GatesConfig

METHODS = "itkd | none | hinton | fitnet | sparsekd"
RUN_PRODUCTS = ("train", "student.pth", "report.json")  # a compress run folder holds any of these


@handle_errors
def compress_command(
    teacher: Path = typer.Option(..., "--teacher", "-t", help="Teacher checkpoint (itkd, OpenPCDet, det3d, SparseKD, bare, .safetensors)."),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="Student width / teacher width, in (0, 1] (default: recipe student.ratio)."),
    policy: Optional[str] = typer.Option(None, "--policy", help="neck (scale the 2D neck, itKD paper) | full (also 3D backbone and head)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Recipe: the teacher's, or a compress recipe such as cp-pillar-waymo-itkd-1-4 (`itkd recipe ls`); default: the one stored in an itkd teacher checkpoint."),
    method: Optional[str] = typer.Option(None, "--method", "-m", help=f"Distillation method: {METHODS}."),
    out: Path = typer.Option(Path("runs/compress"), "--out", "-o", help="Run folder."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    force: bool = ForceOpt,
    max_eval_frames: Optional[int] = typer.Option(None, "--max-eval-frames", help="Evaluate only the first N val frames."),
    min_map: Optional[float] = gate_option("min_map"),
    min_nds: Optional[float] = gate_option("min_nds"),
    min_maph: Optional[float] = gate_option("min_maph"),
    max_drop: Optional[float] = gate_option("max_drop"),
    min_speedup: Optional[float] = gate_option("min_speedup"),
    max_params: Optional[int] = gate_option("max_params"),
    overrides: List[str] = SetOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Distil a student from --teacher; writes student.pth, report.json/md/html and its PNGs to --out.

    A failed gate (--min-map ... or the recipe's gates:) exits 1 once everything is written.
    Several GPUs: torchrun --nproc_per_node=N -m itkd_cli ... (train.batch_size is per process).
    """
    if not teacher.is_file():
        raise ItkdError(f"--teacher: {teacher}: no such file", hint="train one with `itkd train` or point to a checkpoint")
    # Bad flags or a bad --recipe are answered before torch loads (the teacher's own recipe needs torch to read).
    flags = compress_flags(ratio, policy, method)
    gates = gating.from_flags(min_map=min_map, min_nds=min_nds, min_maph=min_maph, max_drop=max_drop,
                              min_speedup=min_speedup, max_params=max_params)
    if recipe is not None:  # else the teacher's stored recipe names the dataset: compress() checks them there
        named = apply_flags(load_recipe(recipe, overrides), flags)
        gating.check_applicable(gates, "compress", named.dataset.kind)
        gating.check_applicable(named.gates, "compress", named.dataset.kind, source="recipe")
    from itkd_cli.pipeline.compress import compress, compress_recipe

    again = resume_command(teacher, out, recipe, ratio, policy, method, max_eval_frames, overrides, gates)
    try:  # the folder is claimed before the teacher is read: a refused --out costs nothing
        with owned(out, "itkd compress", RUN_PRODUCTS, resume=resume, force=force):
            rec = compress_recipe(teacher, recipe, overrides, ratio, policy, method, gates)
            result = compress(rec, teacher, out, resume=resume, quiet=STATE["quiet"] or json_out,
                              max_eval_frames=max_eval_frames, log=say)
    except WriteFailed as exc:
        if (out / "train" / "last.pth").is_file():
            exc.hint = f"free space in {out}, then continue from its last complete checkpoint: {again}"
        raise
    except KeyboardInterrupt:
        if (out / "train" / "last.pth").is_file():
            say(f"stopped: {out / 'train' / 'last.pth'} holds the last completed step; continue with "
                f"`{again}`")
        raise
    if result is None:  # a torchrun process other than rank 0: rank 0 reports
        return
    html = result.report_md.with_suffix(".html")
    if json_out:
        emit_json(result.report | {"report_md": str(result.report_md), "report_json": str(result.report_json),
                                   "report_html": str(html)})
    else:
        print_comparison(result.report)
        for note in result.report.get("notes", []):
            say(f"note: {note}")
        show_result(f"student: {result.student_checkpoint}\nreport:  {result.report_md} ({html.name})\n"
                    f"curves:  {result.curves}\n{gating.summary(list(result.gates))}")
    gating.raise_if_failed(list(result.gates), result.report_json)  # after the result: nothing is lost


def resume_command(teacher: Path, out: Path, recipe: Optional[str], ratio: Optional[float], policy: Optional[str],
                   method: Optional[str], max_eval_frames: Optional[int], overrides: List[str],
                   gates: Optional[GatesConfig] = None) -> str:
    """The command that continues this run: compress rebuilds its run from the same flags, plus --resume."""
    args = ["itkd", "compress", "--teacher", str(teacher), "--out", str(out)]
    for flag, value in (("--recipe", recipe), ("--ratio", ratio), ("--policy", policy), ("--method", method),
                        ("--max-eval-frames", max_eval_frames)):
        args += [flag, str(value)] if value is not None else []
    for name, value in (gating.active(gates) if gates is not None else {}).items():
        args += [gating.FLAGS[name], str(value)]
    for item in overrides:
        args += ["--set", item]
    return shlex.join([*args, "--resume"])


def print_comparison(report: dict) -> None:
    """Teacher-vs-student table on stderr."""
    from itkd_cli.pipeline.report import comparison_rows

    table = Table("", "teacher", "student", "student / teacher",
                  title=f"{report['method']} student, ratio {report['ratio']} ({report['policy']})")
    for row in comparison_rows(report["teacher"], report["student"]):
        table.add_row(*row)
    show_result(table)


def register(app: typer.Typer) -> None:
    """Add the top-level `compress` command."""
    app.command("compress")(compress_command)
