"""`itkd demo`: the main job on the embedded default, end to end, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from itkd_cli.cli.common import STATE, JsonOpt, SetOpt, console, emit_json, handle_errors, say


@handle_errors
def demo_command(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Folder for everything the demo writes."),
    preset: str = typer.Option("default", "--preset", help="Synthetic world preset (small | default)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic world."),
    scenes: Optional[int] = typer.Option(None, "--scenes", help="Scenes in the world (default: the preset's)."),
    frames: Optional[int] = typer.Option(None, "--frames", help="Keyframes per scene (default: the preset's)."),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="Student width / teacher width (default: the compress recipe's, 0.25)."),
    teacher_epochs: Optional[int] = typer.Option(None, "--teacher-epochs", help="Teacher epochs (default: the recipe's)."),
    student_epochs: Optional[int] = typer.Option(None, "--student-epochs", help="Student epochs (default: recipe synth-pillar-itkd-1-4's 8, sized with the teacher's 10 for 2 CPU cores)."),
    max_eval_frames: Optional[int] = typer.Option(None, "--max-eval-frames", help="Evaluate only the first N val frames."),
    overrides: List[str] = SetOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Synthetic world -> teacher -> itKD student -> official nuScenes eval -> ONNX; re-run to resume."""
    from itkd_cli.core.run_dir import claim
    from itkd_cli.pipeline.demo import run_demo

    # The demo owns --out (locked against a second demo); re-running it resumes, keyed on each step's inputs.
    with claim(out, "itkd demo", products=(), say=say):
        summary = run_demo(out, preset=preset, seed=seed, scenes=scenes, frames=frames, ratio=ratio,
                           teacher_epochs=teacher_epochs, student_epochs=student_epochs,
                           max_eval_frames=max_eval_frames, extra=tuple(overrides),
                           quiet=STATE["quiet"] or json_out, log=say)
    if json_out:
        emit_json(summary)
        return
    print_summary(summary)


def _num(value, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def print_summary(summary: dict) -> None:
    """Final teacher-vs-student table and the paths of everything written."""
    rows = [("params", "params", "{:,.0f}"), ("MACs (G)", "gmacs", "{:.2f}"),
            ("CPU latency PyTorch (ms)", "torch_ms", "{:.1f}"), ("CPU latency onnxruntime (ms)", "onnxruntime_ms", "{:.1f}"),
            ("mAP", "mAP", "{:.4f}"), ("NDS", "NDS", "{:.4f}")]
    table = Table("", "teacher", "student", title="itkd demo: teacher vs itKD student")
    for label, key, fmt in rows:
        table.add_row(label, _num(summary["teacher"].get(key), fmt), _num(summary["student"].get(key), fmt))
    console.print(table)
    paths = Table("artifact", "path", title=f"written under {summary['out']}")
    for name, path in summary["paths"].items():
        paths.add_row(name, path)
    console.print(paths)
    for note in summary.get("notes", []):
        say(f"note: {note}")
    say(f"total time: {summary['timings_s']['total_s']:.0f} s")


def register(app: typer.Typer) -> None:
    """Add the top-level `demo` command."""
    app.command("demo")(demo_command)
