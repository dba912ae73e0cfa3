"""The distillation training step: lam * KD + (1 - lam) * detection loss, for every method."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from itkd_cli.core.types import Batch, detached
from itkd_cli.distill.label_kd import LabelKD
from itkd_cli.distill.losses import combine
from itkd_cli.models.loss import centerpoint_loss
from itkd_cli.recipe.schema import HeadConfig

StepFn = Callable[[Batch, float], tuple[Tensor, dict[str, float]]]


def distill_step_fn(student: nn.Module, teacher: Optional[nn.Module], kd: Optional[nn.Module], lam: float,
                    head_cfg: HeadConfig, label_kd: Optional[LabelKD] = None, kd_warmup: float = 0.0) -> StepFn:
    """Loss of one batch: ``lam * KD + (1 - lam) * L_det`` (+ the teacher-label loss of sparsekd).

    Args:
        student: the network trained (or its DDP wrapper).
        teacher: the frozen teacher (``freeze_teacher``); None, or ``lam`` 0, for the student alone.
        kd: the KD module (``build_kd``) or its DDP wrapper; forward(student, teacher, targets) -> KDTerms.
        lam: lambda of ``combine`` (``kd_lambda``).
        head_cfg: the student's head section (detection loss weights).
        label_kd: sparsekd's label KD, or None.
        kd_warmup: fraction of the steps during which the KD terms read the student's outputs detached:
            they train the KD modules only, and the student learns from detection alone (``distill.kd_warmup``).

    Returns:
        step(batch, progress) -> (loss, logs); progress = fraction of the planned steps done.

    The student alone never runs the teacher: its step is the reference KD steps are timed against, and a
    teacher forward it does not use would make every KD method look cheaper.
    """
    distils = teacher is not None and kd is not None and lam > 0.0

    def step(batch: Batch, progress: float):
        args = (batch.voxels, batch.num_points, batch.coords, batch.batch_size)
        s_out = student(*args)
        det = centerpoint_loss(s_out, batch.targets, head_cfg)
        if not distils:
            return det.total, {"det": float(det.total.detach())}
        with torch.no_grad():
            t_out = teacher(*args)
        s_kd = detached(s_out) if progress < kd_warmup else s_out
        terms = kd(s_kd, t_out, batch.targets)
        kd_total = terms.total
        logs = {"det": det.total.detach(), **{k: v.detach() for k, v in terms._asdict().items() if k != "total"}}
        if label_kd is not None:
            label = label_kd(s_kd, t_out)
            kd_total = kd_total + label
            logs["label"] = label.detach()
        return combine(det.total, kd_total, lam), {**{k: float(v) for k, v in logs.items()}, "lam": lam}

    return step
