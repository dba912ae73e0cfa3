"""`itkd info`: parameters, MACs and CPU latency per stage of a recipe's model (and its student)."""

from __future__ import annotations

from typing import List, Optional

import typer
from rich.table import Table

from itkd_cli.cli.common import JsonOpt, SetOpt, console, emit_json, handle_errors, say
from itkd_cli.core.errors import ItkdError

STAGE_LABELS = {"vfe": "vfe", "backbone_3d": "backbone_3d", "map_to_bev_module": "map_to_bev",
                "backbone_2d": "backbone_2d", "dense_head": "dense_head"}


def _load(recipe: Optional[str], overrides: list[str], checkpoint: Optional[str]):
    """(recipe, model, role): recipe from --recipe, else the one stored in --checkpoint; the model filled from
    the checkpoint if given; role the checkpoint's stored role (a recipe's own model, or a foreign file, is
    the teacher)."""
    from itkd_cli.models import build_model
    from itkd_cli.models.checkpoint import load_into, read_ours
    from itkd_cli.recipe import load_recipe

    if recipe is None and checkpoint is None:
        raise ItkdError("--recipe: give a recipe (or --checkpoint written by itkd)", hint="e.g. itkd info --recipe synth-pillar")
    if recipe is not None:
        rec = load_recipe(recipe, overrides)
    else:
        if overrides:
            raise ItkdError("--set: overrides need --recipe (a checkpoint's architecture is fixed)")
        rec = read_ours(checkpoint)[1]
    model = build_model(rec.model)
    role = "teacher"
    if checkpoint is not None:
        stored = load_into(model, checkpoint).progress.get("role")
        role = stored if stored in ("teacher", "student") else "teacher"
    return rec, model, role


def _ratio(a: float | None, b: float | None) -> str:
    return f"{b / a:.3f}" if a and b is not None else "-"


def _table(result: dict) -> Table:
    t, s, role = result["model"], result.get("student"), result["role"]
    # a --ratio student of a student checkpoint: its columns must not read as the checkpoint's own
    derived = "student" if role == "teacher" or not s else f"{result['student_config']['ratio']:g}x student"
    cols = ["stage", f"{role} params", f"{role} GMACs"] + (
        [f"{derived} params", f"{derived} GMACs", "params S/T", "MACs S/T"] if s else [])
    title = f"{result['recipe']} ({role}) - {t['frame']['points']} points, {t['frame']['voxels']} voxels"
    table = Table(*cols, caption="latency: median CPU forward, batch 1", title=title)
    for stage, label in STAGE_LABELS.items():
        row = [label, f"{t['params'][stage]:,}", f"{t['macs'][stage] / 1e9:.3f}"]
        if s:
            row += [f"{s['params'][stage]:,}", f"{s['macs'][stage] / 1e9:.3f}",
                    _ratio(t["params"][stage], s["params"][stage]), _ratio(t["macs"][stage], s["macs"][stage])]
        table.add_row(*row)
    row = ["total", f"{t['params_total']:,}", f"{t['macs_total'] / 1e9:.3f}"]
    if s:
        row += [f"{s['params_total']:,}", f"{s['macs_total'] / 1e9:.3f}",
                _ratio(t["params_total"], s["params_total"]), _ratio(t["macs_total"], s["macs_total"])]
    table.add_row(*row, style="bold")
    if t["latency_ms"] is not None:
        lat = ["latency ms", f"{t['latency_ms']:.0f}", ""]
        if s:
            lat += [f"{s['latency_ms']:.0f}", "", "", _ratio(t["latency_ms"], s["latency_ms"])]
        table.add_row(*lat)
    return table


def register(app: typer.Typer) -> None:
    """Add the top-level `info` command."""

    @app.command("info")
    @handle_errors
    def info(recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Recipe name or path."),
             overrides: List[str] = SetOpt,
             ratio: Optional[float] = typer.Option(None, "--ratio", help="Also profile the student of this width ratio."),
             policy: Optional[str] = typer.Option(None, "--policy", help="Student width policy: neck | full (default: the recipe's)."),
             checkpoint: Optional[str] = typer.Option(None, "--checkpoint", "-c", help="Checkpoint to read (its recipe if no --recipe)."),
             points: int = typer.Option(120_000, "--points", min=1000, help="Points in the synthetic LiDAR-like frame."),
             repeats: int = typer.Option(3, "--repeats", min=0, help="Timed CPU forwards (median; 0 skips timing)."),
             seed: int = typer.Option(0, "--seed", help="Seed of the synthetic frame."),
             json_out: bool = JsonOpt) -> None:
        """Parameters, MACs (sparse convs from the real index pairs of a frame) and CPU latency per stage."""
        import torch

        from itkd_cli.models import build_model, derive_student
        from itkd_cli.models.complexity import build_frame, profile

        torch.manual_seed(seed)
        rec, model, role = _load(recipe, overrides, checkpoint)
        frame = build_frame(rec.model, points, seed)
        say(f"profiling {role} on {frame.voxels.shape[0]} voxels ({repeats} timed forwards)")
        stats = profile(model, frame, repeats)
        # "model" + "role" name what was profiled whatever it is; "teacher" stays for scripts written before
        # the role was recorded, and is null for a student rather than mislabelling it.
        result = {"recipe": recipe or checkpoint, "checkpoint": checkpoint, "role": role, "model": stats,
                  "teacher": stats if role == "teacher" else None, "student": None}
        if ratio is not None:
            pol = policy or rec.student.policy
            student_cfg = derive_student(rec.model, ratio, pol)
            say(f"profiling student (ratio {ratio:g}, policy {pol})")
            result["student"] = profile(build_model(student_cfg), frame, repeats)
            result["student_config"] = {"ratio": ratio, "policy": pol,
                                        "backbone_2d": student_cfg.backbone_2d.model_dump(mode="json")}
        elif policy is not None:
            raise ItkdError("--policy: only meaningful with --ratio", hint="e.g. --ratio 0.25 --policy full")
        if not json_out or not _quiet():
            console.print(_table(result))
        if json_out:
            emit_json(result)


def _quiet() -> bool:
    from itkd_cli.cli.common import STATE

    return bool(STATE["quiet"])
