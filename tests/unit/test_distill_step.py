"""The distillation step: lam * KD + (1 - lam) * detection, no teacher forward without KD, kd_warmup."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import itkd_cli.distill.step as mod
from itkd_cli.core.types import DetectorOutput, TaskHeadOutput
from itkd_cli.distill.baselines import FitNetKD, HintonKD, NoKD
from itkd_cli.models.loss import DetLoss

BATCH = SimpleNamespace(voxels=None, num_points=None, coords=None, batch_size=1, targets=())


def _hm_output(hm: torch.Tensor) -> DetectorOutput:
    return DetectorOutput(bev=torch.zeros(1, 1, 2, 2), tasks=(SimpleNamespace(hm=hm),))


@pytest.mark.parametrize("method", ["none", "hinton", "hinton_lam0"])
def test_a_step_without_kd_never_runs_the_teacher(monkeypatch, method):
    """The student-alone step is the reference KD step times are compared with: no teacher forward. A KD
    method at lambda 0 is the same detection step."""
    calls = []
    out = _hm_output(torch.zeros(1, 1, 2, 2, requires_grad=True))

    def teacher(*args):
        calls.append("teacher")
        return _hm_output(torch.ones(1, 1, 2, 2))

    monkeypatch.setattr(mod, "centerpoint_loss", lambda s_out, targets, head_cfg: DetLoss(
        s_out.tasks[0].hm.sum() + 2.0, torch.zeros(()), torch.zeros(())))
    kd, lam = {"none": (NoKD(), 0.0), "hinton": (HintonKD(2.0), 0.5), "hinton_lam0": (HintonKD(2.0), 0.0)}[method]
    step = mod.distill_step_fn(lambda *a: out, teacher, kd, lam, head_cfg=None)
    loss, logs = step(BATCH, 0.3)
    assert calls == (["teacher"] if method == "hinton" else [])
    if method == "hinton":  # the teacher's output reached the KD term, weighted by lambda
        assert logs["hm"] > 0 and loss.item() == pytest.approx(0.5 * 2.0 + 0.5 * logs["hm"]) and logs["lam"] == 0.5
    else:
        assert loss.item() == 2.0 and logs == {"det": 2.0}


def test_kd_warmup_trains_the_kd_modules_and_leaves_the_student_to_detection(monkeypatch):
    """Before distill.kd_warmup the KD loss reaches the adapter but not the student; after it, both."""
    torch.manual_seed(0)
    neck = torch.nn.Conv2d(2, 2, 1)  # the student: its output is the BEV map

    def student(*args):
        bev = neck(torch.ones(1, 2, 3, 3))
        z = torch.zeros(1, 1, 3, 3)
        return DetectorOutput(bev=bev, tasks=(TaskHeadOutput(bev[:, :1], z, z, z, z, None),))

    teacher_bev = torch.randn(1, 4, 3, 3)
    monkeypatch.setattr(mod, "centerpoint_loss",
                        lambda s_out, targets, head_cfg: DetLoss(s_out.bev.sum(), torch.zeros(()), torch.zeros(())))
    kd = FitNetKD(2, 4)
    step = mod.distill_step_fn(student, lambda *a: DetectorOutput(bev=teacher_bev, tasks=()), kd, 0.25,
                               head_cfg=None, kd_warmup=0.5)
    det_only = torch.full_like(neck.weight, 0.75 * 9)  # (1 - lam) d(sum of bev)/dW: 9 cells of input 1
    for progress, student_gets_kd in ((0.1, False), (0.6, True)):
        neck.zero_grad()
        kd.zero_grad()
        loss, logs = step(BATCH, progress)
        loss.backward()
        assert kd.adapter.weight.grad is not None and kd.adapter.weight.grad.abs().sum() > 0
        assert torch.allclose(neck.weight.grad, det_only) is not student_gets_kd
        assert logs["feat"] > 0 and logs["lam"] == 0.25


def test_kd_warmup_is_a_fraction_below_one():
    from itkd_cli.core.errors import ItkdError
    from itkd_cli.recipe.load import load_recipe

    assert load_recipe("synth-pillar", ["distill.kd_warmup=0.2"]).distill.kd_warmup == 0.2
    with pytest.raises(ItkdError, match="kd_warmup"):
        load_recipe("synth-pillar", ["distill.kd_warmup=1"])
