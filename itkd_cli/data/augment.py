"""Training augmentations on (points, boxes): GT sampling, flips, rotation, scaling, translation.

All functions are pure: arrays in, new arrays out, randomness only from the ``rng`` passed in.
points: (N, F) with xyz first. boxes: (K, 9) x, y, z, dx, dy, dz, yaw, vx, vy (LiDAR frame).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from itkd_cli.data.gt_database import GTDatabase
from itkd_cli.data.points import bev_overlaps, limit_period, points_in_boxes
from itkd_cli.recipe.schema import AugmentConfig


def flip_x(points: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror across the x axis: y -> -y, yaw -> -yaw, vy -> -vy."""
    p, b = points.copy(), boxes.copy()
    p[:, 1] = -p[:, 1]
    b[:, 1], b[:, 6], b[:, 8] = -b[:, 1], -b[:, 6], -b[:, 8]
    return p, b


def flip_y(points: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror across the y axis: x -> -x, yaw -> pi - yaw, vx -> -vx."""
    p, b = points.copy(), boxes.copy()
    p[:, 0] = -p[:, 0]
    b[:, 0], b[:, 6], b[:, 7] = -b[:, 0], np.pi - b[:, 6], -b[:, 7]
    return p, b


def rotate(points: np.ndarray, boxes: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate the whole scene by ``angle`` (rad) around +z: positions, yaw and velocity."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]], dtype=np.float64)
    p, b = points.copy(), boxes.copy()
    p[:, 0] = c * points[:, 0] - s * points[:, 1]  # column-wise in the points' dtype: no float64 copy
    p[:, 1] = s * points[:, 0] + c * points[:, 1]
    b[:, :2] = boxes[:, :2] @ rot.T
    b[:, 7:9] = boxes[:, 7:9] @ rot.T
    b[:, 6] = boxes[:, 6] + angle
    return p, b


def scale(points: np.ndarray, boxes: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale positions, sizes and velocities by ``factor``."""
    p, b = points.copy(), boxes.copy()
    p[:, :3] *= factor
    b[:, :6] *= factor
    b[:, 7:9] *= factor
    return p, b


def translate(points: np.ndarray, boxes: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shift points and box centres by ``offset`` (3,)."""
    p, b = points.copy(), boxes.copy()
    p[:, :3] += offset.astype(points.dtype)
    b[:, :3] += offset
    return p, b


def gt_sample(points: np.ndarray, boxes: np.ndarray, labels: np.ndarray, db: GTDatabase,
              per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste database objects at their recorded place where their BEV footprint is free.

    Up to ``per_class`` candidates per class are drawn; a candidate overlapping an existing or already
    pasted box (rotated BEV test) is rejected. Scene points inside pasted boxes are removed first.

    Args:
        points: (N, F). boxes: (K, 9). labels: (K,) 1-based class ids.
        db: objects with their points. per_class: candidates drawn per class.
        rng: randomness source.

    Returns:
        points (N', F), boxes (K', 9), labels (K',) with the pasted objects appended.
    """
    chosen = []
    for label in db.labels_present():
        idx = db.indices_of(label)
        take = min(per_class, len(idx))
        if take:
            chosen.extend(rng.choice(idx, size=take, replace=False).tolist())
    if not chosen:
        return points, boxes, labels
    kept_boxes = boxes
    accepted = []
    for i in chosen:
        cand = db.boxes[i:i + 1]
        if len(kept_boxes) and bev_overlaps(cand, kept_boxes).any():
            continue
        accepted.append(i)
        kept_boxes = np.concatenate([kept_boxes, cand], axis=0)
    if not accepted:
        return points, boxes, labels
    new_boxes = db.boxes[accepted]
    inside = points_in_boxes(points, new_boxes).any(axis=1)
    pasted = [db.object_points(i) for i in accepted]
    out_points = np.concatenate([points[~inside], *pasted], axis=0).astype(points.dtype)
    return out_points, np.concatenate([boxes, new_boxes]), np.concatenate([labels, db.labels[accepted]])


def augment(points: np.ndarray, boxes: np.ndarray, labels: np.ndarray, cfg: AugmentConfig,
            rng: np.random.Generator, db: Optional[GTDatabase] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training chain (OpenPCDet order): GT sampling, flips, rotation, scaling, translation.

    Returns:
        points (N', F), boxes (K', 9) with yaw wrapped to [-pi, pi), labels (K',).
    """
    if cfg.gt_sampling and db is not None:
        points, boxes, labels = gt_sample(points, boxes, labels, db, cfg.gt_sampling_per_class, rng)
    if cfg.flip_x and rng.random() < 0.5:
        points, boxes = flip_x(points, boxes)
    if cfg.flip_y and rng.random() < 0.5:
        points, boxes = flip_y(points, boxes)
    points, boxes = rotate(points, boxes, float(rng.uniform(*cfg.rotation)))
    points, boxes = scale(points, boxes, float(rng.uniform(*cfg.scale)))
    if cfg.translate_std > 0:
        points, boxes = translate(points, boxes, rng.normal(0.0, cfg.translate_std, size=3))
    boxes = boxes.copy()
    boxes[:, 6] = limit_period(boxes[:, 6])
    return points, boxes, labels


def range_filter(points: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                 point_range: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep points inside the grid range (min inclusive, max exclusive) and boxes whose BEV centre is."""
    lo, hi = point_range[:3], point_range[3:]
    keep_p = np.ones(len(points), dtype=bool)
    for axis in range(3):  # column by column: avoids (N, 3) float64 temporaries
        col = points[:, axis]
        keep_p &= (col >= lo[axis]) & (col < hi[axis])
    keep_b = np.all((boxes[:, :2] >= np.asarray(lo[:2])) & (boxes[:, :2] < np.asarray(hi[:2])), axis=1)
    return points[keep_p], boxes[keep_b], labels[keep_b]
