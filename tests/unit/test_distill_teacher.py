"""Frozen teacher: no teacher tensor (params, BN statistics, counters) moves during training."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from itkd_cli.core.errors import ItkdError
from itkd_cli.distill.baselines import FitNetKD
from itkd_cli.distill.teacher import FrozenTeacher, check_not_optimised, freeze_teacher, trainable_parameters

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: do not oversubscribe the cores


def _net(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 1), nn.BatchNorm2d(width))


def _train_steps(teacher: nn.Module, steps: int = 4) -> None:
    torch.manual_seed(0)
    student, kd = _net(2), FitNetKD(c_s=2, c_t=4)
    parent = nn.ModuleDict({"student": student, "kd": kd, "teacher": teacher})
    opt = torch.optim.AdamW(trainable_parameters(parent), lr=0.1, weight_decay=0.5)
    check_not_optimised(opt, teacher)
    for _ in range(steps):
        parent.train()  # a parent's train() must not unfreeze the teacher
        x = torch.randn(2, 3, 4, 4)
        loss = nn.functional.mse_loss(kd.adapter(student(x)), teacher(x))
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_no_teacher_tensor_changes_after_optimiser_steps():
    torch.manual_seed(1)
    raw = _net(4)
    before = {k: v.clone() for k, v in raw.state_dict().items()}
    teacher = freeze_teacher(raw)
    _train_steps(teacher)
    after = raw.state_dict()
    assert any("num_batches_tracked" in k for k in after) and any("running_var" in k for k in after)
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    assert not teacher.training and not any(m.training for m in raw.modules())
    assert all(not p.requires_grad for p in raw.parameters())
    assert freeze_teacher(teacher) is teacher


def test_unfrozen_teacher_would_drift():
    """Contrast: requires_grad False + eval() alone is not enough; the parent's train() re-enables BN updates."""
    torch.manual_seed(1)
    raw = _net(4).requires_grad_(False).eval()
    before = {k: v.clone() for k, v in raw.state_dict().items()}
    _train_steps(raw)
    assert any(not torch.equal(v, raw.state_dict()[k]) for k, v in before.items())


def test_teacher_forward_builds_no_graph_and_optimiser_leak_is_caught():
    teacher = FrozenTeacher(_net(4))
    x = torch.randn(1, 3, 4, 4, requires_grad=True)
    assert teacher(x).grad_fn is None
    leaky = torch.optim.SGD(list(teacher.parameters()), lr=0.1)
    with pytest.raises(ItkdError):
        check_not_optimised(leaky, teacher)


def _with_trained_statistics(net: nn.Sequential) -> nn.Sequential:
    """Running statistics that differ from any one batch's, as after training."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1.0, 1.0)
            m.running_var.uniform_(0.5, 2.0)
    return net


def test_teacher_distils_and_evaluates_on_its_running_statistics():
    """The KD targets and the teacher's metrics both come from the eval-mode network (BN folded: same outputs)."""
    torch.manual_seed(2)
    raw = _with_trained_statistics(_net(4))
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        running_out, batch_out = raw.eval()(x), copy.deepcopy(raw).train()(x)
        teacher = FrozenTeacher(raw)
        assert teacher.eval_model is not raw  # the folded copy ...
        assert torch.allclose(teacher(x), running_out, atol=1e-5)  # ... gives the running statistics' outputs
        assert torch.allclose(teacher.eval_model(x), running_out, atol=1e-5)
        assert not torch.allclose(teacher(x), batch_out, atol=1e-3)  # not a train-mode network's
        assert torch.equal(FrozenTeacher(raw, fold_bn=False)(x), running_out)
