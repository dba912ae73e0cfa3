"""Baseline KD losses against hand-computed values: hinton, fitnet, sparsekd, teacher labels."""

from __future__ import annotations

import math

import pytest
import torch

from itkd_cli.core.types import DetectorOutput, Detections, TaskHeadOutput
from itkd_cli.distill.baselines import (
    FitNetKD, HintonKD, SparseKD, filter_teacher_detections, fitnet_loss, hinton_loss, sparsekd_hm_loss,
    teacher_label_mask)


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _bern_kl(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def _out(bev: torch.Tensor, hms: list[torch.Tensor]) -> DetectorOutput:
    z = torch.zeros(1, 1, 1, 1)
    return DetectorOutput(bev, tuple(TaskHeadOutput(h, z, z, z, z, None) for h in hms))


def test_hinton_by_hand_pooled_over_tasks():
    t_val, temp = 2.0, 2.0
    hm_s = [torch.tensor([[[[0.0]]]]), torch.tensor([[[[1.0, -1.0]]]])]
    hm_t = [torch.tensor([[[[t_val]]]]), torch.tensor([[[[1.0, 3.0]]]])]
    pairs = [(0.0, 2.0), (1.0, 1.0), (-1.0, 3.0)]  # three elements over two task heads
    want = sum(_bern_kl(_sig(t / temp), _sig(s / temp)) for s, t in pairs) / 3 * temp ** 2
    assert hinton_loss(hm_s, hm_t, temp).item() == pytest.approx(want, rel=1e-5)
    assert hinton_loss(hm_t, hm_t, temp).item() == pytest.approx(0.0, abs=1e-7)
    terms = HintonKD(temp)(_out(torch.zeros(1, 1, 1, 1), hm_s), _out(torch.zeros(1, 1, 1, 1), hm_t), ())
    assert terms.hm.item() == terms.total.item() == pytest.approx(want, rel=1e-5)


def test_fitnet_by_hand():
    kd = FitNetKD(c_s=1, c_t=2)
    with torch.no_grad():
        kd.adapter.weight.copy_(torch.tensor([[[[2.0]]], [[[-1.0]]]]))
        kd.adapter.bias.zero_()
    m_s = torch.tensor([[[[1.0, 2.0]]]])  # (1, 1, 1, 2)
    m_t = torch.tensor([[[[2.0, 2.0]], [[0.0, 0.0]]]])  # (1, 2, 1, 2)
    # A(M_s) = [[2, 4], [-1, -2]] -> squared errors 0, 4, 1, 4 -> mean 9 / 4
    terms = kd(_out(m_s, [torch.zeros(1, 1, 1, 2)]), _out(m_t, [torch.zeros(1, 1, 1, 2)]), ())
    assert terms.feat.item() == terms.total.item() == pytest.approx(9 / 4)
    assert fitnet_loss(m_t, m_t).item() == 0.0


def test_sparsekd_foreground_mse_by_hand():
    hm_t = [torch.tensor([[[[0.0, -5.0]]]]), torch.tensor([[[[2.0]]]])]
    hm_s = [torch.tensor([[[[math.log(3.0), 4.0]]]]), torch.tensor([[[[0.0]]]])]
    # foreground: p_t = 0.5 and 0.881 (> 0.1); 0.0067 is background
    want = ((0.75 - 0.5) ** 2 + (0.5 - _sig(2.0)) ** 2) / 2
    assert sparsekd_hm_loss(hm_s, hm_t, 0.1).item() == pytest.approx(want, rel=1e-5)
    assert sparsekd_hm_loss(hm_s, hm_t, 0.99).item() == 0.0  # no foreground: 0, not NaN
    terms = SparseKD(0.1, 0.3)(_out(torch.zeros(1, 1, 1, 1), hm_s), _out(torch.zeros(1, 1, 1, 1), hm_t), ())
    assert terms.hm.item() == pytest.approx(want, rel=1e-5)


def test_heatmap_baselines_never_touch_teacher_or_logits_in_place():
    hm_t = torch.randn(1, 2, 3, 3, requires_grad=True)
    hm_s = torch.randn(1, 2, 3, 3, requires_grad=True)
    before = hm_s.detach().clone()
    (hinton_loss([hm_s], [hm_t], 2.0) + sparsekd_hm_loss([hm_s], [hm_t], 0.1)).backward()
    assert hm_t.grad is None and hm_s.grad is not None and torch.equal(hm_s.detach(), before)


def test_teacher_label_filter():
    assert teacher_label_mask(torch.tensor([0.2, 0.3, 0.5]), 0.3).tolist() == [False, False, True]
    det = Detections(torch.arange(18.0).reshape(2, 9), torch.tensor([0.2, 0.5]), torch.tensor([3, 1]))
    (kept,) = filter_teacher_detections([det], 0.3)
    assert kept.boxes.tolist() == [list(range(9, 18))] and kept.labels.tolist() == [1]
    assert kept.scores.tolist() == [0.5]
