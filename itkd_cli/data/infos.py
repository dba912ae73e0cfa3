"""Read nuScenes tables through the devkit into plain per-frame infos (lists, floats, strings).

One info per keyframe: LiDAR file, previous sweeps with their transform into the keyframe LiDAR frame,
the keyframe pose, and every annotation as an OpenPCDet box in the keyframe LiDAR frame. A frame nobody
annotated (the non-key sweeps of an unlabeled pool, ``sweep_pool``) gets the same keys (``unannotated``).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from pyquaternion import Quaternion

from itkd_cli.core.errors import ItkdError
from itkd_cli.data.points import pose_matrix, yaw_of_rotation

TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor",
          "ego_pose", "log", "scene", "sample", "sample_data", "sample_annotation", "map")
LIDAR = "LIDAR_TOP"


def open_nuscenes(root: str | Path, version: str) -> Any:
    """Open a nuScenes dataset with the devkit, turning its asserts into one-line errors.

    Raises:
        ItkdError: the version folder or a table is missing or unreadable.
    """
    from nuscenes.nuscenes import NuScenes

    table_dir = Path(root) / version
    if not table_dir.is_dir():
        found = version_folders(root)
        where = f"{root} holds {', '.join(found)}" if found else f"{root} holds no folder with a sample.json"
        raise ItkdError(f"{table_dir}: nuScenes version folder not found",
                        hint=f"{where}; check dataset.root / dataset.version (or --data-root / --version)")
    missing = [t for t in TABLES if not (table_dir / f"{t}.json").is_file()]
    if missing:
        raise ItkdError(f"{table_dir}: missing nuScenes tables: {', '.join(t + '.json' for t in missing)}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the devkit prints even with verbose=False
            return NuScenes(version=version, dataroot=str(root), verbose=False)
    except (AssertionError, KeyError, ValueError, TypeError, IndexError, OSError) as exc:
        raise ItkdError(f"{table_dir}: the devkit cannot load these tables ({type(exc).__name__}: {exc})") from None


def version_folders(root: str | Path) -> list[str]:
    """Names of the folders under ``root`` that hold nuScenes tables (a sample.json), sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if (d / "sample.json").is_file())


def only_version(root: str | Path) -> str:
    """The one version folder under ``root`` (for commands whose --version is optional).

    Raises:
        ItkdError: ``root`` is missing, or holds no version folder or several.
    """
    if not Path(root).is_dir():
        raise ItkdError(f"--data-root {root}: folder not found")
    found = version_folders(root)
    if len(found) != 1:
        what = f"several version folders ({', '.join(found)})" if found else "no version folder (with a sample.json)"
        raise ItkdError(f"--data-root {root}: {what}", hint="name one with --version")
    return found[0]


def get_record(nusc: Any, table: str, token: str, context: str) -> dict:
    """``nusc.get`` with an error naming the dangling token and who refers to it."""
    try:
        return nusc.get(table, token)
    except KeyError:
        raise ItkdError(f"{table} token {token!r} (referenced by {context}) does not exist in "
                        f"{Path(nusc.dataroot) / nusc.version}/{table}.json") from None


def split_scenes(root: str | Path, version: str, split: str) -> list[str]:
    """Scene names of a split: a built-in devkit split, else a key of <root>/<version>/splits.json.

    Raises:
        ItkdError: unknown split (the message lists the available names).
    """
    from nuscenes.utils.splits import create_splits_scenes

    custom_path = Path(root) / version / "splits.json"
    custom: dict[str, list[str]] = {}
    if custom_path.is_file():
        try:
            custom = json.loads(custom_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ItkdError(f"{custom_path}: unreadable splits file ({exc})") from None
        if not isinstance(custom, dict):
            raise ItkdError(f"{custom_path}: must map split names to lists of scene names")
    # Same precedence as the devkit's evaluation: built-in names first, then splits.json.
    builtin = create_splits_scenes(verbose=False)
    if split in builtin:
        return list(builtin[split])
    if split in custom:
        return list(custom[split])
    names = sorted(custom) + sorted(builtin)
    raise ItkdError(f"split {split!r}: unknown for {Path(root) / version} (available: {', '.join(names)})",
                    hint=f"define it in {custom_path} (a mapping of split name to its scene names)")


def split_sample_tokens(nusc: Any, split: str | None) -> list[str]:
    """Sample tokens of the scenes of a split (all samples when split is None), in scene order."""
    if split is None:
        return [s["token"] for s in nusc.sample]
    wanted = set(split_scenes(nusc.dataroot, nusc.version, split))
    tokens = []
    for scene in nusc.scene:
        if scene["name"] not in wanted:
            continue
        token = scene["first_sample_token"]
        while token:
            tokens.append(token)
            token = get_record(nusc, "sample", token, f"scene {scene['name']}")["next"]
    return tokens


def sensor_to_global(nusc: Any, sd: dict) -> np.ndarray:
    """(4, 4) sensor -> ego(t) -> global for one sample_data record."""
    cs = get_record(nusc, "calibrated_sensor", sd["calibrated_sensor_token"], f"sample_data {sd['token']}")
    ego = get_record(nusc, "ego_pose", sd["ego_pose_token"], f"sample_data {sd['token']}")
    return pose_matrix(ego["translation"], ego["rotation"]) @ pose_matrix(cs["translation"], cs["rotation"])


def previous_sweeps(nusc: Any, key_sd: dict, count: int, max_lag: float) -> list[tuple[dict, float]]:
    """Up to ``count`` sample_data before ``key_sd`` along its ``prev`` links within ``max_lag`` s, newest first,
    each with its time lag (s)."""
    out, sd = [], key_sd
    while len(out) < count and sd["prev"]:
        sd = get_record(nusc, "sample_data", sd["prev"], f"sample_data {sd['token']} (prev)")
        lag = 1e-6 * (key_sd["timestamp"] - sd["timestamp"])
        if lag > max_lag:
            break
        out.append((sd, lag))
    return out


def _sweeps(nusc: Any, key_sd: dict, global_to_key: np.ndarray, count: int, max_lag: float) -> list[dict]:
    """Up to ``count`` previous sweeps, newest first, each with its transform into the keyframe LiDAR frame."""
    return [{"path": sd["filename"], "token": sd["token"], "time_lag": lag,
             "to_key": (global_to_key @ sensor_to_global(nusc, sd)).tolist()}
            for sd, lag in previous_sweeps(nusc, key_sd, count, max_lag)]


def _annotation_box(nusc: Any, ann: dict, global_to_key: np.ndarray) -> list[float]:
    """One annotation as [x, y, z, dx=l, dy=w, dz=h, yaw, vx, vy] in the keyframe LiDAR frame."""
    rot = global_to_key[:3, :3]
    centre = rot @ np.asarray(ann["translation"]) + global_to_key[:3, 3]
    yaw = yaw_of_rotation(rot @ Quaternion(ann["rotation"]).rotation_matrix)
    vel = rot @ np.nan_to_num(nusc.box_velocity(ann["token"]), nan=0.0)
    w, l, h = ann["size"]  # nuScenes size is (w, l, h)
    return [*centre.tolist(), l, w, h, yaw, float(vel[0]), float(vel[1])]


def frame_info(nusc: Any, sample_token: str, sweeps: int, max_lag: float) -> dict:
    """Everything the pipeline needs about one keyframe, as plain JSON-able data."""
    from nuscenes.eval.detection.utils import category_to_detection_name

    sample = get_record(nusc, "sample", sample_token, "the split's scene list")
    if LIDAR not in sample["data"]:
        raise ItkdError(f"sample {sample_token}: has no {LIDAR} sample_data")
    sd = get_record(nusc, "sample_data", sample["data"][LIDAR], f"sample {sample_token}")
    lidar_to_global = sensor_to_global(nusc, sd)
    global_to_key = np.linalg.inv(lidar_to_global)
    boxes, names, npts, tokens = [], [], [], []
    for ann_token in sample["anns"]:
        ann = get_record(nusc, "sample_annotation", ann_token, f"sample {sample_token}")
        inst = get_record(nusc, "instance", ann["instance_token"], f"sample_annotation {ann_token}")
        cat = get_record(nusc, "category", inst["category_token"], f"instance {inst['token']}")
        boxes.append(_annotation_box(nusc, ann, global_to_key))
        names.append(category_to_detection_name(cat["name"]) or cat["name"])
        npts.append(int(ann["num_lidar_pts"]))
        tokens.append(ann_token)
    return {
        "token": sample_token, "lidar_token": sd["token"], "lidar_path": sd["filename"],
        "timestamp": sd["timestamp"], "lidar_to_global": lidar_to_global.tolist(),
        "sweeps": _sweeps(nusc, sd, global_to_key, sweeps - 1, max_lag),
        "gt_boxes": boxes, "gt_names": names, "num_lidar_pts": npts, "ann_tokens": tokens,
    }


def unannotated(sd: dict, lidar_to_global: np.ndarray, sweeps: list[dict]) -> dict:
    """The info of a LiDAR sample_data nobody annotated: the keys of ``frame_info``, empty annotations."""
    return {
        "token": sd["token"], "lidar_token": sd["token"], "lidar_path": sd["filename"],
        "timestamp": sd["timestamp"], "lidar_to_global": lidar_to_global.tolist(), "sweeps": sweeps,
        "gt_boxes": [], "gt_names": [], "num_lidar_pts": [], "ann_tokens": [], "labeled": False,
    }
