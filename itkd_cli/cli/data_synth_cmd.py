"""`itkd data synth`: write the embedded synthetic LiDAR world as a nuScenes dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from itkd_cli.cli.common import STATE, JsonOpt, console, emit_json, handle_errors, result, say
from itkd_cli.data.synth.presets import PRESETS


def _print_summary(summary: dict) -> None:
    """Human-readable result on stderr."""
    if summary["reused"]:
        say(f"[green]already there[/]: {summary['out']} holds this dataset (same preset, size and seed); reused")
    waymo = summary["version"] == "waymo"
    title = f"{summary['out']} (Waymo segments)" if waymo else f"{summary['out']}/{summary['version']}"
    table = Table(title=title, show_header=False)
    for key in ("preset", "seed", "scenes", "frames", "keyframes", "sweeps", "waymo_frames", "annotations",
                "points_per_keyframe", "points_per_frame", "splits", "unlabeled_scenes", "unlabeled_frames", "seconds"):
        if key in summary:
            table.add_row(key, str(summary[key]))
    result(table)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `itkd data` group."""

    @app.command("synth")
    @handle_errors
    def synth(
        out: Path = typer.Option(..., "--out", help="Dataset root to create (new, empty, or a previous run)."),
        scenes: Optional[int] = typer.Option(None, "--scenes", help="Number of scenes (default: the preset's)."),
        frames: Optional[int] = typer.Option(None, "--frames", help="Keyframes per scene (default: the preset's)."),
        seed: int = typer.Option(0, "--seed", help="Random seed; the same seed writes byte-identical files."),
        preset: str = typer.Option("default", "--preset", help=f"World size: {', '.join(PRESETS)}."),
        layout: str = typer.Option("nuscenes", "--format", help=(
            "nuscenes (13 tables + .pcd.bin, v1.0-synth) or waymo (segment TFRecords in training/ and validation/, "
            "written by the Waymo venv; then `itkd data prepare --dataset waymo`).")),
        unlabeled_scenes: int = typer.Option(0, "--unlabeled-scenes", help=(
            "Extra scenes written without annotations, for distillation on unlabeled frames (dataset.unlabeled): "
            "split synth_unlabeled of splits.json (--format waymo: segments in unlabeled/, converted as split "
            "unlabeled). The other scenes stay byte-identical.")),
        json_out: bool = JsonOpt,
    ) -> None:
        """Render a procedural street with a simulated 32-beam LiDAR into nuScenes format (v1.0-synth) or as Waymo
        segments (--format waymo)."""
        from itkd_cli.data.synth import generate

        columns = (TextColumn("rendering sweeps"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=True, disable=STATE["quiet"]) as progress:
            task = progress.add_task("synth", total=None)
            summary = generate(out, scenes=scenes, frames=frames, seed=seed, preset=preset, layout=layout,
                               progress=lambda done, total: progress.update(task, completed=done, total=total),
                               unlabeled_scenes=unlabeled_scenes)
        for folder in summary["cleared_staging"]:
            say(f"removed {folder}: staging folder of an interrupted run")
        for folder in summary["unknown_staging"]:
            say(f"[yellow]warning:[/] left {folder} alone: named like a staging folder but without our owner "
                "record (delete it if it is yours)")
        if json_out:
            emit_json(summary)
        else:
            _print_summary(summary)
