"""CenterPoint loss against values computed by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from itkd_cli.core.types import DetectorOutput, TaskHeadOutput, TaskTargets
from itkd_cli.recipe.schema import HeadConfig
from itkd_cli.models.loss import (
    box_code_map, centerpoint_loss, focal_heatmap_loss, gather_feat, reg_l1_loss,
)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_focal_loss_hand_computed():
    # 1x1x1x3 map: one positive (gt 1, p 0.8), one near-centre negative (gt 0.5, p 0.3), one plain negative.
    logits = torch.tensor([_logit(0.8), _logit(0.3), _logit(0.1)]).view(1, 1, 1, 3)
    gt = torch.tensor([1.0, 0.5, 0.0]).view(1, 1, 1, 3)
    pos = math.log(0.8) * 0.2**2
    neg1 = math.log(0.7) * 0.3**2 * 0.5**4
    neg2 = math.log(0.9) * 0.1**2 * 1.0
    expected = -(pos + neg1 + neg2) / 1
    assert focal_heatmap_loss(logits, gt).item() == pytest.approx(expected, rel=1e-5)


def test_focal_loss_normalised_by_positives_and_no_positive():
    logits = torch.tensor([_logit(0.6), _logit(0.6), _logit(0.2)]).view(1, 1, 1, 3)
    gt = torch.tensor([1.0, 1.0, 0.0]).view(1, 1, 1, 3)
    expected = -(2 * math.log(0.6) * 0.4**2 + math.log(0.8) * 0.2**2) / 2
    assert focal_heatmap_loss(logits, gt).item() == pytest.approx(expected, rel=1e-5)
    # no positive: divide by 1, only the negative term remains
    gt0 = torch.zeros(1, 1, 1, 3)
    expected0 = -(2 * math.log(0.4) * 0.6**2 + math.log(0.8) * 0.2**2)
    assert focal_heatmap_loss(logits, gt0).item() == pytest.approx(expected0, rel=1e-5)


def test_focal_loss_clamps_saturated_logits():
    logits = torch.tensor([100.0, -100.0]).view(1, 1, 1, 2)
    gt = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    loss = focal_heatmap_loss(logits, gt)
    p = 1 - 1e-4
    expected = -(math.log(1e-4) * p**2 + math.log(1 - p) * p**2)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(expected, rel=1e-3)


def test_gather_feat_picks_flat_index():
    pred = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).view(2, 3, 2, 4)
    ind = torch.tensor([[5, 0], [7, 2]])
    out = gather_feat(pred, ind)
    assert out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == pred[0, :, 1, 1].tolist()
    assert out[1, 0].tolist() == pred[1, :, 1, 3].tolist()
    assert out[1, 1].tolist() == pred[1, :, 0, 2].tolist()


def test_reg_l1_loss_hand_computed():
    # B=1, K=2 code, H=1, W=3; two slots, one valid at cell 2.
    pred = torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]]).view(1, 2, 1, 3)
    ind = torch.tensor([[2, 0]])
    mask = torch.tensor([[True, False]])
    target = torch.tensor([[[2.5, 33.0], [100.0, 100.0]]])
    # |3 - 2.5| * 1.0 + |30 - 33| * 0.5, one object
    assert reg_l1_loss(pred, ind, mask, target, [1.0, 0.5]).item() == pytest.approx(0.5 + 1.5)
    # two valid objects: average over objects
    mask2 = torch.tensor([[True, True]])
    exp2 = (0.5 + abs(1 - 100) + 0.5 * (3 + abs(10 - 100))) / 2
    assert reg_l1_loss(pred, ind, mask2, target, [1.0, 0.5]).item() == pytest.approx(exp2)
    # no object: zero, not NaN
    none = reg_l1_loss(pred, ind, torch.zeros(1, 2, dtype=torch.bool), target, [1.0, 0.5])
    assert none.item() == 0.0


def _task(code: int, h: int = 2, w: int = 2, ncls: int = 1, fill: float = 0.0) -> TaskHeadOutput:
    z = lambda c: torch.full((1, c, h, w), fill)  # noqa: E731
    return TaskHeadOutput(hm=torch.zeros(1, ncls, h, w), center=z(2), center_z=z(1), dim=z(3), rot=z(2),
                          vel=z(2) if code == 10 else None)


def test_box_code_order():
    t = TaskHeadOutput(*(torch.full((1, c, 1, 1), float(i)) for i, c in enumerate([1, 2, 1, 3, 2, 2])))
    code = box_code_map(t)[0, :, 0, 0].tolist()
    assert code == [1, 1, 2, 3, 3, 3, 4, 4, 5, 5]


def test_centerpoint_loss_weights_and_sum_over_tasks():
    cfg = HeadConfig(tasks=[["car"], ["truck"]], with_velocity=True, cls_weight=2.0, loc_weight=0.25)
    tasks = (_task(10), _task(10))
    out = DetectorOutput(bev=torch.zeros(1, 4, 2, 2), tasks=tasks)
    box = torch.ones(1, 1, 10)
    heat = torch.zeros(1, 1, 2, 2)
    heat[0, 0, 0, 0] = 1.0
    tgt = TaskTargets(heatmap=heat, ind=torch.zeros(1, 1, dtype=torch.long), mask=torch.ones(1, 1, dtype=torch.bool),
                      box=box, cls=torch.zeros(1, 1, dtype=torch.long))
    loss = centerpoint_loss(out, (tgt, tgt), cfg)
    # logits 0 -> p 0.5: pos log(.5)*.25; three negatives log(.5)*.25 each (gt 0)
    hm_one = -(4 * math.log(0.5) * 0.25)
    loc_one = 8 * 1.0 + 2 * 0.2  # |0 - 1| per code entry, velocity weighted 0.2
    assert loss.hm.item() == pytest.approx(2 * hm_one, rel=1e-5)
    assert loss.loc.item() == pytest.approx(2 * loc_one, rel=1e-5)
    assert loss.total.item() == pytest.approx(2.0 * 2 * hm_one + 0.25 * 2 * loc_one, rel=1e-5)


def test_centerpoint_loss_without_velocity_and_gradients():
    cfg = HeadConfig(tasks=[["car"]], with_velocity=False, code_weights=[1.0] * 8)
    task = _task(8, fill=0.5)
    task = task._replace(center=task.center.clone().requires_grad_(True))
    out = DetectorOutput(bev=torch.zeros(1, 4, 2, 2), tasks=(task,))
    tgt = TaskTargets(heatmap=torch.zeros(1, 1, 2, 2), ind=torch.tensor([[3]]), mask=torch.ones(1, 1, dtype=torch.bool),
                      box=torch.zeros(1, 1, 8), cls=torch.zeros(1, 1, dtype=torch.long))
    loss = centerpoint_loss(out, (tgt,), cfg)
    assert loss.loc.item() == pytest.approx(8 * 0.5)
    loss.total.backward()
    grad = task.center.grad
    assert grad[0, :, 1, 1].tolist() == pytest.approx([0.25, 0.25])  # loc_weight * sign
    assert grad[0, :, 0, 0].tolist() == [0.0, 0.0]
