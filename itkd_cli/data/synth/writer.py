"""nuScenes tables for the synthetic world: static tables, tokens, and per-frame records.

Tokens are md5 hex digests of readable keys (32 hex characters, like nuScenes), so the same seed
always gives the same tokens. Sizes are written as nuScenes `wlh` (width, length, height).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from nuscenes.utils.data_classes import Box, LidarPointCloud
from nuscenes.utils.geometry_utils import points_in_box
from pyquaternion import Quaternion

from itkd_cli.data.synth.classes import ATTRIBUTES, CLASSES, VISIBILITY_LEVELS

VERSION = "v1.0-synth"
CHANNEL = "LIDAR_TOP"
TABLES = ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
          "sample_annotation", "sample_data", "scene", "sensor", "visibility")
# Mounting of nuScenes' LIDAR_TOP: x to the right of the car, y forward, tilted by under a degree.
LIDAR_TRANSLATION = [0.943713, 0.0, 1.84023]
_NUSCENES_LIDAR_QUAT = Quaternion([0.7077955, -0.0064922, 0.0106462, -0.7063073]).normalised
LIDAR_ROTATION = [round(float(v), 10) for v in _NUSCENES_LIDAR_QUAT.elements]
BASE_TIME_US = 1_533_000_000_000_000  # 2018-07-31, like the nuScenes logs


def token(*key: object) -> str:
    """Deterministic 32-hex token of a readable key."""
    return hashlib.md5("/".join(str(k) for k in key).encode()).hexdigest()


def yaw_quaternion(yaw: float) -> list[float]:
    """(w, x, y, z) of a rotation by `yaw` around +z."""
    return [round(float(np.cos(yaw / 2)), 8), 0.0, 0.0, round(float(np.sin(yaw / 2)), 8)]


def static_tables() -> dict[str, list[dict]]:
    """The tables that do not depend on the scenes: sensor, calibration, categories, attributes."""
    sensor = {"token": token("sensor", CHANNEL), "channel": CHANNEL, "modality": "lidar"}
    calib = {"token": token("calibrated_sensor", CHANNEL), "sensor_token": sensor["token"],
             "translation": LIDAR_TRANSLATION, "rotation": LIDAR_ROTATION, "camera_intrinsic": []}
    categories = [{"token": token("category", spec.category), "name": spec.category, "description": "",
                   "index": i} for i, spec in enumerate(CLASSES.values())]
    attributes = [{"token": token("attribute", name), "name": name, "description": ""} for name in ATTRIBUTES]
    visibility = [{"token": tok, "level": level, "description": desc} for tok, level, desc in VISIBILITY_LEVELS]
    return {"sensor": [sensor], "calibrated_sensor": [calib], "category": categories,
            "attribute": attributes, "visibility": visibility}


def visibility_token(fraction: float) -> str:
    """nuScenes visibility bin ('1'..'4') of a visible fraction."""
    return "1" if fraction < 0.4 else "2" if fraction < 0.6 else "3" if fraction < 0.8 else "4"


def ego_to_global(world_heading: float, origin, ego_xy) -> tuple[list[float], list[float]]:
    """Global (translation, rotation) of the ego at scene position `ego_xy` (heading along +x)."""
    c, s = np.cos(world_heading), np.sin(world_heading)
    x, y = ego_xy
    trans = [round(origin[0] + c * x - s * y, 4), round(origin[1] + s * x + c * y, 4), 0.0]
    return trans, yaw_quaternion(world_heading)


def global_box(world_heading: float, origin, pose, size) -> dict:
    """Annotation geometry of a thing at scene pose (x, y, z, yaw): translation, size (wlh), rotation."""
    c, s = np.cos(world_heading), np.sin(world_heading)
    x, y = pose[0], pose[1]
    trans = [round(origin[0] + c * x - s * y, 4), round(origin[1] + s * x + c * y, 4), round(float(pose[2]), 4)]
    return {"translation": trans, "size": [round(size[1], 3), round(size[0], 3), round(size[2], 3)],
            "rotation": yaw_quaternion(float(pose[3]) + world_heading)}


def points_to_global(points: np.ndarray, ego_trans, ego_rot) -> np.ndarray:
    """Sensor-frame points (N, 5) to the global frame (3, N) exactly as the devkit does it."""
    pc = LidarPointCloud(points.copy().reshape(-1, 5)[:, :4].T)  # same memory layout as from_file
    pc.rotate(Quaternion(LIDAR_ROTATION).rotation_matrix)
    pc.translate(np.array(LIDAR_TRANSLATION))
    pc.rotate(Quaternion(ego_rot).rotation_matrix)
    pc.translate(np.array(ego_trans))
    return pc.points[:3]


def count_in_boxes(xyz: np.ndarray, boxes: list[dict]) -> list[int]:
    """Points of (3, N) global `xyz` inside each box, with the devkit's `points_in_box`.

    Points are pre-selected by an x-sorted slice and a y band, which gives the same per-point answer
    as testing every point, at a fraction of the cost.
    """
    order = np.argsort(xyz[0], kind="stable")
    xs = xyz[0, order]
    counts = []
    for b in boxes:
        radius = float(np.linalg.norm(b["size"])) / 2 + 0.01
        lo, hi = np.searchsorted(xs, b["translation"][0] - radius), np.searchsorted(xs, b["translation"][0] + radius)
        cand = order[lo:hi]
        cand = cand[np.abs(xyz[1, cand] - b["translation"][1]) <= radius]
        box = Box(b["translation"], b["size"], Quaternion(b["rotation"]))
        counts.append(int(points_in_box(box, xyz[:, cand]).sum()) if len(cand) else 0)
    return counts


def write_tables(version_dir: Path, tables: dict[str, list[dict]], splits: dict[str, list[str]]) -> None:
    """Write the 13 tables and splits.json into a (temporary) version folder."""
    version_dir.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        (version_dir / f"{name}.json").write_text(json.dumps(tables[name], indent=0) + "\n")
    (version_dir / "splits.json").write_text(json.dumps(splits, indent=2) + "\n")
