"""A tiny nuScenes-format world for data-pipeline tests, with known poses, boxes and points.

One scene of two keyframes (0.5 s apart); each keyframe has one earlier non-key sweep (0.05 s before)
holding the SAME global points seen from the sweep's pose, so a correct sweep transform reproduces
the keyframe points. Objects: a moving car (+1 m in x per frame -> vx = 2 m/s global), a pedestrian,
and an animal (not a detection class). Points are placed inside boxes, so num_lidar_pts is exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pyquaternion import Quaternion

VERSION = "v1.0-tiny"
SENSOR = {"translation": [0.9, 0.1, 1.8], "rotation": list(Quaternion(axis=[0, 0, 1], angle=np.pi / 2).elements)}
# (category, size w,l,h, centre at frame 0 (global), yaw, displacement per frame, points inside)
OBJECTS = [
    ("vehicle.car", [2.0, 4.0, 1.5], [12.0, 4.0, 0.8], 0.3, [1.0, 0.0, 0.0], 40),
    ("human.pedestrian.adult", [0.6, 0.7, 1.7], [6.0, -5.0, 0.9], -1.0, [0.0, 0.0, 0.0], 12),
    ("animal", [0.5, 0.8, 0.5], [-6.0, 3.0, 0.3], 0.0, [0.0, 0.0, 0.0], 5),
]


def ego_pose(t: int) -> dict:
    """Ego pose of keyframe t (sweeps use t - 0.1)."""
    return {"translation": [2.0 * t, 0.5 * t, 0.0], "rotation": list(Quaternion(axis=[0, 0, 1], angle=0.2 * t).elements)}


def matrix(rec: dict) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Quaternion(rec["rotation"]).rotation_matrix
    m[:3, 3] = rec["translation"]
    return m


def global_points(t: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 3) global points of frame t: some inside every box plus background outside all boxes."""
    parts = []
    for _, (w, l, h), centre, yaw, step, n in OBJECTS:
        local = (rng.random((n, 3)) - 0.5) * 0.8 * np.array([l, w, h])
        rot = Quaternion(axis=[0, 0, 1], angle=yaw).rotation_matrix
        parts.append(local @ rot.T + np.asarray(centre) + t * np.asarray(step))
    parts.append(rng.uniform([-30, -30, -1.5], [-20, -20, 0.0], size=(100, 3)))
    return np.concatenate(parts)


def write_points(path: Path, pts_global: np.ndarray, pose: dict) -> None:
    """Store global points in the sensor frame of ``pose`` as a 5-float .pcd.bin."""
    to_sensor = np.linalg.inv(matrix(pose) @ matrix(SENSOR))
    local = pts_global @ to_sensor[:3, :3].T + to_sensor[:3, 3]
    rec = np.zeros((len(local), 5), np.float32)
    rec[:, :3], rec[:, 3] = local, 7.0
    path.parent.mkdir(parents=True, exist_ok=True)
    rec.tofile(path)


def make_world(root: Path, frames: int = 2, seed: int = 0) -> Path:
    """Write the tiny world under ``root`` and return root."""
    rng = np.random.default_rng(seed)
    t = {n: [] for n in ("sample", "sample_data", "ego_pose", "sample_annotation")}
    cats = [{"token": f"cat{i}", "name": o[0], "description": "", "index": i} for i, o in enumerate(OBJECTS)]
    inst = [{"token": f"inst{i}", "category_token": f"cat{i}", "nbr_annotations": frames,
             "first_annotation_token": f"ann{i}_0", "last_annotation_token": f"ann{i}_{frames - 1}"}
            for i in range(len(OBJECTS))]
    sd_chain = []
    for f in range(frames):
        ts = 1_000_000 + f * 500_000
        pts = global_points(f, rng)
        for kind, dt, pose in (("sweep", -50_000, ego_pose(f - 0.1)), ("key", 0, ego_pose(f))):
            token = f"sd_{kind}{f}"
            folder = "samples" if kind == "key" else "sweeps"
            fname = f"{folder}/LIDAR_TOP/f{f}_{kind}.pcd.bin"
            write_points(root / fname, pts, pose)
            t["ego_pose"].append({"token": f"ep_{token}", "timestamp": ts + dt, **pose})
            sd_chain.append({"token": token, "sample_token": f"s{f}", "ego_pose_token": f"ep_{token}",
                             "calibrated_sensor_token": "cs0", "timestamp": ts + dt, "fileformat": "pcd",
                             "is_key_frame": kind == "key", "height": 0, "width": 0, "filename": fname})
        t["sample"].append({"token": f"s{f}", "timestamp": ts, "scene_token": "scene0",
                            "prev": f"s{f - 1}" if f else "", "next": f"s{f + 1}" if f < frames - 1 else ""})
        for i, (_, size, centre, yaw, step, n) in enumerate(OBJECTS):
            t["sample_annotation"].append({
                "token": f"ann{i}_{f}", "sample_token": f"s{f}", "instance_token": f"inst{i}",
                "visibility_token": "4", "attribute_tokens": [],
                "translation": list(np.asarray(centre) + f * np.asarray(step)), "size": size,
                "rotation": list(Quaternion(axis=[0, 0, 1], angle=yaw).elements),
                "prev": f"ann{i}_{f - 1}" if f else "", "next": f"ann{i}_{f + 1}" if f < frames - 1 else "",
                "num_lidar_pts": n, "num_radar_pts": 0})
    for i, sd in enumerate(sd_chain):
        sd["prev"] = sd_chain[i - 1]["token"] if i else ""
        sd["next"] = sd_chain[i + 1]["token"] if i < len(sd_chain) - 1 else ""
    tables = {
        "category": cats, "attribute": [], "instance": inst,
        "visibility": [{"token": "4", "level": "v80-100", "description": ""}],
        "sensor": [{"token": "sensor0", "channel": "LIDAR_TOP", "modality": "lidar"}],
        "calibrated_sensor": [{"token": "cs0", "sensor_token": "sensor0", "camera_intrinsic": [], **SENSOR}],
        "log": [{"token": "log0", "logfile": "tiny", "vehicle": "v", "date_captured": "2020-01-01",
                 "location": "singapore-onenorth"}],
        "map": [{"token": "map0", "log_tokens": ["log0"], "category": "semantic_prior", "filename": ""}],
        "scene": [{"token": "scene0", "log_token": "log0", "nbr_samples": frames, "first_sample_token": "s0",
                   "last_sample_token": f"s{frames - 1}", "name": "scene-tiny", "description": ""}],
        "sample_data": sd_chain, **{k: v for k, v in t.items() if k != "sample_data"},
    }
    table_dir = root / VERSION
    table_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        (table_dir / f"{name}.json").write_text(json.dumps(rows))
    (table_dir / "splits.json").write_text(json.dumps({"tiny_train": ["scene-tiny"], "tiny_val": ["scene-tiny"]}))
    return root


def tiny_recipe(root: Path, *overrides: str):
    """synth-pillar pointed at the tiny world (2 sweeps, no workers, cache inside root)."""
    from itkd_cli.recipe.load import load_recipe

    base = [f"dataset.root={root}", f"dataset.version={VERSION}", "dataset.sweeps=2", "dataset.workers=0",
            f"dataset.cache_dir={root / 'cache'}", "dataset.train_split=tiny_train", "dataset.val_split=tiny_val",
            # tests count heatmap channels per task: pin nuScenes' six task heads
            "model.head.tasks=[[car],[truck,construction_vehicle],[bus,trailer],[barrier],[motorcycle,bicycle],[pedestrian,traffic_cone]]"]
    return load_recipe("synth-pillar", [*base, *overrides])


def expected_box(frame: int, obj: int) -> np.ndarray:
    """Hand-derived (x, y, z, dx, dy, dz, yaw, vx, vy) of an object in keyframe ``frame``'s LiDAR frame."""
    _, (w, l, h), centre, yaw, step, _ = OBJECTS[obj]
    to_key = np.linalg.inv(matrix(ego_pose(frame)) @ matrix(SENSOR))
    c = to_key[:3, :3] @ (np.asarray(centre) + frame * np.asarray(step)) + to_key[:3, 3]
    ego_yaw, sensor_yaw = 0.2 * frame, np.pi / 2
    v = to_key[:3, :3] @ (np.asarray(step) / 0.5)  # one step per 0.5 s
    return np.array([*c, l, w, h, yaw - ego_yaw - sensor_yaw, v[0], v[1]])
