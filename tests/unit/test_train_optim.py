"""AdamW one-cycle: frozen modules excluded, lr and beta1 follow the recipe's schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from itkd_cli.recipe.schema import TrainConfig
from itkd_cli.train.optim import build_optimizer, build_scheduler, clip_gradients


def test_frozen_teacher_never_in_optimizer():
    student, teacher = nn.Linear(3, 3), nn.Linear(3, 3)
    teacher.requires_grad_(False)
    shared = nn.Linear(2, 2)
    opt = build_optimizer([student, teacher, nn.Sequential(shared, shared)], TrainConfig())
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert ids == {id(p) for p in [*student.parameters(), *shared.parameters()]}
    assert all(id(p) not in ids for p in teacher.parameters())
    assert len(opt.param_groups) == 2
    with pytest.raises(ValueError, match="no trainable"):
        build_optimizer([teacher], TrainConfig())


def test_one_cycle_lr_and_momentum():
    cfg = TrainConfig(lr=3e-3, div_factor=10, pct_start=0.4, momentum=(0.95, 0.85), weight_decay=0.01)
    model = nn.Linear(2, 1)
    opt = build_optimizer([model], cfg)
    sched = build_scheduler(opt, cfg, total_steps=100)
    g = opt.param_groups[0]
    assert g["lr"] == pytest.approx(3e-4) and g["betas"] == (0.95, 0.99) and g["weight_decay"] == 0.01
    lrs, moms = [], []
    for _ in range(99):
        opt.step()
        sched.step()
        lrs.append(g["lr"])
        moms.append(g["betas"][0])
    peak = lrs.index(max(lrs)) + 1  # torch's one-cycle peaks after pct_start * total - 1 steps
    assert peak == 39 and max(lrs) == pytest.approx(3e-3)
    assert moms[peak - 1] == pytest.approx(0.85)
    # cosine annealing halfway between start and peak
    assert lrs[12] == pytest.approx(3e-4 + (3e-3 - 3e-4) * (1 - math.cos(math.pi * 13 / 39)) / 2)
    assert lrs[-1] < 3e-4 / 1e3 and moms[-1] == pytest.approx(0.95)


def test_clip_gradients_returns_norm_and_clips():
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    norm = clip_gradients([p], 1.0)
    assert float(norm) == pytest.approx(5.0)
    assert p.grad.norm().item() == pytest.approx(1.0, rel=1e-4)
