"""A tiny converted Waymo root, written the way the Waymo venv's `tool.py convert` writes one, for tests that
need no Waymo venv: known points (some inside each labelled box), labels, poses, two splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from itkd_cli.data.waymo import FORMAT, FORMAT_VERSION, MANIFEST, SEGMENTS, SEGMENT_FORMAT_VERSION

# (x, y, z, length, width, height, heading), type, speed, points inside
OBJECTS = [((12.0, 3.0, 0.8, 4.5, 2.0, 1.6, 0.3), 1, (5.0, 0.5), 40),
           ((6.0, -5.0, 0.9, 0.8, 0.8, 1.8, 1.0), 2, (0.0, 1.0), 12),
           ((-8.0, 6.0, 0.85, 1.8, 0.7, 1.7, -0.6), 4, (3.0, 0.0), 15),
           ((20.0, -10.0, 1.0, 0.5, 0.5, 2.0, 0.0), 3, (0.0, 0.0), 6)]  # a sign: not a recipe class


def frame_points(rng: np.random.Generator) -> np.ndarray:
    """(N, 5) float32 x, y, z, raw intensity, elongation in the vehicle frame: points in every box + ground."""
    parts = []
    for (x, y, z, length, width, height, yaw), _, _, n in OBJECTS:
        local = (rng.random((n, 3)) - 0.5) * 0.8 * np.array([length, width, height])
        c, s = np.cos(yaw), np.sin(yaw)
        parts.append(local @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]]) + [x, y, z])
    parts.append(rng.uniform([-30, -30, -0.1], [-20, -20, 0.1], size=(80, 3)))
    xyz = np.concatenate(parts)
    return np.column_stack([xyz, rng.uniform(0, 3, len(xyz)), np.full(len(xyz), 0.1)]).astype(np.float32)


def write_segment(root: Path, name: str, frames: int, rng: np.random.Generator, finished: bool = True) -> Path:
    """One converted segment folder; without ``finished`` its segment.json (the done marker) is missing."""
    folder = root / SEGMENTS / name
    folder.mkdir(parents=True)
    entries = []
    for i in range(frames):
        np.save(folder / f"{i:04d}.npy", frame_points(rng))
        pose = np.eye(4)
        pose[:3, 3] = [100.0 + 2 * i, 50.0, 0.0]
        entries.append({
            "index": i, "timestamp": 1_000_000 + 100_000 * i, "points_file": f"{i:04d}.npy",
            "num_points": int(sum(o[3] for o in OBJECTS) + 80), "pose": pose.ravel().tolist(),
            "labels": {"boxes": [list(o[0]) for o in OBJECTS], "speed": [list(o[2]) for o in OBJECTS],
                       "types": [o[1] for o in OBJECTS], "ids": [f"{name}-obj{k}" for k in range(len(OBJECTS))],
                       "num_points": [o[3] for o in OBJECTS], "difficulty": [0, 0, 2, 0]}})
    if finished:
        (folder / "segment.json").write_text(json.dumps({
            "format": "itkd-waymo-segment", "format_version": SEGMENT_FORMAT_VERSION, "source": f"/src/{name}.tfrecord",
            "source_bytes": 1, "options": {"lidars": "all", "returns": 2}, "context": name, "frames": entries}))
    return folder


def make_root(root: Path, splits: dict[str, dict[str, int]] | None = None, seed: int = 0) -> Path:
    """A converted root: ``splits`` maps split -> {segment: frames} (default train: 2 segments, val: 1)."""
    splits = splits or {"train": {"seg-a": 3, "seg-b": 2}, "val": {"seg-c": 2}}
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for segments in splits.values():
        for name, frames in segments.items():
            write_segment(root, name, frames, rng)
    (root / MANIFEST).write_text(json.dumps({
        "format": FORMAT, "format_version": FORMAT_VERSION, "options": {"lidars": "all", "returns": 2},
        "splits": {split: sorted(segments) for split, segments in splits.items()}}))
    return root
