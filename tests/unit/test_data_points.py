"""Point files, poses and box membership against hand values and the nuScenes devkit."""

from __future__ import annotations

import numpy as np
import pytest
from nuscenes.utils.data_classes import Box
from nuscenes.utils.geometry_utils import points_in_box
from pyquaternion import Quaternion

from itkd_cli.core.errors import ItkdError
from itkd_cli.data.points import (
    bev_overlaps, limit_period, points_in_boxes, pose_matrix, read_pcd_bin, transform_points,
)


def test_read_pcd_bin_keeps_xyz_intensity(tmp_path):
    rec = np.arange(15, dtype=np.float32).reshape(3, 5)
    rec.tofile(tmp_path / "a.pcd.bin")
    out = read_pcd_bin(tmp_path / "a.pcd.bin")
    np.testing.assert_array_equal(out, rec[:, :4])


def test_read_pcd_bin_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.pcd.bin"
    np.zeros(7, np.float32).tofile(bad)  # 28 bytes: not a whole number of 20-byte points
    with pytest.raises(ItkdError, match=r"bad\.pcd\.bin \(sample_data tok\): 28 bytes is not a multiple of 20"):
        read_pcd_bin(bad, "tok")
    with pytest.raises(ItkdError, match=r"missing\.pcd\.bin: point file not found"):
        read_pcd_bin(tmp_path / "missing.pcd.bin")


def test_empty_pcd_bin_is_zero_points(tmp_path):
    (tmp_path / "e.pcd.bin").write_bytes(b"")
    assert read_pcd_bin(tmp_path / "e.pcd.bin").shape == (0, 4)


def test_pose_matrix_inverse_and_transform():
    q = Quaternion(axis=[0.3, -0.2, 1.0], angle=0.7)
    m = pose_matrix([1.0, -2.0, 3.0], q.elements)
    inv = pose_matrix([1.0, -2.0, 3.0], q.elements, inverse=True)
    np.testing.assert_allclose(m @ inv, np.eye(4), atol=1e-12)
    pts = np.array([[1.0, 0.0, 0.0, 5.0, 0.1]], np.float32)
    out = transform_points(pts, m)
    np.testing.assert_allclose(out[0, :3], q.rotate([1.0, 0.0, 0.0]) + np.array([1.0, -2.0, 3.0]), atol=1e-6)
    assert out[0, 3] == 5.0 and out[0, 4] == np.float32(0.1)  # extra features untouched


def test_points_in_boxes_matches_devkit():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-4, 4, size=(6000, 3))
    boxes = np.array([[0.5, 1.0, 0.2, 4.0, 2.0, 1.5, 0.4, 0, 0], [-3.0, -2.0, -0.5, 1.0, 3.0, 2.0, -2.5, 0, 0]])
    ours = points_in_boxes(pts, boxes)
    for k, b in enumerate(boxes):
        # devkit Box takes wlh = (dy, dx, dz); its length axis is the heading.
        ref = points_in_box(Box(b[:3], [b[4], b[3], b[5]], Quaternion(axis=[0, 0, 1], angle=b[6])), pts.T)
        np.testing.assert_array_equal(ours[:, k], ref)
    assert ours.sum() > 150  # enough points inside to mean something


def test_points_in_boxes_far_from_origin_and_empty():
    # global-frame coordinates (~1 km) in float32, as inspect uses them: same answer as near the origin
    pts = np.random.default_rng(1).uniform(-2, 2, size=(1000, 3)).astype(np.float32)
    box = np.array([[0, 0, 0, 2, 1, 1, 0.3]])
    shift = np.array([600.0, 1100.0, 0.0], np.float32)
    far_box = box.copy()
    far_box[0, :3] += shift
    np.testing.assert_array_equal(points_in_boxes(pts + shift, far_box).sum(), points_in_boxes(pts, box).sum())
    assert points_in_boxes(np.zeros((0, 3)), box).shape == (0, 1)
    assert points_in_boxes(pts, np.zeros((0, 7))).shape == (1000, 0)


def test_bev_overlaps_rotated():
    a = np.array([[0, 0, 0, 4, 2, 1, 0]], float)
    far = np.array([[0, 2.5, 0, 4, 2, 1, 0]], float)
    turned = np.array([[0, 2.5, 0, 4, 2, 1, np.pi / 2]], float)  # now 4 m along y: reaches y=0.5
    diag = np.array([[3.2, 1.7, 0, 1, 1, 1, np.pi / 4]], float)  # AABBs overlap, rectangles do not
    assert not bev_overlaps(a, far)[0, 0]
    assert bev_overlaps(a, turned)[0, 0]
    assert not bev_overlaps(a, diag)[0, 0]
    assert bev_overlaps(a, a)[0, 0]


def test_limit_period():
    np.testing.assert_allclose(limit_period(np.array([np.pi + 0.1, -np.pi - 0.1, 0.5])),
                               [-np.pi + 0.1, np.pi - 0.1, 0.5])


def test_sweeps_drop_ego_returns_and_carry_time_lag(tmp_path):
    from itkd_cli.data.points import load_frame_points

    key = np.array([[0.5, 0.5, 0, 1, 0], [5, 0, 0, 2, 0]], np.float32)  # keyframe keeps even near points
    sweep = np.array([[0.5, -0.5, 0, 3, 0], [0, 5, 0, 4, 0]], np.float32)
    key.tofile(tmp_path / "k.bin")
    sweep.tofile(tmp_path / "s.bin")
    shift = np.eye(4)
    shift[:3, 3] = [10, 0, 0]
    info = {"lidar_path": "k.bin", "lidar_token": "k",
            "sweeps": [{"path": "s.bin", "token": "s", "time_lag": 0.05, "to_key": shift.tolist()}]}
    out = load_frame_points(tmp_path, info, sweeps=2)
    np.testing.assert_allclose(out, [[0.5, 0.5, 0, 1, 0], [5, 0, 0, 2, 0], [10, 5, 0, 4, 0.05]], rtol=1e-6)
    assert len(load_frame_points(tmp_path, info, sweeps=1)) == 2
