"""The synthetic world as Waymo segments (`itkd data synth --format waymo`).

Every sweep of a scene becomes one labelled Waymo Frame of one segment (a TFRecord): its TOP LiDAR
range image is rendered here by the same ray caster as the nuScenes world, on Waymo's pixel grid
(row 0 = highest beam, column c at azimuth pi - (c + 0.5) * step), and the Waymo venv's worker
(`tool.py write`) turns the arrays into Frame protos with zlib-compressed range images, as released data
stores them. Waymo labels vehicles (motorcycles included), pedestrians and cyclists (bicycles with a
rider); barriers, cones and parked bicycles are scenery there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from itkd_cli.core.waymo_env import run_tool
from itkd_cli.data.points import pose_matrix, points_in_boxes
from itkd_cli.data.synth.layout import build_world
from itkd_cli.data.synth.lidar import Lidar
from itkd_cli.data.synth.presets import Preset
from itkd_cli.data.synth.scene import sweep_times
from itkd_cli.data.synth.world import World
from itkd_cli.data.synth.writer import BASE_TIME_US, ego_to_global

TOP = 1  # dataset_pb2.LaserName.TOP
# The TOP LiDAR's mounting on the vehicle (sensor -> vehicle frame, level, looking along +x), close to Waymo's.
TOP_TRANSLATION = np.array([1.43, 0.0, 2.184])
VEHICLE, PEDESTRIAN, CYCLIST = 1, 2, 4  # label_pb2.Label.Type
WAYMO_TYPES = {"car": VEHICLE, "truck": VEHICLE, "bus": VEHICLE, "trailer": VEHICLE, "construction_vehicle": VEHICLE,
               "motorcycle": VEHICLE, "pedestrian": PEDESTRIAN, "bicycle": CYCLIST}
TRAIN_FOLDER, VAL_FOLDER = "training", "validation"  # Waymo's own split folders
UNLABELED_FOLDER = "unlabeled"  # the segments of --unlabeled-scenes: frames without labels

Progress = Callable[[int, int], None]


def waymo_type(cls: Optional[str], attribute: Optional[str]) -> int:
    """Waymo label type of a synthetic thing, 0 when Waymo would not label it."""
    if cls == "bicycle" and attribute != "cycle.with_rider":
        return 0
    return WAYMO_TYPES.get(cls or "", 0)


def waymo_columns(width: int) -> np.ndarray:
    """For each range-image column c, the ray caster's column k looking the same way.

    With the caster's columns at (k + 0.5) * step (``Lidar(azimuth_offset=step / 2)``), Waymo's column c at
    pi - (c + 0.5) * step is k = W / 2 - 1 - c (mod W); W must be even.
    """
    return (width // 2 - 1 - np.arange(width)) % width


class SegmentRenderer:
    """Renders scene `index` as the frames of one Waymo segment."""

    def __init__(self, preset: Preset, frames: int, seed: int) -> None:
        self.preset, self.frames, self.seed = preset, frames, seed
        step = np.deg2rad(preset.azimuth_step_deg)
        self.lidar = Lidar(preset, azimuth_offset=step / 2)
        width = len(self.lidar.azim)
        if width % 2:
            raise ValueError(f"preset {preset.name}: {width} azimuth columns; the Waymo grid needs an even count")
        self.columns = waymo_columns(width)

    def render(self, index: int, name: str, frames_dir: Path, progress: Optional[Callable[[], None]] = None,
               labeled: bool = True) -> dict:
        """Write the segment's frames as .npz files plus frames.json into ``frames_dir``; returns counts.

        Without ``labeled`` the frames carry no label (the same points: the world is seeded by ``index`` alone).
        """
        world = build_world(np.random.default_rng([self.seed, index, 0]), self.preset, self.frames)
        frames_dir.mkdir(parents=True)
        files, stats = [], {"frames": 0, "points": 0, "annotations": 0}
        for ti, (t, _, _) in enumerate(sweep_times(self.frames, self.preset.sweeps_between)):
            stamp = BASE_TIME_US + index * 3_600_000_000 + 1_000_000 + int(round(t * 1e6))
            arrays, points = self._frame(world, t, stamp, np.random.default_rng([self.seed, index, 1, ti]))
            arrays["label_ids"] = np.array([f"{name}-{i}" for i in arrays.pop("thing")], dtype=str)
            if not labeled:
                arrays.update(no_labels())
            files.append(f"frame_{ti:04d}.npz")
            np.savez(frames_dir / files[-1], **arrays)
            stats["frames"] += 1
            stats["points"] += points
            stats["annotations"] += len(arrays["label_types"])
            if progress is not None:
                progress()
        (frames_dir / "frames.json").write_text(json.dumps({"context": name, "frames": files}))
        return stats

    def _frame(self, world: World, t: float, stamp: int, rng: np.random.Generator) -> tuple[dict, int]:
        """The arrays of one Frame (see tool.py write) and its number of points."""
        ego = np.array([*world.ego_xy(t), 0.0])
        poses = world.poses(t)
        image = self.lidar.image(world.things, poses, np.eye(3), ego + TOP_TRANSLATION, rng)
        ri = np.zeros((*image.range.shape, 4), np.float32)
        ri[..., 0], ri[..., 1], ri[..., 3] = image.range, image.intensity, -1.0  # elongation 0; no no-label zone
        ri = ri[::-1][:, self.columns]  # caster grid (ascending beams) -> Waymo's pixel order
        hit = image.range > 0
        vehicle_points = self.lidar.dirs[hit] * image.range[hit][:, None] + TOP_TRANSLATION
        labels = self._labels(world, poses, ego, vehicle_points)
        translation, rotation = ego_to_global(world.heading, world.origin, ego[:2])
        arrays = {"timestamp": np.int64(stamp), "pose": pose_matrix(translation, rotation),
                  "laser_names": np.array([TOP], np.int32), f"ri1_{TOP}": ri,
                  f"extrinsic_{TOP}": _translation(TOP_TRANSLATION), f"inclinations_{TOP}": self.lidar.elev.copy(),
                  **labels}
        return arrays, int(hit.sum())

    def _labels(self, world: World, poses: np.ndarray, ego: np.ndarray, points: np.ndarray) -> dict:
        """Labels of the things Waymo annotates, in range and hit by at least one point (vehicle frame)."""
        candidates = [i for i, th in enumerate(world.things) if waymo_type(th.cls, th.attribute)
                      and np.hypot(*(poses[i, :2] - ego[:2])) <= self.preset.annotation_range]
        boxes = np.array([[poses[i, 0] - ego[0], poses[i, 1] - ego[1], poses[i, 2], *world.things[i].size, poses[i, 3]]
                          for i in candidates], np.float64).reshape(-1, 7)
        counts = points_in_boxes(points, boxes).sum(axis=0) if len(boxes) else np.zeros(0, np.int64)
        keep = counts > 0
        things = [world.things[i] for i, k in zip(candidates, keep) if k]
        return {"thing": [i for i, k in zip(candidates, keep) if k], "label_boxes": boxes[keep],
                "label_types": np.array([waymo_type(th.cls, th.attribute) for th in things], np.uint8),
                "label_speed": np.array([th.vel for th in things], np.float64).reshape(-1, 2),
                "label_accel": np.zeros((len(things), 2)), "label_num_points": counts[keep].astype(np.int64),
                "label_difficulty": np.zeros(len(things), np.uint8)}


def no_labels() -> dict[str, np.ndarray]:
    """The label arrays of a frame without labels (K = 0), in the dtypes ``_labels`` gives."""
    return {"label_boxes": np.zeros((0, 7)), "label_types": np.zeros(0, np.uint8),
            "label_speed": np.zeros((0, 2)), "label_accel": np.zeros((0, 2)),
            "label_num_points": np.zeros(0, np.int64), "label_difficulty": np.zeros(0, np.uint8),
            "label_ids": np.zeros(0, dtype="<U1")}


def _translation(t: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, 3] = t
    return out


def render_waymo(tmp: Path, p: Preset, args: dict, progress: Optional[Progress]) -> dict:
    """Render every scene into ``tmp/training`` and ``tmp/validation`` as segment TFRecords (the scenes of
    ``args["unlabeled_scenes"]``, after those, into ``tmp/unlabeled`` without labels); returns the summary."""
    renderer = SegmentRenderer(p, args["frames"], args["seed"])
    per_scene = len(sweep_times(args["frames"], p.sweeps_between))
    unlabeled = args.get("unlabeled_scenes", 0)
    total, done = (args["scenes"] + unlabeled) * per_scene, [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    n_val = args["val_scenes"]
    stats = {"frames": 0, "points": 0, "annotations": 0}
    splits = {TRAIN_FOLDER: 0, VAL_FOLDER: 0, **({UNLABELED_FOLDER: 0} if unlabeled else {})}
    unlabeled_frames = 0
    for i in range(args["scenes"] + unlabeled):
        name = f"synth-{args['seed']}-{i + 1:04d}"
        labeled = i < args["scenes"]
        folder = UNLABELED_FOLDER if not labeled else VAL_FOLDER if i >= args["scenes"] - n_val else TRAIN_FOLDER
        (tmp / folder).mkdir(exist_ok=True)
        frames_dir = tmp / f".frames-{i}"
        counts = renderer.render(i, name, frames_dir, tick, labeled=labeled)
        if labeled:
            for key, value in counts.items():
                stats[key] += value
        else:
            unlabeled_frames += counts["frames"]
        run_tool("write", tmp / folder / f"segment-{name}.tfrecord", frames_dir)
        shutil.rmtree(frames_dir)
        splits[folder] += 1
    summary = {"version": "waymo", "preset": p.name, "seed": args["seed"], "scenes": args["scenes"],
               "frames": args["frames"], "waymo_frames": stats["frames"], "annotations": stats["annotations"],
               "points_per_frame": round(stats["points"] / max(stats["frames"], 1), 1), "splits": splits}
    if unlabeled:  # counts above are the labeled scenes'
        summary.update(unlabeled_scenes=unlabeled, unlabeled_frames=unlabeled_frames)
    return summary
