"""Synthetic Waymo frames with known range images, as the arrays that `waymo_tool write` turns into Frames.

Numpy only: the Waymo tests import it in itkd's venv, cast rays against boxes, save the arrays with
`save_frames` and call `run_tool("write", RECORD, FOLDER)`. Rays follow frame_utils' convention: row 0 is
the highest beam, column c looks at vehicle azimuth (2 (W - c - 0.5) / W - 1) pi (range_image_utils
subtracts the extrinsic's yaw from it in the sensor frame), uniform beams sit at the centres of H equal
steps between min and max (range_image_utils.compute_inclination).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TOP, FRONT = 1, 2  # dataset_pb2.LaserName
VEHICLE, PEDESTRIAN, CYCLIST = 1, 2, 4  # label_pb2.Label.Type


def rigid(roll: float = 0.0, pitch: float = 0.0, yaw: float = 0.0, xyz=(0.0, 0.0, 0.0)) -> np.ndarray:
    """(4, 4) pose with R = Rz(yaw) Ry(pitch) Rx(roll), transform_utils.get_rotation_matrix's convention."""
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    pose = np.eye(4)
    pose[:3, :3] = rz @ ry @ rx
    pose[:3, 3] = xyz
    return pose


def uniform_inclinations(lowest: float, highest: float, height: int) -> np.ndarray:
    """(H,) ascending inclinations of uniformly spaced beams given as (min, max)."""
    return (0.5 + np.arange(height)) / height * (highest - lowest) + lowest


def pixel_rays(inclinations: np.ndarray, width: int, extrinsic: np.ndarray) -> np.ndarray:
    """(H, W, 3) unit rays of a laser's range image pixels, vehicle frame.

    Args:
        inclinations: (H,) ascending beam inclinations.
        width: W, the range image's columns.
        extrinsic: (4, 4) sensor -> vehicle.
    """
    inc = inclinations[::-1][:, None]
    az = (2.0 * (width - np.arange(width) - 0.5) / width - 1.0) * np.pi - np.arctan2(extrinsic[1, 0], extrinsic[0, 0])
    sensor = np.stack(np.broadcast_arrays(np.cos(inc) * np.cos(az), np.cos(inc) * np.sin(az), np.sin(inc)), -1)
    return sensor @ extrinsic[:3, :3].T


def box_hits(origin: np.ndarray, rays: np.ndarray, box) -> tuple[np.ndarray, np.ndarray]:
    """Entry and exit distances along each ray through a box (slab test in the box frame); inf on a miss.

    Args:
        origin: (3,) the rays' origin. rays: (..., 3) unit rays.
        box: x, y, z, length, width, height, heading.
    """
    x, y, z, length, width, height, yaw = box
    c, s = np.cos(-yaw), np.sin(-yaw)
    o = np.asarray(origin) - np.array([x, y, z])
    o = np.array([c * o[0] - s * o[1], s * o[0] + c * o[1], o[2]])
    d = np.stack([c * rays[..., 0] - s * rays[..., 1], s * rays[..., 0] + c * rays[..., 1], rays[..., 2]], -1)
    half = np.array([length, width, height]) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-half - o) / d, (half - o) / d
    near = np.nanmax(np.minimum(t1, t2), axis=-1)
    far = np.nanmin(np.maximum(t1, t2), axis=-1)
    hit = (near <= far) & (near > 0)
    return np.where(hit, near, np.inf), np.where(hit, far, np.inf)


def cast(origin: np.ndarray, rays: np.ndarray, boxes: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nearest box along each ray: entry range (inf: no hit), its exit range, its index (H, W)."""
    hits = [box_hits(origin, rays, b) for b in boxes]
    near = np.stack([h[0] for h in hits])
    owner = np.argmin(near, axis=0)
    far = np.take_along_axis(np.stack([h[1] for h in hits]), owner[None], 0)[0]
    return near.min(axis=0), far, owner


def save_frames(folder: Path, context: str, frames: list[dict[str, np.ndarray]]) -> Path:
    """f{i}.npz per frame and frames.json, the layout `waymo_tool write` reads; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, arrays in enumerate(frames):
        names.append(f"f{i}.npz")
        np.savez(folder / names[-1], **arrays)
    (folder / "frames.json").write_text(json.dumps({"context": context, "frames": names}))
    return folder


# The scene of test_waymo_metrics: one TOP laser at the vehicle origin sees three labelled boxes.
HEIGHT, WIDTH = 24, 720
INCLINATIONS = np.linspace(-0.25, 0.05, HEIGHT)  # ascending, as stored in the calibration
OBJECTS = [((14.0, 1.0, 0.8, 4.5, 2.0, 1.6, 0.3), VEHICLE), ((9.0, 6.0, 0.9, 0.8, 0.8, 1.8, 1.0), PEDESTRIAN),
           ((11.0, -7.0, 0.85, 1.8, 0.7, 1.7, -0.6), CYCLIST)]  # x, y, z, length, width, height, heading; type


def metrics_frame(index: int) -> tuple[dict[str, np.ndarray], dict]:
    """One frame of the metrics scene (objects 0.5 m further each frame; the right half of the cyclist's
    pixels in a no-label zone, raw intensity 2 + object index, elongation 0.1) and what a reader must find."""
    rays = pixel_rays(INCLINATIONS, WIDTH, np.eye(4))
    boxes = [tuple(np.array(b) + [0.5 * index, 0, 0, 0, 0, 0, 0]) for b, _ in OBJECTS]
    rng, _, owner = cast(np.zeros(3), rays, boxes)
    hit = np.isfinite(rng)
    cols = np.arange(WIDTH)[None, :].repeat(HEIGHT, 0)
    cyclist = hit & (owner == 2)
    nlz = cyclist & (cols > np.median(cols[cyclist]))
    image = np.stack([np.where(hit, rng, -1.0), np.where(hit, 2.0 + owner, 0.0), np.where(hit, 0.1, 0.0),
                      np.where(nlz, 1.0, -1.0)], -1).astype(np.float32)
    per_object = [int(np.sum(hit & (owner == k))) for k in range(len(OBJECTS))]
    arrays = {"timestamp": np.int64(1_000_000 + 100_000 * index), "pose": np.eye(4),
              "laser_names": np.array([TOP], np.int32), f"ri1_{TOP}": image, f"extrinsic_{TOP}": np.eye(4),
              f"inclinations_{TOP}": INCLINATIONS,
              "label_boxes": np.array(boxes), "label_types": np.array([t for _, t in OBJECTS], np.uint8),
              "label_ids": np.array([f"object-{k}" for k in range(len(OBJECTS))]),
              "label_speed": np.zeros((len(OBJECTS), 2)), "label_accel": np.zeros((len(OBJECTS), 2)),
              "label_num_points": np.array(per_object, np.int64), "label_difficulty": np.zeros(len(OBJECTS), np.uint8)}
    facts = {"context": "itkd_synthetic_segment", "timestamp": int(arrays["timestamp"]),
             "points": int(hit.sum() - nlz.sum()), "nlz": int(nlz.sum()), "points_per_object": per_object,
             "boxes": [list(map(float, b)) for b in boxes], "types": [int(t) for _, t in OBJECTS]}
    return arrays, facts


def metrics_segment(folder: Path, frames: int = 2) -> list[dict]:
    """Save the metrics scene's frames into ``folder`` (for `write`); returns their facts."""
    built = [metrics_frame(i) for i in range(frames)]
    save_frames(folder, built[0][1]["context"], [arrays for arrays, _ in built])
    return [facts for _, facts in built]
