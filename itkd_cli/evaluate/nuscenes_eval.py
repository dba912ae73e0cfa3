"""Official nuScenes detection evaluation: submission JSON writer + the devkit's DetectionEval.

Boxes arrive in the LiDAR frame of each keyframe (OpenPCDet convention) and are moved to the
global frame with the dataset's lidar_to_global pose, as the nuScenes submission format requires.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping, Optional, Sequence
from unittest import mock

import numpy as np
from pyquaternion import Quaternion

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.io import write_json
from itkd_cli.core.types import Detections

MAX_BOXES_PER_SAMPLE = 500  # detection_cvpr_2019 rejects more
MOVING_SPEED = 0.2  # m/s: above this an object is "moving" (OpenPCDet / CenterPoint convention)
VEHICLES = ("car", "truck", "bus", "trailer", "construction_vehicle")
# Attribute when an object is not moving-and-typical (OpenPCDet's NuScenesDataset.DefaultAttribute).
DEFAULT_ATTRIBUTE = {
    "car": "vehicle.parked", "pedestrian": "pedestrian.moving", "trailer": "vehicle.parked",
    "truck": "vehicle.parked", "bus": "vehicle.moving", "motorcycle": "cycle.without_rider",
    "construction_vehicle": "vehicle.parked", "bicycle": "cycle.without_rider",
    "barrier": "", "traffic_cone": "",
}
RESULT_META = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}
# Version suffix the devkit's load_gt requires for each built-in split (other built-ins: trainval).
_BUILTIN_VERSION = {"test": "test", "mini_train": "mini", "mini_val": "mini"}
TP_NAMES = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE", "vel_err": "mAVE", "attr_err": "mAAE"}


def attribute_name(name: str, speed: float) -> str:
    """nuScenes attribute from class and ground speed (m/s), as OpenPCDet/CenterPoint write it."""
    if speed > MOVING_SPEED:
        if name in VEHICLES:
            return "vehicle.moving"
        if name in ("bicycle", "motorcycle"):
            return "cycle.with_rider"
    else:
        if name == "pedestrian":
            return "pedestrian.standing"
        if name == "bus":
            return "vehicle.stopped"
    return DEFAULT_ATTRIBUTE[name]


def check_class_names(class_names: Sequence[str]) -> None:
    """Every class must be a nuScenes detection name (the devkit rejects others).

    Raises:
        ItkdError: an unknown class.
    """
    unknown = [c for c in class_names if c not in DEFAULT_ATTRIBUTE]
    if unknown:
        raise ItkdError(f"dataset.class_names: {unknown} are not nuScenes detection classes",
                        hint=f"nuScenes evaluation knows {sorted(DEFAULT_ATTRIBUTE)}")


def _orthonormal(rot: np.ndarray) -> np.ndarray:
    """Nearest rotation matrix (poses composed in float32 drift off orthogonality)."""
    u, _, vt = np.linalg.svd(rot)
    return u @ vt


def frame_results(det: Detections, lidar_to_global: np.ndarray, sample_token: str,
                  class_names: Sequence[str]) -> list[dict[str, Any]]:
    """One frame's Detections as nuScenes result boxes in the global frame.

    Args:
        det: boxes (K, 9) LiDAR frame x, y, z, dx, dy, dz, yaw, vx, vy; scores (K,); labels (K,).
        lidar_to_global: (4, 4) keyframe LiDAR -> global transform.
        sample_token: the sample the boxes belong to.
        class_names: label -> nuScenes detection name.

    Returns:
        At most 500 result dicts, highest scores first.
    """
    boxes = det.boxes.detach().cpu().double().numpy().reshape(-1, 9)
    scores = det.scores.detach().cpu().double().numpy().reshape(-1)
    labels = det.labels.detach().cpu().numpy().reshape(-1)
    order = np.argsort(-scores, kind="stable")[:MAX_BOXES_PER_SAMPLE]
    pose = np.asarray(lidar_to_global, dtype=np.float64)
    rot = _orthonormal(pose[:3, :3])
    q_pose = Quaternion(matrix=rot)
    centres = boxes[:, :3] @ rot.T + pose[:3, 3]
    vel3 = np.concatenate([boxes[:, 7:9], np.zeros((len(boxes), 1))], axis=1)
    vels = vel3 @ rot.T
    out = []
    for i in order:
        name = class_names[int(labels[i])]
        q = q_pose * Quaternion(axis=[0.0, 0.0, 1.0], radians=float(boxes[i, 6]))
        out.append({
            "sample_token": sample_token,
            "translation": [float(v) for v in centres[i]],
            "size": [float(boxes[i, 4]), float(boxes[i, 3]), float(boxes[i, 5])],  # wlh = (dy, dx, dz)
            "rotation": [float(v) for v in q.elements],
            "velocity": [float(vels[i, 0]), float(vels[i, 1])],
            "detection_name": name,
            "detection_score": float(scores[i]),
            "attribute_name": attribute_name(name, math.hypot(boxes[i, 7], boxes[i, 8])),
        })
    return out


def write_results(path: str | Path, detections: Mapping[str, Detections], poses: Mapping[str, np.ndarray],
                  class_names: Sequence[str], sample_tokens: Sequence[str]) -> Path:
    """Write the nuScenes submission JSON (atomically).

    Args:
        path: output file.
        detections: sample token -> that frame's Detections (LiDAR frame).
        poses: sample token -> (4, 4) lidar_to_global, for every token in detections.
        class_names: label -> detection name.
        sample_tokens: every sample of the evaluated split; those without detections get [].

    Returns:
        The written path.
    """
    check_class_names(class_names)
    extra = sorted(set(detections) - set(sample_tokens))
    if extra:
        raise ItkdError(f"{path}: detections for {len(extra)} samples outside the split (e.g. {extra[0]})")
    results = {tok: frame_results(detections[tok], poses[tok], tok, class_names) if tok in detections else []
               for tok in sample_tokens}
    return write_json(path, {"meta": dict(RESULT_META), "results": results})


def check_split(nusc, split: str) -> None:
    """The devkit must know the split: a built-in name or a key of <root>/<version>/splits.json.

    Raises:
        ItkdError: unknown split.
    """
    from nuscenes.utils.splits import is_predefined_split

    if is_predefined_split(split_name=split):
        need = _BUILTIN_VERSION.get(split, "trainval")
        if not nusc.version.endswith(need):
            raise ItkdError(f"split {split!r}: a built-in devkit split, only valid for a *{need} version "
                            f"(this is {nusc.version})",
                            hint="custom datasets name their splits in splits.json with names the devkit "
                                 "does not know (e.g. synth_val)")
        return
    path = Path(nusc.dataroot) / nusc.version / "splits.json"
    names = list(json.loads(path.read_text())) if path.is_file() else []
    if split not in names:
        raise ItkdError(f"{path}: split {split!r} not found (custom splits: {names or 'no splits.json'})",
                        hint="set dataset.val_split or --split to a built-in devkit split or a splits.json key")


def split_sample_tokens(nusc, split: str) -> list[str]:
    """Sample tokens of a split, in the order of nusc.sample, as the devkit selects them."""
    from nuscenes.eval.common.loaders import get_samples_of_custom_split
    from nuscenes.utils.splits import create_splits_scenes, is_predefined_split

    check_split(nusc, split)
    if not is_predefined_split(split_name=split):
        return get_samples_of_custom_split(split_name=split, nusc=nusc)
    scenes = set(create_splits_scenes()[split])
    return [s["token"] for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in scenes]


def run_detection_eval(nusc, result_path: str | Path, split: str, out_dir: str | Path,
                       only_tokens: Optional[Sequence[str]] = None, render_curves: bool = True,
                       config_name: str = "detection_cvpr_2019") -> dict[str, Any]:
    """Run the official DetectionEval and summarise metrics_summary.json.

    Args:
        nusc: NuScenes instance.
        result_path: submission JSON holding every sample of ``split``.
        split: devkit eval_set (built-in name or splits.json key).
        out_dir: the devkit writes metrics_summary.json, metrics_details.json and plots/ here.
        only_tokens: restrict GT and predictions to these samples (a --max-frames subset);
            None evaluates the whole split.
        render_curves: let the devkit draw its PR/TP curves.
        config_name: devkit detection config.

    Returns:
        Summary: mAP, NDS, the five TP errors, per-class AP and TP errors.
    """
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    check_split(nusc, split)
    out_dir = Path(out_dir)
    results = json.loads(Path(result_path).read_text())["results"]
    wanted = set(only_tokens) if only_tokens is not None else set(results)
    if not any(results[t] for t in wanted if t in results):
        return empty_submission_metrics(config_name, len(wanted))
    # The devkit prints its own summary (ours is the table): keep it off stdout (--json) and the console;
    # its box loaders draw tqdm bars on stderr even with verbose=False: iterate plainly instead.
    from nuscenes.eval.common import loaders

    quiet_tqdm = SimpleNamespace(tqdm=lambda iterable, *args, **kwargs: iterable)
    with contextlib.redirect_stdout(io.StringIO()), mock.patch.object(loaders, "tqdm", quiet_tqdm):
        ev = DetectionEval(nusc, config=config_factory(config_name), result_path=str(result_path),
                           eval_set=split, output_dir=str(out_dir), verbose=False)
        if only_tokens is not None:
            keep = set(only_tokens)
            for boxes in (ev.gt_boxes, ev.pred_boxes):
                for tok in [t for t in boxes.boxes if t not in keep]:
                    del boxes.boxes[tok]
            ev.sample_tokens = ev.gt_boxes.sample_tokens
        ev.main(plot_examples=0, render_curves=render_curves)
    summary = json.loads((out_dir / "metrics_summary.json").read_text())
    return summarise(summary, n_samples=len(ev.sample_tokens))


def empty_submission_metrics(config_name: str, n_samples: int) -> dict[str, Any]:
    """Metrics of a submission without a single box (e.g. an untrained model below score_threshold).

    The devkit crashes on such a file (filter_eval_boxes finds no box to read the class field from),
    but its definitions are clear: AP 0 for every class, hence mAP 0; TP errors are undefined (None)
    and the devkit would count them as 1, so NDS is 0. Flagged with ``empty_submission``.
    """
    from nuscenes.eval.common.config import config_factory

    classes = config_factory(config_name).class_names
    none = {name: None for name in TP_NAMES.values()}
    per_class = {c: {"AP": 0.0, **{k[1:]: None for k in none}} for c in classes}
    return {"mAP": 0.0, "NDS": 0.0, **none, "per_class": per_class, "samples": n_samples,
            "eval_time_s": 0.0, "empty_submission": True}


def _num(v: Any) -> Optional[float]:
    """NaN (e.g. attribute error of barriers) -> None so the JSON stays standard."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def summarise(summary: Mapping[str, Any], n_samples: int) -> dict[str, Any]:
    """Our metrics dict from the devkit's metrics_summary.json."""
    per_class = {}
    for name, ap in summary["mean_dist_aps"].items():
        errs = summary["label_tp_errors"][name]
        per_class[name] = {"AP": _num(ap), **{TP_NAMES[k][1:]: _num(v) for k, v in errs.items()}}
    out = {"mAP": _num(summary["mean_ap"]), "NDS": _num(summary["nd_score"])}
    out.update({TP_NAMES[k]: _num(v) for k, v in summary["tp_errors"].items()})
    out.update({"per_class": per_class, "samples": n_samples, "eval_time_s": _num(summary["eval_time"])})
    return out


def metrics_table(metrics: Mapping[str, Any], title: str = "nuScenes detection"):
    """Rich table: headline metrics as the caption, one row per class."""
    from rich.table import Table

    def fmt(v: Optional[float]) -> str:
        return "-" if v is None else f"{v:.4f}"

    head = "  ".join(f"{k} {fmt(metrics.get(k))}" for k in ("mAP", "NDS", *TP_NAMES.values()))
    table = Table(title=title, caption=head)
    for col in ("class", "AP", "ATE", "ASE", "AOE", "AVE", "AAE"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, row in metrics["per_class"].items():
        table.add_row(name, *(fmt(row[c]) for c in ("AP", "ATE", "ASE", "AOE", "AVE", "AAE")))
    return table
