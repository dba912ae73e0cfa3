"""Point clouds and rigid transforms: .pcd.bin reading, poses, sweeps, box membership.

Box convention (OpenPCDet): (x, y, z, dx, dy, dz, yaw, vx, vy) in the LiDAR frame, dx along the heading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from pyquaternion import Quaternion

from itkd_cli.core.errors import ItkdError
from itkd_cli.data.waymo import KIND as WAYMO, read_waymo_points

# nuScenes LiDAR files hold x, y, z, intensity, ring as float32.
PCD_FLOATS = 5
# Sweep points within this x/y distance (m) of their sensor hit the ego vehicle and are dropped.
EGO_RADIUS = 1.0


def read_pcd_bin(path: str | Path, token: str = "") -> np.ndarray:
    """Read a nuScenes ``.pcd.bin`` file.

    Args:
        path: File of float32 records of ``PCD_FLOATS`` values.
        token: sample_data token, only to name the frame in errors.

    Returns:
        (N, 4) float32 x, y, z, intensity (ring dropped). An empty file gives N = 0.

    Raises:
        ItkdError: the file is missing, its size is not a whole number of records, or it holds NaN/Inf.
    """
    path = Path(path)
    where = f"{path} (sample_data {token})" if token else str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ItkdError(f"{where}: point file not found", hint="check dataset.root and the samples/ sweeps/ folders") from None
    except OSError as exc:
        raise ItkdError(f"{where}: cannot read ({exc.strerror or exc})") from None
    record = 4 * PCD_FLOATS
    if len(raw) % record:
        raise ItkdError(
            f"{where}: {len(raw)} bytes is not a multiple of {record} ({PCD_FLOATS} float32 per point); "
            "file truncated or not a nuScenes LiDAR file")
    pts = np.frombuffer(raw, dtype=np.float32).reshape(-1, PCD_FLOATS)
    # A NaN/Inf value would reach the pillar features and the loss: refuse the file, never train on it.
    bad = pts.size - int(np.count_nonzero(np.isfinite(pts)))
    if bad:
        # `itkd data synth` reuses a folder holding its world: a damaged synthetic file needs a fresh folder.
        raise ItkdError(f"{where}: {bad} non-finite values (NaN/Inf) in {len(pts)} points; file corrupt",
                        hint="restore it from the dataset's archive (the synthetic world: write a fresh copy with "
                             "`itkd data synth --out NEW_DIR` and the same --preset / --seed)")
    return np.ascontiguousarray(pts[:, :4])


def pose_matrix(translation: Sequence[float], rotation: Sequence[float], inverse: bool = False) -> np.ndarray:
    """4x4 homogeneous transform of a nuScenes pose record (quaternion w, x, y, z).

    Args:
        translation: (3,) metres.
        rotation: (4,) quaternion w, x, y, z.
        inverse: return the inverse transform instead.

    Returns:
        (4, 4) float64.
    """
    rot = Quaternion(rotation).rotation_matrix
    t = np.asarray(translation, dtype=np.float64)
    out = np.eye(4)
    if inverse:
        out[:3, :3] = rot.T
        out[:3, 3] = -rot.T @ t
    else:
        out[:3, :3] = rot
        out[:3, 3] = t
    return out


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to the xyz columns of (N, F) points; other features are kept."""
    out = points.copy()
    xyz = points[:, :3].astype(np.float64)
    out[:, :3] = (xyz @ matrix[:3, :3].T + matrix[:3, 3]).astype(points.dtype)
    return out


def yaw_of_rotation(rot: np.ndarray) -> float:
    """Heading of a 3x3 rotation: angle of its rotated +x axis in the xy plane (devkit quaternion_yaw)."""
    v = rot @ np.array([1.0, 0.0, 0.0])
    return float(np.arctan2(v[1], v[0]))


def limit_period(angle: np.ndarray) -> np.ndarray:
    """Wrap angles into [-pi, pi)."""
    return angle - np.floor(angle / (2 * np.pi) + 0.5) * 2 * np.pi


def points_in_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Which points lie inside which boxes (faces inclusive, like the devkit's points_in_box).

    Per box, a cheap BEV square test (half-diagonal + 1 cm, in the points' dtype) picks candidate
    points; the exact test in the box's own axes then runs in float64 on those only.

    Args:
        points: (N, >=3) xyz in the boxes' frame.
        boxes: (K, >=7) x, y, z, dx, dy, dz, yaw.

    Returns:
        (N, K) bool.
    """
    out = np.zeros((len(points), len(boxes)), dtype=bool)
    if len(points) == 0:
        return out
    x, y = points[:, 0], points[:, 1]
    for j, b in enumerate(boxes.astype(np.float64)):
        reach = 0.5 * np.hypot(b[3], b[4]) + 0.01
        near = np.flatnonzero((np.abs(x - b[0]) <= reach) & (np.abs(y - b[1]) <= reach))
        if near.size == 0:
            continue
        d = points[near, :3].astype(np.float64) - b[:3]
        cos, sin = np.cos(b[6]), np.sin(b[6])
        # Rotate by -yaw into the box's own axes.
        lx = d[:, 0] * cos + d[:, 1] * sin
        ly = -d[:, 0] * sin + d[:, 1] * cos
        out[near, j] = (np.abs(lx) <= b[3] / 2) & (np.abs(ly) <= b[4] / 2) & (np.abs(d[:, 2]) <= b[5] / 2)
    return out


def bev_corners(boxes: np.ndarray) -> np.ndarray:
    """BEV rectangle corners of boxes.

    Args:
        boxes: (K, >=7) x, y, z, dx, dy, dz, yaw.

    Returns:
        (K, 4, 2) corners, counter-clockwise.
    """
    signs = np.array([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])
    local = signs[None] * boxes[:, None, 3:5]  # (K, 4, 2)
    cos, sin = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    x = local[..., 0] * cos - local[..., 1] * sin + boxes[:, None, 0]
    y = local[..., 0] * sin + local[..., 1] * cos + boxes[:, None, 1]
    return np.stack([x, y], axis=-1)


def bev_overlaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotated-rectangle BEV intersection test by the separating-axis theorem.

    Args:
        a: (K1, >=7) boxes. b: (K2, >=7) boxes.

    Returns:
        (K1, K2) bool, True where the BEV footprints touch or overlap.
    """
    ca, cb = bev_corners(a), bev_corners(b)  # (K1,4,2), (K2,4,2)
    # Candidate axes: the two edge normals of each rectangle.
    def axes(yaw: np.ndarray) -> np.ndarray:
        return np.stack([np.stack([np.cos(yaw), np.sin(yaw)], -1), np.stack([-np.sin(yaw), np.cos(yaw)], -1)], 1)

    ax = np.concatenate([
        np.broadcast_to(axes(a[:, 6])[:, None], (len(a), len(b), 2, 2)),
        np.broadcast_to(axes(b[:, 6])[None], (len(a), len(b), 2, 2)),
    ], axis=2)  # (K1, K2, 4 axes, 2)
    pa = np.einsum("ikd,ijad->ijak", ca, ax)  # (K1, K2, 4 axes, 4 corners)
    pb = np.einsum("jkd,ijad->ijak", cb, ax)
    separated = (pa.max(-1) < pb.min(-1)) | (pb.max(-1) < pa.min(-1))
    return ~separated.any(-1)


def load_frame_points(root: str | Path, info: dict, sweeps: int) -> np.ndarray:
    """Keyframe points plus previous sweeps, all in the keyframe LiDAR frame.

    Args:
        root: dataset root (file paths in ``info`` are relative to it).
        info: frame info (see ``infos.frame_info``).
        sweeps: sweeps wanted, the keyframe included (fewer when the info holds fewer).

    Returns:
        (N, 5) float32 x, y, z, intensity, time_lag (s; 0 for the keyframe). Sweep points within
        ``EGO_RADIUS`` of their sensor in x and y are dropped (ego-vehicle returns). A converted Waymo
        frame (info kind "waymo") gives x, y, z, tanh(intensity), elongation in the vehicle frame.

    Raises:
        ItkdError: a point file is missing, truncated or holds NaN/Inf, or the keyframe's is empty.
    """
    if info.get("kind") == WAYMO:
        return read_waymo_points(Path(root) / info["lidar_path"], info["token"])
    key = read_pcd_bin(Path(root) / info["lidar_path"], info["lidar_token"])
    if len(key) == 0:  # an empty sweep is only less context; an empty keyframe is no sample at all
        raise ItkdError(f"{Path(root) / info['lidar_path']} (sample_data {info['lidar_token']}): keyframe point "
                        "file holds no points (0 bytes)",
                        hint="restore it from the dataset's archive (the synthetic world: write a fresh copy with "
                             "`itkd data synth --out NEW_DIR` and the same --preset / --seed)")
    parts = [np.concatenate([key, np.zeros((len(key), 1), np.float32)], axis=1)]
    for sweep in info["sweeps"][: sweeps - 1]:
        pts = read_pcd_bin(Path(root) / sweep["path"], sweep["token"])
        # Returns off the ego vehicle itself would smear across sweeps (OpenPCDet/devkit drop them).
        pts = pts[~((np.abs(pts[:, 0]) < EGO_RADIUS) & (np.abs(pts[:, 1]) < EGO_RADIUS))]
        pts = transform_points(pts, np.asarray(sweep["to_key"]))
        lag = np.full((len(pts), 1), sweep["time_lag"], np.float32)
        parts.append(np.concatenate([pts, lag], axis=1))
    return np.concatenate(parts, axis=0)
