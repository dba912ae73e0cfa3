"""Range images -> points in the vehicle frame (OpenPCDet's Waymo preprocessing), for `frames` and `convert`.

waymo_open_dataset's frame_utils does the geometry (beam inclinations, extrinsics, the TOP laser's
per-pixel poses); this module picks the lasers and returns and drops the points in no-label zones.
"""

from __future__ import annotations

import numpy as np

TOP = 1  # dataset_pb2.LaserName.TOP
NLZ_OUTSIDE = -1.0  # range image channel 3: -1 outside every no-label zone, 1 inside one


def frame_points(frame, top_only: bool = False, returns: int = 2) -> np.ndarray:
    """A Frame's points, no-label-zone points dropped.

    Args:
        frame: a dataset_pb2.Frame.
        top_only: the TOP laser only (else all lasers, as OpenPCDet).
        returns: 2: first and second returns (OpenPCDet), 1: first returns only.

    Returns:
        (N, 5) float32 x, y, z (vehicle frame), intensity (raw), elongation; return 1 then return 2, within
        each the lasers by name (TOP first), within each laser frame_utils' (row-major pixel) order.
    """
    from waymo_open_dataset.utils import frame_utils

    empty = np.zeros((0, 5), np.float32)
    if not frame.lasers:
        return empty
    images, projections, _, top_pose = frame_utils.parse_range_image_and_camera_projection(frame)
    calibrated = {c.name for c in frame.context.laser_calibrations}
    if not top_pose.data:  # no TOP laser: frame_utils still reshapes its pose, which the others never use
        top_pose = _unused_top_pose()
    parts = []
    for ri_index in range(returns):
        names = sorted(n for n, per_return in images.items()
                       if len(per_return) > ri_index and n in calibrated and (n == TOP or not top_only))
        if not names:
            continue
        points, _ = frame_utils.convert_range_image_to_point_cloud(
            _calibration_view(frame, names), images, projections, top_pose, ri_index=ri_index,
            keep_polar_features=True)
        for name, pts in zip(names, points):  # frame_utils sorts the calibrations by name too
            image = images[name][ri_index]
            ri = np.asarray(image.data, np.float32).reshape(tuple(image.shape.dims))
            nlz = ri[..., 3][ri[..., 0] > 0]  # the same row-major order as the points
            pts = pts[nlz == NLZ_OUTSIDE]
            parts.append(np.stack([pts[:, 3], pts[:, 4], pts[:, 5], pts[:, 1], pts[:, 2]], axis=1))
    return np.concatenate(parts).astype(np.float32) if parts else empty


def _calibration_view(frame, names: list[int]):
    """A Frame holding only the pose and the named lasers' calibrations: what frame_utils reads of it,
    so that it converts those lasers only (it converts every calibrated laser of the frame it is given)."""
    from waymo_open_dataset import dataset_pb2

    view = dataset_pb2.Frame()
    view.pose.CopyFrom(frame.pose)
    view.context.laser_calibrations.extend(c for c in frame.context.laser_calibrations if c.name in names)
    return view


def _unused_top_pose():
    from waymo_open_dataset import dataset_pb2

    pose = dataset_pb2.MatrixFloat(data=[0.0] * 6)
    pose.shape.dims.extend([1, 1, 6])
    return pose
