"""Inference over a split + the official metrics of its dataset (CLI `itkd eval`, compress, the training callback)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

from torch import nn

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.io import write_json
from itkd_cli.evaluate.nuscenes_eval import check_class_names, run_detection_eval, split_sample_tokens, write_results
from itkd_cli.evaluate.predict import predict_split
from itkd_cli.recipe.schema import ModelConfig, Recipe

RESULTS_FILE = "results_nusc.json"
METRICS_FILE = "metrics.json"


def load_model(checkpoint: Union[str, Path]) -> tuple[nn.Module, Recipe]:
    """Build the network stored in one of our checkpoints (eval mode, CPU) and return it with its recipe.

    Raises:
        ItkdError: missing/unreadable file or weights that do not fit.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise ItkdError(f"{path}: checkpoint not found", hint="pass the .pth written by `itkd train`/`itkd compress`")
    from itkd_cli.models.checkpoint import load_ours_model  # imports spconv: only once the file exists

    model, recipe, _ = load_ours_model(path)
    return model, recipe


def evaluate_nuscenes(recipe: Recipe, model: Union[nn.Module, str, Path], out_dir: Union[str, Path],
                      split: Optional[str] = None, max_frames: Optional[int] = None,
                      model_cfg: Optional[ModelConfig] = None, render_curves: bool = False,
                      progress: Optional[Callable[[int, int], None]] = None) -> dict[str, Any]:
    """Inference + nuScenes submission JSON + official DetectionEval.

    Usable as the training loop's periodic-eval callback: pass the in-memory model (its mode is kept).

    Args:
        recipe: dataset / eval settings (dataset.kind must be nuscenes).
        model: a CenterPoint in memory, or the path of one of our checkpoints.
        out_dir: results_nusc.json, metrics.json and the devkit's metrics_summary.json / plots/ go here.
        split: devkit split; default recipe.dataset.val_split.
        max_frames: evaluate only the first N frames (default recipe.eval.max_frames); the devkit's GT is
            then restricted to those frames and metrics carry "subset": true.
        model_cfg: the network's config when it differs from recipe.model (student).
        render_curves: draw the devkit's PR/TP curves (tens of seconds on 2 cores; `itkd eval` turns it on).
        progress: called with (frames done, frames total).

    Returns:
        metrics: mAP, NDS, mATE..mAAE, per_class, samples, plus run facts.
    """
    from itkd_cli.data.infos import open_nuscenes

    if recipe.dataset.kind != "nuscenes":
        raise ItkdError(f"dataset.kind: {recipe.dataset.kind!r} is not evaluated by evaluate_nuscenes")
    check_class_names(recipe.dataset.class_names)
    split = split or recipe.dataset.val_split
    max_frames = max_frames if max_frames is not None else recipe.eval.max_frames
    if not isinstance(model, nn.Module):
        model, _ = load_model(model)
    out_dir = Path(out_dir)
    nusc = open_nuscenes(recipe.dataset.root, recipe.dataset.version)
    all_tokens = split_sample_tokens(nusc, split)
    start = time.perf_counter()
    dets, dataset = predict_split(model, recipe, split, model_cfg, max_frames, progress)
    infer_s = time.perf_counter() - start
    poses = {tok: dataset.lidar_to_global(tok) for tok in dets}
    result_path = write_results(out_dir / RESULTS_FILE, dets, poses, recipe.dataset.class_names, all_tokens)
    subset = len(dets) < len(all_tokens)
    metrics = run_detection_eval(nusc, result_path, split, out_dir, only_tokens=list(dets) if subset else None,
                                 render_curves=render_curves, config_name=recipe.eval.dist_config)
    metrics.update({"dataset": "nuscenes", "version": recipe.dataset.version, "split": split,
                    "subset": subset, "frames": len(dets), "inference_s": round(infer_s, 3),
                    "results_file": str(result_path)})
    write_json(out_dir / METRICS_FILE, metrics)
    return metrics


def evaluate_split(recipe: Recipe, model: Union[nn.Module, str, Path], out_dir: Union[str, Path],
                   split: Optional[str] = None, max_frames: Optional[int] = None,
                   model_cfg: Optional[ModelConfig] = None, render_curves: bool = False,
                   progress: Optional[Callable[[int, int], None]] = None) -> dict[str, Any]:
    """The official metrics of the recipe's dataset: nuScenes DetectionEval (``evaluate_nuscenes``) or, on a
    converted Waymo root, the Waymo metrics (``waymo_eval.evaluate_converted``); same arguments."""
    if recipe.dataset.kind != "waymo":
        return evaluate_nuscenes(recipe, model, out_dir, split, max_frames, model_cfg, render_curves, progress)
    from itkd_cli.evaluate.waymo_eval import evaluate_converted

    if not isinstance(model, nn.Module):
        model, _ = load_model(model)
    return evaluate_converted(recipe, model, out_dir, split, max_frames, model_cfg, progress)
