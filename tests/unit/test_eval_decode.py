"""decode(): hand-built head outputs with peaks at known cells decode to exact boxes."""

from __future__ import annotations

import math

import pytest
import torch

from itkd_cli.core.types import DetectorOutput, TaskHeadOutput
from itkd_cli.models.decode import decode
from itkd_cli.recipe import load_recipe

LOW = -12.0  # background logit: sigmoid ~ 6e-6, far below any threshold


# The expected boxes below are computed for this grid (0.64 m head cells from -40.96 m) and six tasks.
PINNED = ["model.grid.point_range=[-40.96,-40.96,-5.0,40.96,40.96,3.0]", "model.grid.voxel_size=[0.32,0.32,8.0]",
          "model.head.tasks=[[car],[truck,construction_vehicle],[bus,trailer],[barrier],[motorcycle,bicycle],"
          "[pedestrian,traffic_cone]]", "model.post.limit_range=[-45.0,-45.0,-10.0,45.0,45.0,10.0]"]


def _recipe(**post):
    overrides = [f"model.post.{k}={v}" for k, v in post.items()]
    return load_recipe("synth-pillar", [*PINNED, *overrides])


def _empty_output(model_cfg, batch: int = 2, with_vel: bool = True) -> DetectorOutput:
    h, w = model_cfg.head_map_size
    tasks = []
    for task in model_cfg.head.tasks:
        tasks.append(TaskHeadOutput(
            hm=torch.full((batch, len(task), h, w), LOW), center=torch.zeros(batch, 2, h, w),
            center_z=torch.zeros(batch, 1, h, w), dim=torch.zeros(batch, 3, h, w),
            rot=torch.stack([torch.ones(batch, h, w), torch.zeros(batch, h, w)], 1),
            vel=torch.zeros(batch, 2, h, w) if with_vel else None))
    return DetectorOutput(bev=torch.zeros(batch, 1, h, w), tasks=tuple(tasks))


def _peak(out, t, b, c, y, x, logit=2.0, off=(0.3, 0.6), z=-0.5, dims=(3.0, 2.0, 1.5), yaw=0.7, vel=(1.0, -2.0)):
    task = out.tasks[t]
    task.hm[b, c, y, x] = logit
    task.center[b, :, y, x] = torch.tensor(off)
    task.center_z[b, 0, y, x] = z
    task.dim[b, :, y, x] = torch.tensor(dims).log()
    task.rot[b, :, y, x] = torch.tensor([math.cos(yaw), math.sin(yaw)])
    if task.vel is not None:
        task.vel[b, :, y, x] = torch.tensor(vel)


def test_single_peak_exact_box() -> None:
    recipe = _recipe()
    m = recipe.model
    out = _empty_output(m)
    # task 1 = [truck, construction_vehicle]; class 1 -> construction_vehicle (index 2 in class_names)
    _peak(out, t=1, b=0, c=1, y=40, x=70)
    _peak(out, t=5, b=1, c=0, y=100, x=5, logit=0.5, yaw=-2.5, dims=(0.8, 0.6, 1.7))  # pedestrian
    dets = decode(out, m, recipe.dataset.class_names)
    assert len(dets) == 2
    d0, d1 = dets
    assert d0.boxes.shape == (1, 9) and d1.boxes.shape == (1, 9)
    cell = m.feature_map_stride * m.grid.voxel_size[0]  # 0.64 m
    expect0 = [(70 + 0.3) * cell - 40.96, (40 + 0.6) * cell - 40.96, -0.5, 3.0, 2.0, 1.5, 0.7, 1.0, -2.0]
    assert torch.allclose(d0.boxes[0], torch.tensor(expect0), atol=1e-5)
    assert d0.scores[0].item() == pytest.approx(1 / (1 + math.exp(-2.0)), abs=1e-6)
    assert d0.labels.tolist() == [recipe.dataset.class_names.index("construction_vehicle")]
    expect1 = [(5 + 0.3) * cell - 40.96, (100 + 0.6) * cell - 40.96, -0.5, 0.8, 0.6, 1.7, -2.5, 1.0, -2.0]
    assert torch.allclose(d1.boxes[0], torch.tensor(expect1), atol=1e-5)
    assert d1.labels.tolist() == [recipe.dataset.class_names.index("pedestrian")]
    assert d0.labels.dtype == torch.int64


def test_threshold_range_and_no_velocity() -> None:
    recipe = _recipe(score_threshold=0.5, limit_range="[-40.0,-40.0,-10.0,40.0,40.0,10.0]")
    out = _empty_output(recipe.model, batch=1, with_vel=False)
    _peak(out, t=0, b=0, c=0, y=64, x=64, logit=1.0)       # kept (0.73)
    _peak(out, t=0, b=0, c=0, y=10, x=10, logit=-0.5)      # score 0.38 < 0.5: dropped
    _peak(out, t=0, b=0, c=0, y=64, x=127, logit=3.0)      # x = 40.64+ > 40: outside limit range
    (det,) = decode(out, recipe.model, recipe.dataset.class_names)
    assert det.boxes.shape == (1, 9)
    assert det.boxes[0, 7:].abs().max().item() == 0.0  # no velocity head -> zeros
    assert det.boxes[0, 0].item() == pytest.approx(64.3 * 0.64 - 40.96, abs=1e-5)


def test_nms_inside_task_only() -> None:
    recipe = _recipe(nms="rotated", nms_iou=0.2)
    out = _empty_output(recipe.model, batch=1)
    # Two adjacent cells of task 1, different classes, same 3x2 m box: 0.64 m apart -> IoU 0.65.
    _peak(out, t=1, b=0, c=0, y=50, x=50, logit=2.0)
    _peak(out, t=1, b=0, c=1, y=50, x=51, logit=1.0)
    # Same place in another task (car): not suppressed by task 1.
    _peak(out, t=0, b=0, c=0, y=50, x=50, logit=1.5)
    (det,) = decode(out, recipe.model, recipe.dataset.class_names)
    names = [recipe.dataset.class_names[i] for i in det.labels.tolist()]
    assert sorted(names) == ["car", "truck"]
    recipe_none = _recipe(nms="none")
    (det2,) = decode(out, recipe_none.model, recipe_none.dataset.class_names)
    assert det2.boxes.shape[0] == 3
    recipe_circle = _recipe(nms="circle", circle_radius=0.5)  # 0.64 m apart: both kept
    (det3,) = decode(out, recipe_circle.model, recipe_circle.dataset.class_names)
    assert det3.boxes.shape[0] == 3


def test_post_max_pre_max_and_peak_filter() -> None:
    recipe = _recipe(nms="none", post_max=2, pre_max=3)
    out = _empty_output(recipe.model, batch=1)
    for i, x in enumerate([10, 30, 50, 70]):
        _peak(out, t=3, b=0, c=0, y=20, x=x, logit=1.0 + i)
    (det,) = decode(out, recipe.model, recipe.dataset.class_names)
    assert det.scores.shape == (2,)
    assert torch.allclose(det.scores, torch.sigmoid(torch.tensor([4.0, 3.0])))
    # Peak filter: a weaker neighbour of a peak is not a local maximum.
    recipe2 = _recipe(nms="none")
    out2 = _empty_output(recipe2.model, batch=1)
    _peak(out2, t=0, b=0, c=0, y=20, x=20, logit=2.0)
    _peak(out2, t=0, b=0, c=0, y=20, x=21, logit=1.0)
    assert decode(out2, recipe2.model, recipe2.dataset.class_names)[0].scores.numel() == 2
    assert decode(out2, recipe2.model, recipe2.dataset.class_names, peak_filter=True)[0].scores.numel() == 1
