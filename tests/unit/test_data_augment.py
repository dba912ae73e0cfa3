"""Augmentations keep points, boxes and velocities consistent; GT sampling is collision-checked."""

from __future__ import annotations

import numpy as np
import pytest

from itkd_cli.data.augment import augment, flip_x, flip_y, gt_sample, range_filter, rotate, scale
from itkd_cli.data.gt_database import GTDatabase
from itkd_cli.data.points import points_in_boxes
from itkd_cli.recipe.schema import AugmentConfig


def scene(seed: int = 0):
    """Boxes moving along their heading at 3 m/s, points inside and around them."""
    rng = np.random.default_rng(seed)
    yaws = np.array([0.3, -2.0, 1.2])
    boxes = np.array([[5, 2, 0.5, 4, 2, 1.5, yaws[0], 0, 0], [-8, 6, 0.2, 1, 0.8, 1.8, yaws[1], 0, 0],
                      [0, -10, 1, 10, 3, 3, yaws[2], 0, 0]], float)
    boxes[:, 7], boxes[:, 8] = 3 * np.cos(yaws), 3 * np.sin(yaws)
    pts = np.concatenate([rng.uniform(-15, 15, size=(3000, 3)), rng.random((3000, 2))], 1).astype(np.float32)
    return pts, boxes


def heading_velocity_aligned(boxes: np.ndarray) -> np.ndarray:
    """|v x heading| per box: 0 when velocity stays along the heading."""
    return np.abs(boxes[:, 7] * np.sin(boxes[:, 6]) - boxes[:, 8] * np.cos(boxes[:, 6]))


@pytest.mark.parametrize("op", [flip_x, flip_y, lambda p, b: rotate(p, b, 0.77), lambda p, b: scale(p, b, 1.07)])
def test_each_op_keeps_membership_and_velocity(op):
    pts, boxes = scene()
    before = points_in_boxes(pts, boxes)
    p2, b2 = op(pts, boxes)
    np.testing.assert_array_equal(points_in_boxes(p2, b2), before)
    np.testing.assert_allclose(heading_velocity_aligned(b2), 0, atol=1e-9)
    np.testing.assert_array_equal(p2[:, 3:], pts[:, 3:])  # intensity, time lag untouched


def test_rotation_and_scale_hand_values():
    pts = np.array([[1.0, 0, 0, 0, 0]], np.float32)
    box = np.array([[1.0, 0, 0, 2, 1, 1, 0.1, 2.0, 0]])
    p, b = rotate(pts, box, np.pi / 2)
    np.testing.assert_allclose(p[0, :2], [0, 1], atol=1e-6)
    np.testing.assert_allclose(b[0, [0, 1, 6, 7, 8]], [0, 1, 0.1 + np.pi / 2, 0, 2], atol=1e-12)
    _, b = scale(pts, box, 2.0)
    np.testing.assert_allclose(b[0], [2, 0, 0, 4, 2, 2, 0.1, 4, 0])
    _, b = flip_y(pts, box)
    np.testing.assert_allclose(b[0, [0, 6, 7]], [-1, np.pi - 0.1, -2])


def test_full_chain_is_seeded_and_consistent():
    pts, boxes = scene()
    cfg = AugmentConfig(translate_std=0.5)
    labels = np.array([1, 2, 3])
    a = augment(pts, boxes, labels, cfg, np.random.default_rng(5))
    b = augment(pts, boxes, labels, cfg, np.random.default_rng(5))
    c = augment(pts, boxes, labels, cfg, np.random.default_rng(6))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a[1], c[1])
    np.testing.assert_array_equal(points_in_boxes(a[0], a[1]), points_in_boxes(pts, boxes))
    assert np.all((a[1][:, 6] >= -np.pi) & (a[1][:, 6] < np.pi))


def test_range_filter():
    pts = np.array([[0, 0, 0, 0, 0], [10, 0, 0, 0, 0], [-10, 0, 0, 0, 0], [0, 0, 5, 0, 0]], np.float32)
    boxes = np.array([[1, 1, 0, 1, 1, 1, 0, 0, 0], [9.5, 0, 0, 1, 1, 1, 0, 0, 0]], float)
    p, b, l = range_filter(pts, boxes, np.array([1, 2]), (-10, -10, -3, 9, 10, 3))
    assert p[:, 0].tolist() == [0, -10] and l.tolist() == [1]


def make_db():
    """Two cars: one on top of the scene's box (must be rejected), one in free space."""
    boxes = np.array([[0.5, 0, 0, 4, 2, 1.5, 0, 0, 0], [10, 10, 0, 4, 2, 1.5, 0.5, 1, 0]], float)
    pts = np.array([[0, 0, 0, 9, 0], [0.1, 0.1, 0, 9, 0], [0.2, -0.1, 0.1, 9, 0.05]], np.float32)
    offsets = np.array([0, 1, 3])
    return GTDatabase(boxes, np.array(["car", "car"]), offsets, pts, ["car", "pedestrian"])


def test_gt_sampling_collision_and_point_removal():
    db = make_db()
    scene_boxes = np.array([[0, 0, 0, 4, 2, 1.5, 0, 0, 0]], float)
    scene_pts = np.array([[0, 0, 0, 1, 0], [10, 10, 0, 1, 0], [10.5, 10, 0.2, 1, 0], [30, 30, 0, 1, 0]], np.float32)
    p, b, l = gt_sample(scene_pts, scene_boxes, np.array([1]), db, per_class=2, rng=np.random.default_rng(0))
    assert len(b) == 2 and l.tolist() == [1, 1]
    np.testing.assert_allclose(b[1], db.boxes[1])
    # scene points inside the pasted car are gone; its own two points arrive at its centre
    assert [10, 10, 0] not in p[:, :3].tolist() and [10.5, 10, 0.2] not in p[:, :3].tolist()
    np.testing.assert_allclose(p[-2:, :3], [[10.1, 10.1, 0], [10.2, 9.9, 0.1]], atol=1e-6)
    assert p[-1, 4] == np.float32(0.05) and len(p) == 4


def test_gt_database_filters_classes():
    db = GTDatabase(np.zeros((2, 9)), np.array(["car", "animal"]), np.array([0, 0, 0]),
                    np.zeros((0, 5), np.float32), ["car"])
    assert len(db) == 1 and db.labels.tolist() == [1]
