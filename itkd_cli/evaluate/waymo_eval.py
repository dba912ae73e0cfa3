"""Official Waymo metrics (mAP / mAPH, LEVEL_1 / LEVEL_2) through the Waymo venv.

waymo-open-dataset cannot share this environment (it pins tensorflow and typing_extensions 4.5, which
break torch and pydantic), so ``itkd_cli/waymo_tool/tool.py`` runs in its own venv (``core.waymo_env``)
and exchanges .npz files with this module: it reads the TFRecords (points + labels) and runs ``py_metrics_ops.detection_metrics``
with the config of the official ``compute_detection_metrics_main``; inference stays here.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.io import atomic_path, write_json
from itkd_cli.core.types import Detections
from itkd_cli.core.waymo_env import run_tool
from itkd_cli.data.waymo import TYPE_NAMES, tfrecord_files
from itkd_cli.evaluate.predict import predict_split
from itkd_cli.models.decode import decode
from itkd_cli.recipe.schema import ModelConfig, Recipe

WAYMO_TYPES = {"vehicle": 1, "pedestrian": 2, "sign": 3, "cyclist": 4}  # label_pb2.Label.Type
LEADERBOARD_CLASSES = ("Vehicle", "Pedestrian", "Cyclist")
LEVELS = ("L1", "L2")
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions_waymo.npz"


def class_types(class_names: Sequence[str]) -> np.ndarray:
    """Waymo object type of each recipe class (Vehicle, Pedestrian, Sign, Cyclist; any case)."""
    unknown = [c for c in class_names if c.lower() not in WAYMO_TYPES]
    if unknown:
        raise ItkdError(f"dataset.class_names: {', '.join(map(repr, unknown))} not a Waymo object type",
                        hint="Waymo classes are Vehicle, Pedestrian, Sign, Cyclist")
    return np.array([WAYMO_TYPES[c.lower()] for c in class_names], np.uint8)


def summarize(raw: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
    """Per-class mAP / mAPH at LEVEL_1 / LEVEL_2 from the breakdown rows, and their means over classes
    (the leaderboard's headline is mAPH L2 averaged over its classes)."""
    per_class = {}
    rows = raw["breakdowns"]
    for name in class_names:
        key = f"OBJECT_TYPE_TYPE_{name.upper()}_LEVEL_"
        per_class[name] = {f"{m}_{lv}": rows[f"{key}{i}"][m] for i, lv in enumerate(LEVELS, 1) for m in ("mAP", "mAPH")}
    means = {k: float(np.mean([row[k] for row in per_class.values()])) for k in next(iter(per_class.values()))}
    return {**means, "per_class": per_class, "breakdowns": raw["breakdowns"],
            **{k: raw[k] for k in ("frames", "predictions", "ground_truths")}}


def _metrics(pred: Path, gt: Path, out_dir: Path, class_names: Sequence[str]) -> dict[str, Any]:
    raw_path = out_dir / "waymo_metrics_raw.json"
    run_tool("metrics", pred, gt, raw_path)
    return summarize(json.loads(raw_path.read_text()), class_names)


def score_objects(pred_bin: Union[str, Path], gt_bin: Union[str, Path], out_dir: Union[str, Path]) -> dict[str, Any]:
    """Score official Objects files (a submission and its ground truth) with the official config."""
    for path in (pred_bin, gt_bin):
        if not Path(path).is_file():
            raise ItkdError(f"{path}: file not found", hint="pass Waymo Objects .bin files (metrics_pb2.Objects)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        pred, gt = Path(tmp) / "pred.npz", Path(tmp) / "gt.npz"
        run_tool("objects", pred_bin, pred)
        run_tool("objects", gt_bin, gt)
        metrics = _metrics(pred, gt, out_dir, LEADERBOARD_CLASSES)
    metrics.update({"dataset": "waymo", "predictions_file": str(pred_bin), "ground_truth_file": str(gt_bin)})
    write_json(out_dir / METRICS_FILE, metrics)
    return metrics


def _frame_key(entry: Mapping[str, Any]) -> tuple[str, int]:
    return entry["context"], int(entry["timestamp"])


def write_predictions(path: Path, detections: Sequence[Detections], frames: Sequence[Mapping[str, Any]],
                      types: np.ndarray) -> Path:
    """Our boxes (x, y, z, dx, dy, dz, yaw: dx along the heading) as Waymo arrays (length = dx)."""
    ctx, ts, boxes, typ, scores = [], [], [], [], []
    for det, entry in zip(detections, frames):
        k = len(det.scores)
        context, stamp = _frame_key(entry)
        ctx += [context] * k
        ts += [stamp] * k
        boxes.append(det.boxes[:, :7].double().numpy())
        typ.append(types[det.labels.numpy()])
        scores.append(det.scores.float().numpy())
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, context=np.array(ctx, dtype=str), timestamp=np.array(ts, np.int64),
                     boxes=np.concatenate(boxes).reshape(-1, 7) if boxes else np.zeros((0, 7)),
                     types=np.concatenate(typ).astype(np.uint8) if typ else np.zeros(0, np.uint8),
                     scores=np.concatenate(scores) if scores else np.zeros(0, np.float32),
                     overlap_nlz=np.zeros(len(ctx), bool))
    return path


def _labels(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in ("gt_boxes", "gt_types", "gt_num_points", "gt_difficulty")}


def _ground_truth(path: Path, frames: Sequence[Mapping[str, Any]], labels: Sequence[Mapping[str, np.ndarray]]) -> Path:
    ctx = [_frame_key(e)[0] for e, lb in zip(frames, labels) for _ in range(len(lb["gt_types"]))]
    ts = [_frame_key(e)[1] for e, lb in zip(frames, labels) for _ in range(len(lb["gt_types"]))]
    cat = {k: np.concatenate([lb[k] for lb in labels]) for k in labels[0]}
    np.savez(path, context=np.array(ctx, dtype=str), timestamp=np.array(ts, np.int64), boxes=cat["gt_boxes"],
             types=cat["gt_types"], num_points=cat["gt_num_points"], difficulty=cat["gt_difficulty"])
    return path


@torch.no_grad()
def predict_frames(model: nn.Module, model_cfg: ModelConfig, class_names: Sequence[str], frame_dir: Path,
                   frames: Sequence[Mapping[str, Any]], progress: Optional[Callable[[int, int], None]] = None,
                   ) -> list[Detections]:
    """Voxelise each frame's points as the recipe says, run the model, decode boxes (one frame a step)."""
    from itkd_cli.data.voxelize import Voxelizer

    feats = model_cfg.num_point_features
    if feats > 5:
        raise ItkdError(f"model.num_point_features: {feats}, but Waymo points carry 5 (x, y, z, intensity, elongation)")
    voxelize = Voxelizer(model_cfg, train=False)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for i, entry in enumerate(frames):
            with np.load(frame_dir / entry["file"], allow_pickle=False) as data:
                vox = voxelize(data["points"])
            coords = np.concatenate([np.zeros((len(vox.coords), 1), np.int32), vox.coords], axis=1)
            pred = model(torch.from_numpy(vox.voxels).to(device), torch.from_numpy(vox.num_points).to(device),
                         torch.from_numpy(coords).to(device), 1)
            det = decode(pred, model_cfg, class_names)[0]
            out.append(Detections(det.boxes.cpu(), det.scores.cpu(), det.labels.cpu()))
            if progress is not None:
                progress(i + 1, len(frames))
    finally:
        model.train(was_training)
    return out


def evaluate_waymo(recipe: Recipe, model: nn.Module, data_root: Union[str, Path], out_dir: Union[str, Path],
                   max_frames: Optional[int] = None, model_cfg: Optional[ModelConfig] = None,
                   progress: Optional[Callable[[int, Optional[int]], None]] = None) -> dict[str, Any]:
    """Read Waymo TFRecords, run the model on every frame, score it with the official Waymo metrics.

    Args:
        recipe: class names (Waymo types) and, unless model_cfg is given, the network's grid/post.
        model: the detector in memory (its device is used, its mode kept).
        data_root: a .tfrecord file or a folder of them (validation segments).
        out_dir: metrics.json, predictions_waymo.npz and the raw breakdown rows go here.
        max_frames: only the first N frames.
        model_cfg: the network's config when it differs from recipe.model (a student's).
        progress: called with (frames done, None): the total is not known before the last segment is read.

    Returns:
        metrics: mAP/mAPH at L1/L2 averaged over the recipe's classes, per_class, every breakdown row.
    """
    class_names = recipe.dataset.class_names
    types = class_types(class_names)
    files = tfrecord_files(data_root)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames: list[dict] = []
    labels: list[dict] = []
    dets: list[Detections] = []
    infer_s, read = 0.0, 0
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        for n, record in enumerate(files):  # one segment's points on disk at a time
            left = None if max_frames is None else max_frames - len(frames)
            if left == 0:
                break
            read += 1
            frame_dir = Path(tmp) / f"segment_{n}"
            run_tool("frames", frame_dir, record, *(["--max-frames", str(left)] if left else []))
            index = json.loads((frame_dir / "frames.json").read_text())
            start = time.perf_counter()
            done = len(frames)
            dets += predict_frames(model, model_cfg or recipe.model, class_names, frame_dir, index,
                                   None if progress is None else lambda i, _: progress(done + i, None))
            infer_s += time.perf_counter() - start
            labels += [_labels(frame_dir / e["file"]) for e in index]
            frames += index
            shutil.rmtree(frame_dir)
        if not frames:
            raise ItkdError(f"{data_root}: the TFRecords hold no frame")
        pred = write_predictions(out_dir / PREDICTIONS_FILE, dets, frames, types)
        gt = _ground_truth(Path(tmp) / "gt.npz", frames, labels)
        metrics = _metrics(pred, gt, out_dir, class_names)
    metrics.update({"dataset": "waymo", "data_root": str(data_root), "frames_without_points":
                    sum(1 for e in frames if e["points"] == 0), "tfrecords_read": read,
                    "inference_s": round(infer_s, 3), "predictions_file": str(pred)})
    write_json(out_dir / METRICS_FILE, metrics)
    return metrics


def _converted_ground_truth(path: Path, infos: Sequence[Mapping[str, Any]]) -> Path:
    """Ground truth of converted frames (every labelled type, as the official tool scores them), with their
    annotated difficulty levels."""
    rows = [(i["context"], i["timestamp"], box[:7], name, n, level) for i in infos
            for box, name, n, level in zip(i["gt_boxes"], i["gt_names"], i["num_lidar_pts"], i["difficulty"])]
    types = np.array([TYPE_NAMES.index(r[3]) for r in rows], np.uint8)
    num_points = np.array([r[4] for r in rows], np.int64)
    difficulty = np.array([r[5] for r in rows], np.uint8)  # raw levels: `tool.py metrics` applies the official rule
    np.savez(path, context=np.array([r[0] for r in rows], dtype=str), timestamp=np.array([r[1] for r in rows], np.int64),
             boxes=np.array([r[2] for r in rows], np.float64).reshape(-1, 7), types=types, num_points=num_points,
             difficulty=difficulty)
    return path


def evaluate_converted(recipe: Recipe, model: nn.Module, out_dir: Union[str, Path], split: Optional[str] = None,
                       max_frames: Optional[int] = None, model_cfg: Optional[ModelConfig] = None,
                       progress: Optional[Callable[[int, int], None]] = None) -> dict[str, Any]:
    """Run the model over a split of a converted Waymo root (``itkd data prepare --dataset waymo``) and score
    it with the official Waymo metrics, as ``evaluate_waymo`` does for TFRecords.

    Args:
        recipe: dataset.root is the converted root; class names are Waymo types.
        model: the detector in memory (its device is used, its mode kept).
        out_dir: metrics.json, predictions_waymo.npz and the raw breakdown rows go here.
        split: default dataset.val_split. max_frames: only the first N frames (default eval.max_frames).
        model_cfg: the network's config when it differs from recipe.model (a student's).
        progress: called with (frames done, frames total).

    Returns:
        metrics: mAP/mAPH at L1/L2 averaged over the recipe's classes, per_class, every breakdown row.
    """
    class_names = recipe.dataset.class_names
    types = class_types(class_names)
    split = split or recipe.dataset.val_split
    max_frames = max_frames if max_frames is not None else recipe.eval.max_frames
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    dets, dataset = predict_split(model, recipe, split, model_cfg, max_frames, progress)
    infer_s = time.perf_counter() - start
    infos = [dataset.infos[i] for i in range(len(dataset)) if dataset.infos[i]["token"] in dets]
    pred = write_predictions(out_dir / PREDICTIONS_FILE, [dets[i["token"]] for i in infos], infos, types)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        gt = _converted_ground_truth(Path(tmp) / "gt.npz", infos)
        metrics = _metrics(pred, gt, out_dir, class_names)
    metrics.update({"dataset": "waymo", "data_root": str(recipe.dataset.root), "split": split,
                    "subset": len(infos) < len(dataset), "inference_s": round(infer_s, 3),
                    "predictions_file": str(pred)})
    write_json(out_dir / METRICS_FILE, metrics)
    return metrics


def waymo_table(metrics: Mapping[str, Any], title: str = "Waymo detection"):
    """Rich table: one row per class, mAP / mAPH at LEVEL_1 and LEVEL_2; class means as the caption."""
    from rich.table import Table

    cols = [f"{m}_{lv}" for lv in LEVELS for m in ("mAP", "mAPH")]
    table = Table(title=title, caption="  ".join(f"{c} {metrics[c]:.4f}" for c in cols))
    table.add_column("class")
    for col in cols:
        table.add_column(col.replace("_", " "), justify="right")
    for name, row in metrics["per_class"].items():
        table.add_row(name, *(f"{row[c]:.4f}" for c in cols))
    return table

