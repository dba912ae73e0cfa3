"""Frozen teacher: eval mode, no gradients, BN statistics fixed, never in the optimiser.

Defect 3 of the public code left the teacher head trainable and decayed by weight decay. Here the
teacher is wrapped in ``FrozenTeacher``: every parameter has requires_grad False, its ``train()``
keeps the wrapped model in eval mode (a parent's ``.train()`` cannot re-enable BN statistic
updates), and its forward runs under ``torch.no_grad``. The forward runs an inference copy with the
BatchNorm layers folded into their convs (``models.fold_bn``): same outputs up to float rounding, one
pass over every feature map less on each distillation step. The wrapped ``model`` itself stays as
loaded (it is what the report profiles and what a caller inspects; ``eval_model`` is what evaluates the
teacher, always on its running statistics).

``bn="batch"`` (recipe ``distill.teacher_bn``, a departure from the method) makes the copy normalise
with each batch's own statistics, like the train-mode student it is compared with, instead of the
running statistics; it keeps none, so the teacher's running statistics still never change.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

import torch
from torch import nn

from itkd_cli.core.errors import ItkdError
from itkd_cli.models.fold_bn import fold_batchnorm

BN_STATISTICS = ("running", "batch")


class FrozenTeacher(nn.Module):
    """Wrapper that keeps a teacher network frozen whatever its parents do.

    Args:
        model: The teacher network (e.g. CenterPoint); frozen in place. It must not change after
            wrapping: the forward runs a BN-folded copy taken here.
        fold_bn: Run the BN-folded copy (default) or ``model`` itself (ignored with ``bn="batch"``).
        bn: ``"running"``: BatchNorm uses the running statistics (eval mode, the method);
            ``"batch"``: the statistics of each batch (see the module docstring).
    """

    def __init__(self, model: nn.Module, fold_bn: bool = True, bn: str = "running") -> None:
        super().__init__()
        if bn not in BN_STATISTICS:
            raise ItkdError(f"distill.teacher_bn: unknown value {bn!r}", hint=f"one of {BN_STATISTICS}")
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model.eval()
        self.bn = bn
        if bn == "batch":
            self.inference_model, self.folded_bn = batch_statistics_copy(model), 0
        else:
            self.inference_model, self.folded_bn = fold_batchnorm(model) if fold_bn else (None, 0)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        """Keep the teacher in eval mode (its BN running statistics never change)."""
        super().train(False)
        return self

    @property
    def eval_model(self) -> nn.Module:
        """The network that evaluates the teacher: always on its running statistics (folded when it can)."""
        return self.inference_model if self.bn == "running" and self.inference_model is not None else self.model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the teacher without building a graph; returns what the wrapped model returns."""
        net = self.model if self.inference_model is None else self.inference_model
        net.eval()
        with torch.no_grad():
            return net(*args, **kwargs)


def batch_statistics_copy(model: nn.Module) -> nn.Module:
    """An eval-mode deep copy of ``model`` whose BatchNorm layers normalise every input with its own batch
    statistics and keep no running statistics (torch's BatchNorm does so when they are None); ``model`` is
    left untouched."""
    net = copy.deepcopy(model).eval().requires_grad_(False)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    return net


def freeze_teacher(model: nn.Module, bn: str = "running") -> FrozenTeacher:
    """Wrap and freeze ``model`` (see ``FrozenTeacher``); pass only the student and KD modules to the optimiser."""
    return model if isinstance(model, FrozenTeacher) else FrozenTeacher(model, bn=bn)


def check_not_optimised(optimizer: torch.optim.Optimizer, teacher: nn.Module) -> None:
    """Raise when any teacher parameter sits in the optimiser's parameter groups."""
    teacher_ids = {id(p) for p in teacher.parameters()}
    leaked = sum(id(p) in teacher_ids for g in optimizer.param_groups for p in g["params"])
    if leaked:
        raise ItkdError(f"optimizer: {leaked} teacher parameter(s) in the optimiser; the teacher must stay frozen")


def trainable_parameters(*modules: nn.Module) -> Iterable[nn.Parameter]:
    """Parameters with requires_grad of the given modules (student, KD module), each once."""
    seen: set[int] = set()
    for m in modules:
        for p in m.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                yield p
