"""`itkd eval`: run a checkpoint over a split and score it with the official nuScenes devkit."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from itkd_cli.cli.common import STATE, JsonOpt, console, emit_json, handle_errors, say
from itkd_cli.core.errors import ItkdError

DATASETS = ("nuscenes", "waymo")


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ItkdError(f"--device {name}: CUDA is not available on this machine", hint="use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ItkdError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    return torch.device(name)


def _with_dataset(recipe, data_root: Optional[str], version: Optional[str]):
    """The checkpoint's recipe with --data-root/--version replacing the stored dataset fields."""
    from itkd_cli.recipe import recipe_from_dict

    data = recipe.model_dump(mode="json")
    if data_root is not None:
        data["dataset"]["root"] = data_root
    if version is not None:
        data["dataset"]["version"] = version
    return recipe_from_dict(data, source="checkpoint recipe + --data-root/--version")


def _run(checkpoint: Path, data_root: Optional[str], version: Optional[str], split: Optional[str], out: Optional[Path],
         max_frames: Optional[int], device: str, curves: bool) -> tuple[dict, Path]:
    from itkd_cli.evaluate.run import evaluate_nuscenes, load_model

    model, stored = load_model(checkpoint)
    recipe = _with_dataset(stored, data_root, version)
    out = out or checkpoint.parent / f"eval_{checkpoint.stem}"
    model.to(_device(device))
    split = split or recipe.dataset.val_split
    say(f"evaluating {checkpoint} on {Path(recipe.dataset.root) / recipe.dataset.version} split {split!r}")
    columns = (TextColumn("inference"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=STATE["quiet"], transient=True) as bar:
        task = bar.add_task("inference", total=None)
        metrics = evaluate_nuscenes(recipe, model, out, split=split, max_frames=max_frames,
                                    render_curves=curves,
                                    progress=lambda done, total: bar.update(task, completed=done, total=total))
    return metrics, out


def register(app: typer.Typer) -> None:
    """Add the top-level `eval` command."""

    @app.command("eval")
    @handle_errors
    def eval_cmd(
        checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Our checkpoint (.pth) to evaluate."),
        dataset: str = typer.Option("nuscenes", "--dataset", help="Benchmark: nuscenes (waymo: not wired yet)."),
        data_root: Optional[str] = typer.Option(None, "--data-root", help="Replace the stored dataset.root."),
        version: Optional[str] = typer.Option(None, "--version", help="Replace the stored dataset.version."),
        split: Optional[str] = typer.Option(None, "--split", help="Devkit split (default: dataset.val_split)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: eval_<checkpoint> beside it)."),
        max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="Evaluate only the first N frames."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
        curves: bool = typer.Option(True, "--curves/--no-curves", help="Write the devkit's PR/TP plots."),
        json_out: bool = JsonOpt,
    ) -> None:
        """Score a checkpoint with the official nuScenes metrics (mAP, NDS, TP errors, per-class AP)."""
        from itkd_cli.evaluate.nuscenes_eval import metrics_table

        if dataset not in DATASETS:
            raise ItkdError(f"--dataset {dataset}: expected one of {', '.join(DATASETS)}")
        if dataset == "waymo":
            raise ItkdError("--dataset waymo: Waymo metrics need the separate Waymo environment "
                            "(waymo-open-dataset cannot share this venv) and are not wired into itkd yet",
                            hint="evaluate on nuScenes, or run Waymo's compute_detection_metrics in its own venv")
        metrics, out_dir = _run(checkpoint, data_root, version, split, out, max_frames, device, curves)
        if json_out:
            emit_json(metrics)
            return
        console.print(metrics_table(metrics, title=f"{checkpoint.name}: {metrics['split']} ({metrics['frames']} frames)"))
        if metrics.get("empty_submission"):
            say("[yellow]no box scored above model.post.score_threshold: AP is 0 for every class[/]")
        if metrics["subset"]:
            say(f"[yellow]--max-frames: metrics cover {metrics['frames']} frames, not the whole split[/]")
        say(f"wrote {out_dir / 'metrics.json'} (devkit summary and plots in {out_dir})")
