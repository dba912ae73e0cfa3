"""Render one scene: every sweep through the LiDAR, keyframes annotated, records linked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pyquaternion import Quaternion

from itkd_cli.data.synth.classes import CLASSES
from itkd_cli.data.synth.layout import build_world
from itkd_cli.data.synth.lidar import Lidar
from itkd_cli.data.synth.presets import Preset
from itkd_cli.data.synth.world import KEYFRAME_DT, World
from itkd_cli.data.synth.writer import (
    BASE_TIME_US, CHANNEL, LIDAR_ROTATION, LIDAR_TRANSLATION, count_in_boxes, ego_to_global, global_box,
    points_to_global, token, visibility_token,
)

SENSOR_ROT = Quaternion(LIDAR_ROTATION).rotation_matrix  # sensor -> ego (the ego is level, heading +x)


def sweep_times(frames: int, between: int) -> list[tuple[float, int | None, int]]:
    """(time s, keyframe index or None, sample index it belongs to) of every sweep, in order.

    Sweeps between keyframes k and k+1 belong to sample k+1; `between` lead-in sweeps precede
    keyframe 0 so that multi-sweep loading works from the first sample on.
    """
    step = KEYFRAME_DT / (between + 1)
    out = [(-KEYFRAME_DT + j * step, None, 0) for j in range(1, between + 1)]
    for k in range(frames):
        out.append((k * KEYFRAME_DT, k, k))
        if k < frames - 1:
            out += [(k * KEYFRAME_DT + j * step, None, k + 1) for j in range(1, between + 1)]
    return out


def _link(records: list[dict]) -> None:
    """Fill prev/next of records given in order."""
    for a, b in zip(records, records[1:]):
        a["next"], b["prev"] = b["token"], a["token"]


class SceneRenderer:
    """Renders scene `index` of a dataset into `root` and returns its table records."""

    def __init__(self, root: Path, preset: Preset, frames: int, seed: int, lidar: Lidar) -> None:
        self.root, self.preset, self.frames, self.seed, self.lidar = root, preset, frames, seed, lidar
        self.calib_token = token("calibrated_sensor", CHANNEL)

    def render(self, index: int, name: str, progress=None) -> tuple[dict[str, list[dict]], dict]:
        """Render all sweeps of one scene.

        Args:
            index: Scene index (seeds the layout and the noise).
            name: Scene name, e.g. scene-0001.
            progress: Optional callable(is_key_frame) called after each sweep.

        Returns:
            (records per table, stats with keyframes, sweeps, points, annotations).
        """
        world = build_world(np.random.default_rng([self.seed, index, 0]), self.preset, self.frames)
        key = (self.seed, index)
        log = {"token": token(*key, "log"), "logfile": f"synth-{self.seed}-{index:04d}", "vehicle": "synth",
               "date_captured": "2018-07-31", "location": "synth-town"}
        samples = [{"token": token(*key, "sample", k), "timestamp": 0, "prev": "", "next": "",
                    "scene_token": token(*key, "scene")} for k in range(self.frames)]
        tables = {"log": [log], "sample": samples, "sample_data": [], "ego_pose": [], "sample_annotation": []}
        tracks: dict[int, list[dict]] = {}
        stats = {"keyframes": 0, "sweeps": 0, "points": 0, "annotations": 0}
        for ti, (t, k, sample_index) in enumerate(sweep_times(self.frames, self.preset.sweeps_between)):
            stamp = BASE_TIME_US + index * 3_600_000_000 + 1_000_000 + int(round(t * 1e6))
            points, ego, vis, poses = self._sweep(world, t, np.random.default_rng([self.seed, index, 1, ti]))
            folder = "samples" if k is not None else "sweeps"
            filename = f"{folder}/{CHANNEL}/{log['logfile']}__{CHANNEL}__{stamp}.pcd.bin"
            points.tofile(self.root / filename)
            pose = {"token": token(*key, "ego_pose", ti), "timestamp": stamp, "rotation": ego[1], "translation": ego[0]}
            tables["ego_pose"].append(pose)
            tables["sample_data"].append({
                "token": token(*key, "sample_data", ti), "sample_token": samples[sample_index]["token"],
                "ego_pose_token": pose["token"], "calibrated_sensor_token": self.calib_token, "timestamp": stamp,
                "fileformat": "pcd", "is_key_frame": k is not None, "height": 0, "width": 0,
                "filename": filename, "prev": "", "next": ""})
            stats["sweeps" if k is None else "keyframes"] += 1
            if k is not None:
                samples[k]["timestamp"] = stamp
                stats["points"] += len(points)
                anns = self._annotate(world, samples[k]["token"], k, points, ego, vis, poses, tracks)
                tables["sample_annotation"] += anns
                stats["annotations"] += len(anns)
            if progress is not None:
                progress(k is not None)
        _link(samples)
        _link(tables["sample_data"])
        tables["instance"] = self._instances(world, tracks)
        tables["scene"] = [{"token": token(*key, "scene"), "log_token": log["token"], "nbr_samples": self.frames,
                            "first_sample_token": samples[0]["token"], "last_sample_token": samples[-1]["token"],
                            "name": name, "description": f"synthetic street, ego at {world.ego_speed:.1f} m/s"}]
        return tables, stats

    def _sweep(self, world: World, t: float, rng: np.random.Generator):
        """Ray-cast the world at time t; returns (points, (ego translation, rotation), visibility, poses)."""
        ego_xy = world.ego_xy(t)
        origin = np.array([ego_xy[0], ego_xy[1], 0.0]) + np.array(LIDAR_TRANSLATION)
        poses = world.poses(t)
        scan = self.lidar.scan(world.things, poses, SENSOR_ROT, origin, rng)
        return scan.points, ego_to_global(world.heading, world.origin, ego_xy), scan.visibility, poses

    def _annotate(self, world: World, sample_token: str, k: int, points, ego, vis, poses, tracks) -> list[dict]:
        """Annotations of one keyframe: classed things within range that have at least one point."""
        ego_xy = np.array(world.ego_xy(k * KEYFRAME_DT))
        near = [i for i, th in enumerate(world.things) if th.cls is not None
                and np.hypot(*(poses[i, :2] - ego_xy)) <= self.preset.annotation_range]
        boxes = [global_box(world.heading, world.origin, poses[i], world.things[i].size) for i in near]
        counts = count_in_boxes(points_to_global(points, *ego), boxes)
        out = []
        for i, box, n in zip(near, boxes, counts):
            if n < 1:
                continue
            th = world.things[i]
            ann = {"token": token(self.seed, sample_token, "ann", i), "sample_token": sample_token,
                   "instance_token": "", "visibility_token": visibility_token(float(np.nan_to_num(vis[i]))),
                   "attribute_tokens": [token("attribute", th.attribute)] if th.attribute else [],
                   **box, "prev": "", "next": "", "num_lidar_pts": n, "num_radar_pts": 0}
            tracks.setdefault(i, []).append(ann)
            out.append(ann)
        return out

    @staticmethod
    def _instances(world: World, tracks: dict[int, list[dict]]) -> list[dict]:
        """One instance per annotated thing; its annotations linked prev/next."""
        out = []
        for i, anns in sorted(tracks.items()):
            inst = token(anns[0]["token"], "instance")
            for ann in anns:
                ann["instance_token"] = inst
            _link(anns)
            category = token("category", CLASSES[world.things[i].cls].category)
            out.append({"token": inst, "category_token": category, "nbr_annotations": len(anns),
                        "first_annotation_token": anns[0]["token"], "last_annotation_token": anns[-1]["token"]})
        return out
