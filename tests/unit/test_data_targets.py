"""CenterPoint targets against hand-computed values on a 20 x 20 head map (0.64 m cells)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from itkd_cli.data.targets import assign_targets, draw_gaussian, gaussian_radius
from itkd_cli.recipe.load import load_recipe

# 12.8 m / 0.32 m = 40 grid cells, head stride 2 -> 20 x 20 head cells of 0.64 m.
GRID = ["model.grid.point_range=[0, 0, -5, 12.8, 12.8, 3]", "model.grid.voxel_size=[0.32, 0.32, 8]",
        "model.head.tasks=[[car],[truck,construction_vehicle],[bus,trailer],[barrier],[motorcycle,bicycle],[pedestrian,traffic_cone]]"]
CAR = np.array([[3.0, 5.0, 0.5, 4.0, 2.0, 1.5, 0.3, 1.0, -2.0]])


def recipe(*extra: str):
    return load_recipe("synth-pillar", [*GRID, *extra])


def test_gaussian_radius_hand_value():
    # 4 m x 2 m box = 6.25 x 3.125 cells, overlap 0.1: the third root is the smallest,
    # b3 = -1.875, disc = 1.875^2 + 1.6 * 17.578125 = 31.640625, r3 = (-1.875 + 5.625) / 2.
    assert gaussian_radius(6.25, 3.125, 0.1) == pytest.approx(1.875)
    assert gaussian_radius(3.125, 6.25, 0.1) == pytest.approx(1.875)  # symmetric


def test_single_car_targets():
    r = recipe()
    assert r.model.head_map_size == (20, 20)
    targets = assign_targets(CAR, np.array([1]), r)
    car = targets[0]
    # x 3.0 / 0.64 = 4.6875 -> cell 4, y 5.0 / 0.64 = 7.8125 -> cell 7.
    assert car.mask.sum() == 1 and car.ind[0] == 7 * 20 + 4 and car.cls[0] == 0
    np.testing.assert_allclose(car.box[0], [0.6875, 0.8125, 0.5, math.log(4), math.log(2), math.log(1.5),
                                            math.cos(0.3), math.sin(0.3), 1.0, -2.0], rtol=1e-6)
    hm = car.heatmap[0]
    # radius = max(min_radius 2, int(1.875)) = 2, sigma = 5 / 6.
    assert hm[7, 4] == 1.0 and hm.argmax() == 7 * 20 + 4
    assert hm[7, 5] == pytest.approx(math.exp(-1 / (2 * (5 / 6) ** 2)), rel=1e-6)
    assert hm[9, 6] == pytest.approx(math.exp(-8 / (2 * (5 / 6) ** 2)), rel=1e-6)
    assert hm[7, 7] == 0 and hm[10, 4] == 0
    assert (hm > 0).sum() == 25
    for other in targets[1:]:
        assert other.mask.sum() == 0 and other.heatmap.max() == 0


def test_min_radius_zero_uses_computed_radius():
    car = assign_targets(CAR, np.array([1]), recipe("model.head.min_radius=0"))[0]
    assert (car.heatmap[0] > 0).sum() == 9  # radius int(1.875) = 1
    assert car.heatmap[0][7, 5] == pytest.approx(math.exp(-2.0), rel=1e-6)  # sigma 0.5


def test_class_within_task_and_max_blend():
    r = recipe()
    names = r.dataset.class_names
    boxes = np.array([[3.0, 5.0, 0, 4, 2, 1.5, 0, 0, 0], [3.64, 5.0, 0, 4, 2, 1.5, 0, 0, 0],
                      [8.0, 8.0, 0, 6, 3, 3, 0, 0, 0]])
    labels = np.array([names.index("truck"), names.index("truck"), names.index("construction_vehicle")]) + 1
    task = assign_targets(boxes, labels, r)[1]  # [truck, construction_vehicle]
    assert task.mask.tolist()[:4] == [True, True, True, False]
    assert task.cls[:3].tolist() == [0, 0, 1]
    assert task.heatmap[0][7, 4] == 1.0 and task.heatmap[0][7, 5] == 1.0  # max, not sum
    assert task.heatmap[1].max() == 1.0 and task.heatmap[1][12, 12] == 1.0


def test_border_boxes_and_limits():
    r = recipe("model.head.max_objects=2")
    boxes = np.array([[0.1, 0.1, 0, 4, 2, 1, 0, 0, 0], [12.7, 12.7, 0, 4, 2, 1, 0, 0, 0],
                      [6, 6, 0, 4, 2, 1, 0, 0, 0], [20.0, 6, 0, 4, 2, 1, 0, 0, 0]])
    car = assign_targets(boxes, np.ones(4, int), r)[0]
    assert car.ind.tolist() == [0, 19 * 20 + 19]  # third object exceeds max_objects
    assert car.heatmap[0][0, 0] == 1.0 and car.heatmap[0][19, 19] == 1.0
    assert car.heatmap[0][9, 9] == 0


def test_without_velocity_code_size_8():
    r = recipe("model.head.with_velocity=false", "model.head.code_weights=[1,1,1,1,1,1,1,1]")
    assert assign_targets(CAR, np.array([1]), r)[0].box.shape == (500, 8)


def test_draw_gaussian_clips_at_edges():
    hm = np.zeros((3, 4), np.float32)
    draw_gaussian(hm, 3, 0, 2)
    assert hm[0, 3] == 1.0 and hm[2, 1] > 0
