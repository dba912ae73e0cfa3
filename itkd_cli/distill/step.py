"""The distillation training step: lam * KD + (1 - lam) * detection loss, for every method.

With frames of the unlabeled pool in the batch (``Batch.labeled``, ``dataset.unlabeled``) the detection loss
reads the labeled frames only, and the KD terms read every frame: the object centres of an unlabeled frame
come from the teacher's own boxes above ``dataset.unlabeled.score_threshold``.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from itkd_cli.core.types import Batch, DetectorOutput, TaskTargets
from itkd_cli.distill.label_kd import LabelKD, TeacherTargets
from itkd_cli.distill.losses import combine
from itkd_cli.distill.pool import kd_targets, take_frames, take_targets
from itkd_cli.models.loss import DetLoss, centerpoint_loss
from itkd_cli.recipe.schema import HeadConfig

StepFn = Callable[[Batch, float], tuple[Tensor, dict[str, float]]]
# Steps between two measurements of each KD term's pull on the student (one extra backward per term); the
# latest measurement is logged with every step as ``pull_<term>``.
PULL_EVERY = 50


def gradient_norm(loss: Tensor, params: list[nn.Parameter]) -> float:
    """L2 norm of d loss / d params, the graph kept (0 when ``loss`` does not reach them)."""
    if not loss.requires_grad:
        return 0.0
    grads = [g for g in torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True) if g is not None]
    return float(torch.sqrt(sum(g.float().pow(2).sum() for g in grads))) if grads else 0.0


def pull_ratios(det: Tensor, terms: dict[str, Tensor], params: list[nn.Parameter]) -> dict[str, float]:
    """Each weighted KD term's gradient norm on the student over the weighted detection loss's: above 1, that
    term pulls the student harder than the labels do."""
    det_norm = gradient_norm(det, params)
    return {f"pull_{name}": gradient_norm(t, params) / det_norm if det_norm > 0 else float("inf")
            for name, t in terms.items()}


def detection_loss(output: DetectorOutput, targets: Sequence[TaskTargets], labeled: Optional[Tensor],
                   head_cfg: HeadConfig) -> DetLoss:
    """``centerpoint_loss`` of the labeled frames alone (its normalisers count their objects only).

    Args:
        output: the student's outputs of the whole batch (B frames).
        targets: one TaskTargets per task head (B frames).
        labeled: (B,) bool (``Batch.labeled``), or None when every frame is labeled (the loss of the whole batch).
        head_cfg: the student's head section (loss weights).

    Returns:
        DetLoss; with no labeled frame every term is a 0 that still reaches every head output (a zero gradient,
        so that data-parallel training sees every parameter used).
    """
    if labeled is None:
        return centerpoint_loss(output, targets, head_cfg)
    frames = torch.nonzero(labeled, as_tuple=True)[0]
    if frames.numel() == labeled.numel():
        return centerpoint_loss(output, targets, head_cfg)
    if frames.numel() == 0:
        zero = sum(t.float().sum() for task in output.tasks for t in task if t is not None) * 0.0
        return DetLoss(zero, zero, zero)
    return centerpoint_loss(take_frames(output, frames), take_targets(targets, frames), head_cfg)


def distill_step_fn(student: nn.Module, teacher: Optional[nn.Module], kd: Optional[nn.Module], lam: float,
                    head_cfg: HeadConfig, label_kd: Optional[LabelKD] = None,
                    term_weights: Optional[dict[str, float]] = None,
                    pool: Optional[TeacherTargets] = None) -> StepFn:
    """Loss of one batch: ``lam * KD + (1 - lam) * L_det`` (+ the teacher-label loss of sparsekd).

    L_det reads the labeled frames only (``detection_loss``); the KD terms (and sparsekd's labels) read every
    frame, an unlabeled frame's object centres from the teacher's boxes (``distill.pool.kd_targets``).

    Args:
        student: the network trained (or its DDP wrapper).
        teacher: the frozen teacher (``freeze_teacher``); None, or ``lam`` 0, for the student alone.
        kd: the KD module (``build_kd``) or its DDP wrapper; forward(student, teacher, targets) -> KDTerms.
        lam: lambda of ``combine`` (``kd_lambda``).
        head_cfg: the student's head section (detection loss weights).
        label_kd: sparsekd's label KD, or None.
        term_weights: the weight of each KD term in ``KDTerms.total`` (``kd_term_weights``); given, every
            ``PULL_EVERY`` steps the step measures ``pull_ratios`` (lam * weight * term against (1 - lam) * det)
            and logs the latest with every step.
        pool: the teacher boxes -> targets of the unlabeled frames (``TeacherTargets`` at
            ``dataset.unlabeled.score_threshold``); needed when batches hold such frames (``Batch.labeled``).

    Returns:
        step(batch, progress) -> (loss, logs); progress = fraction of the planned steps done.

    The student alone never runs the teacher: its step is the reference KD steps are timed against, and a
    teacher forward it does not use would make every KD method look cheaper.
    """
    distils = teacher is not None and kd is not None and lam > 0.0
    params = [p for p in student.parameters() if p.requires_grad] if term_weights is not None else []
    pulls: dict[str, float] = {}
    calls = [0]

    def step(batch: Batch, progress: float):
        args = (batch.voxels, batch.num_points, batch.coords, batch.batch_size)
        s_out = student(*args)
        det = detection_loss(s_out, batch.targets, batch.labeled, head_cfg)
        if not distils:
            return det.total, {"det": float(det.total.detach())}
        with torch.no_grad():
            t_out = teacher(*args)
        # sparsekd decodes every frame for its labels: the pool's centres reuse those boxes
        shared = label_kd is not None and pool is not None and batch.labeled is not None
        dets = label_kd.boxes.detections(t_out) if shared else None
        targets, pool_logs = kd_targets(batch, t_out, pool, dets)
        terms = kd(s_out, t_out, targets)
        kd_total = terms.total
        logs = {"det": det.total.detach(), **{k: v.detach() for k, v in terms._asdict().items() if k != "total"}}
        weighted = {k: lam * w * getattr(terms, k) for k, w in (term_weights or {}).items() if w > 0}
        if label_kd is not None:
            label = label_kd(s_out, t_out, dets)
            kd_total = kd_total + label
            logs["label"] = label.detach()
            weighted["label"] = lam * label
        if term_weights is not None and calls[0] % PULL_EVERY == 0:
            pulls.update(pull_ratios((1.0 - lam) * det.total, weighted, params))
        calls[0] += 1
        return combine(det.total, kd_total, lam), {**{k: float(v) for k, v in logs.items()}, "lam": lam, **pulls,
                                                   **pool_logs}

    return step
