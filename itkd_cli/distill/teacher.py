"""Frozen teacher: eval mode, no gradients, BN statistics fixed, never in the optimiser.

Defect 3 of the public code left the teacher head trainable and decayed by weight decay. Here the
teacher is wrapped in ``FrozenTeacher``: every parameter has requires_grad False, its ``train()``
keeps the wrapped model in eval mode (a parent's ``.train()`` cannot re-enable BN statistic
updates), and its forward runs under ``torch.no_grad``. The forward runs an inference copy with the
BatchNorm layers folded into their convs (``models.fold_bn``): same outputs up to float rounding, one
pass over every feature map less on each distillation step. The wrapped ``model`` itself stays as
loaded (it is what the report profiles and what a caller inspects; ``eval_model`` is what evaluates the
teacher).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from itkd_cli.core.errors import ItkdError
from itkd_cli.models.fold_bn import fold_batchnorm


class FrozenTeacher(nn.Module):
    """Wrapper that keeps a teacher network frozen whatever its parents do.

    Args:
        model: The teacher network (e.g. CenterPoint); frozen in place. It must not change after
            wrapping: the forward runs a BN-folded copy taken here.
        fold_bn: Run the BN-folded copy (default) or ``model`` itself.
    """

    def __init__(self, model: nn.Module, fold_bn: bool = True) -> None:
        super().__init__()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model.eval()
        self.inference_model, self.folded_bn = fold_batchnorm(model) if fold_bn else (None, 0)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        """Keep the teacher in eval mode (its BN running statistics never change)."""
        super().train(False)
        return self

    @property
    def eval_model(self) -> nn.Module:
        """The network that evaluates the teacher (the folded copy when there is one)."""
        return self.model if self.inference_model is None else self.inference_model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the teacher without building a graph; returns what the wrapped model returns."""
        net = self.eval_model.eval()
        with torch.no_grad():
            return net(*args, **kwargs)


def freeze_teacher(model: nn.Module) -> FrozenTeacher:
    """Wrap and freeze ``model`` (see ``FrozenTeacher``); pass only the student and KD modules to the optimiser."""
    return model if isinstance(model, FrozenTeacher) else FrozenTeacher(model)


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
