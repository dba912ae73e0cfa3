"""`itkd eval`: score a checkpoint with the official nuScenes devkit or the official Waymo metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from itkd_cli.cli.common import (
    STATE, ForceOpt, JsonOpt, console, emit_json, gate_option, handle_errors, owned, result, say,
)
from itkd_cli.core.errors import ItkdError
from itkd_cli.pipeline import gates as gating
from itkd_cli.recipe.schema import GatesConfig

DATASETS = ("nuscenes", "waymo")
RUN_PRODUCTS = ("metrics.json", "results_nusc.json", "metrics_summary.json")  # an evaluation folder holds these


def default_out(source: Path, tag: str) -> Path:
    """Beside the checkpoint, named after it and what it is scored on: ``student.pth`` on synth_val ->
    ``student_eval_synth_val/``, which never collides with compress's own ``eval_student/`` / ``eval_teacher/``
    or train's ``eval/epoch_N/``."""
    return source.parent / f"{source.stem}_eval_{tag}"


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ItkdError(f"--device {name}: CUDA is not available on this machine", hint="use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ItkdError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    return torch.device(name)


def _with_dataset(recipe, data_root: Optional[str], version: Optional[str], kind: Optional[str] = None):
    """The checkpoint's recipe with --data-root/--version (and the dataset kind found there) replacing the
    stored dataset fields."""
    from itkd_cli.recipe import recipe_from_dict

    data = recipe.model_dump(mode="json")
    if data_root is not None:
        data["dataset"]["root"] = data_root
    if version is not None:
        data["dataset"]["version"] = version
    if kind is not None:
        data["dataset"]["kind"] = kind
    return recipe_from_dict(data, source="checkpoint recipe + --data-root/--version")


def _progress_bar():
    columns = (TextColumn("inference"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console, disable=STATE["quiet"], transient=True)


def _params(model) -> int:  # noqa: ANN001 - a torch module
    return sum(p.numel() for p in model.parameters())


def _run(checkpoint: Path, data_root: Optional[str], version: Optional[str], split: Optional[str], out: Optional[Path],
         max_frames: Optional[int], device: str, curves: bool, force: bool) -> tuple[dict, Path, int]:
    from itkd_cli.evaluate.run import evaluate_nuscenes, load_model

    model, stored = load_model(checkpoint)
    recipe = _with_dataset(stored, data_root, version)
    split = split or recipe.dataset.val_split
    out = out or default_out(checkpoint, split)
    model.to(_device(device))
    say(f"evaluating {checkpoint} on {Path(recipe.dataset.root) / recipe.dataset.version} split {split!r}")
    with owned(out, "itkd eval", RUN_PRODUCTS, force=force, can_resume=False), _progress_bar() as bar:
        task = bar.add_task("inference", total=None)
        metrics = evaluate_nuscenes(recipe, model, out, split=split, max_frames=max_frames,
                                    render_curves=curves,
                                    progress=lambda done, total: bar.update(task, completed=done, total=total))
    return metrics, out, _params(model)


def _run_waymo(checkpoint: Optional[Path], data_root: Optional[str], split: Optional[str], out: Optional[Path],
               max_frames: Optional[int], device: str, predictions: Optional[Path], ground_truth: Optional[Path],
               force: bool) -> tuple[dict, Path, str, Optional[int]]:
    from itkd_cli.data.waymo import is_converted
    from itkd_cli.evaluate import waymo_eval

    if predictions is not None or ground_truth is not None:
        if predictions is None or ground_truth is None or checkpoint is not None:
            raise ItkdError("--predictions and --ground-truth go together, without --checkpoint")
        out = out or default_out(predictions, "waymo")
        say(f"scoring {predictions} against {ground_truth} (official Waymo config)")
        with owned(out, "itkd eval", RUN_PRODUCTS, force=force, can_resume=False):
            return waymo_eval.score_objects(predictions, ground_truth, out), out, predictions.name, None
    if checkpoint is None:
        raise ItkdError("--checkpoint: required (or --predictions with --ground-truth for --dataset waymo)")
    from itkd_cli.evaluate.run import load_model

    model, stored = load_model(checkpoint)
    waymo_eval.class_types(stored.dataset.class_names)  # fail before any inference
    root = data_root or stored.dataset.root
    converted = is_converted(root)  # a root of `itkd data prepare --dataset waymo`, else TFRecords
    if split is not None and not converted:
        raise ItkdError(f"--split: {root} holds TFRecords, not a converted root with splits",
                        hint="pass the segments of one split with --data-root, or a root converted by "
                             "`itkd data prepare --dataset waymo`")
    out = out or default_out(checkpoint, f"waymo_{split or stored.dataset.val_split}" if converted else "waymo")
    model.to(_device(device))
    say(f"evaluating {checkpoint} on Waymo frames in {root}" + (f" split {split or stored.dataset.val_split!r}"
                                                                 if converted else ""))
    with owned(out, "itkd eval", RUN_PRODUCTS, force=force, can_resume=False), _progress_bar() as bar:
        task = bar.add_task("inference", total=None)
        tick = lambda done, total: bar.update(task, completed=done, total=total)  # noqa: E731
        if converted:
            recipe = _with_dataset(stored, str(root), None, kind="waymo")
            metrics = waymo_eval.evaluate_converted(recipe, model, out, split, max_frames, progress=tick)
        else:
            metrics = waymo_eval.evaluate_waymo(stored, model, root, out, max_frames=max_frames, progress=tick)
    return metrics, out, checkpoint.name, _params(model)


def _gated(metrics: dict, out_dir: Path, gates: GatesConfig, params: Optional[int]) -> list[gating.GateResult]:
    """Judge the gates on the evaluation and record them in its metrics.json (and so in the --json result)."""
    checked = gating.evaluate(gates, gating.eval_values(metrics, params))
    gating.record(out_dir / "metrics.json", metrics, checked)
    return checked


def _report_waymo(metrics: dict, out_dir: Path, name: str, json_out: bool) -> None:
    from itkd_cli.evaluate.waymo_eval import waymo_table

    if json_out:
        emit_json(metrics)
        return
    console.print(waymo_table(metrics, title=f"{name}: Waymo ({metrics['frames']} frames)"))
    if metrics.get("frames_without_points"):
        result(f"[yellow]{metrics['frames_without_points']} frame(s) carry no range image: nothing to detect there[/]")
    result(f"wrote {out_dir / 'metrics.json'}")


def register(app: typer.Typer) -> None:
    """Add the top-level `eval` command."""

    @app.command("eval")
    @handle_errors
    def eval_cmd(
        checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="Our checkpoint (.pth) to evaluate."),
        dataset: str = typer.Option("nuscenes", "--dataset", help="Benchmark: nuscenes or waymo."),
        data_root: Optional[str] = typer.Option(None, "--data-root",
                                                help="Replace the stored dataset.root (waymo: a .tfrecord, a folder of "
                                                     "them, or a root converted by `itkd data prepare`)."),
        version: Optional[str] = typer.Option(None, "--version", help="Replace the stored dataset.version."),
        split: Optional[str] = typer.Option(None, "--split", help="Split (default: dataset.val_split; waymo: of a "
                                                                  "converted root)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: <checkpoint>_eval_<split> beside it)."),
        force: bool = ForceOpt,
        max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="Evaluate only the first N frames."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
        curves: bool = typer.Option(True, "--curves/--no-curves", help="Write the devkit's PR/TP plots."),
        predictions: Optional[Path] = typer.Option(None, "--predictions",
                                                   help="waymo: score this Objects .bin instead of a checkpoint."),
        ground_truth: Optional[Path] = typer.Option(None, "--ground-truth",
                                                    help="waymo: the Objects .bin to score against."),
        min_map: Optional[float] = gate_option("min_map", recipe=False),
        min_nds: Optional[float] = gate_option("min_nds", recipe=False),
        min_maph: Optional[float] = gate_option("min_maph", recipe=False),
        max_drop: Optional[float] = gate_option("max_drop", recipe=False),
        min_speedup: Optional[float] = gate_option("min_speedup", recipe=False),
        max_params: Optional[int] = gate_option("max_params", recipe=False),
        json_out: bool = JsonOpt,
    ) -> None:
        """Score a checkpoint with the official nuScenes (mAP, NDS, per-class AP) or Waymo (mAP/mAPH L1/L2) metrics.

        A failed gate (--min-map ...) exits 1 once metrics.json is written; it lists the gates.
        """
        from itkd_cli.evaluate.nuscenes_eval import metrics_table

        if dataset not in DATASETS:
            raise ItkdError(f"--dataset {dataset}: expected one of {', '.join(DATASETS)}")
        # only the flags gate an evaluation: a checkpoint's stored gates were its compress job's
        gates = gating.from_flags(min_map=min_map, min_nds=min_nds, min_maph=min_maph, max_drop=max_drop,
                                  min_speedup=min_speedup, max_params=max_params)
        gating.check_applicable(gates, "eval", dataset, has_model=predictions is None)
        if dataset == "waymo":
            if version is not None:
                raise ItkdError("--version: nuScenes only; for Waymo pass the segments or a converted root with "
                                "--data-root")
            metrics, out_dir, name, params = _run_waymo(checkpoint, data_root, split, out, max_frames, device,
                                                        predictions, ground_truth, force)
            checked = _gated(metrics, out_dir, gates, params)
            _report_waymo(metrics, out_dir, name, json_out)
            if checked and not json_out:
                result(gating.summary(checked))
            gating.raise_if_failed(checked, out_dir / "metrics.json")
            return
        if predictions is not None or ground_truth is not None:
            raise ItkdError("--predictions/--ground-truth: Waymo Objects files, used with --dataset waymo")
        if checkpoint is None:
            raise ItkdError("--checkpoint: required", hint="itkd eval -c RUN/student.pth")
        metrics, out_dir, params = _run(checkpoint, data_root, version, split, out, max_frames, device, curves, force)
        checked = _gated(metrics, out_dir, gates, params)
        if json_out:
            emit_json(metrics)
            gating.raise_if_failed(checked, out_dir / "metrics.json")
            return
        console.print(metrics_table(metrics, title=f"{checkpoint.name}: {metrics['split']} ({metrics['frames']} frames)"))
        if metrics.get("empty_submission"):
            result("[yellow]no box scored above model.post.score_threshold: AP is 0 for every class[/]")
        if metrics["subset"]:
            result(f"[yellow]--max-frames: metrics cover {metrics['frames']} frames, not the whole split[/]")
        result(f"wrote {out_dir / 'metrics.json'} (devkit summary and plots in {out_dir})")
        if checked:
            result(gating.summary(checked))
        gating.raise_if_failed(checked, out_dir / "metrics.json")
