"""Baseline distillers with the ItkdDistiller interface, and ``build_kd`` choosing by method.

All baselines reduce over the pooled elements/objects of every task head (never once per head):
  - none: no KD (total 0).
  - hinton: temperature KD on the heatmaps, binary KL(sigmoid(hm_t/T) || sigmoid(hm_s/T)) * T^2,
    averaged over every heatmap element of every task head.
  - fitnet: BEV feature mimic, MSE(A(M_s), M_t) with an adapter 1x1 conv C_s -> C_t.
  - sparsekd: heatmap MSE of sigmoid probabilities where the teacher's probability exceeds
    ``fg_threshold``, divided by the foreground count. The label-KD part of SparseKD (confident
    teacher boxes as extra targets) runs in the training stage with the data stage's target
    assigner; ``filter_teacher_detections`` selects those boxes.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from itkd_cli.core.types import DetectorOutput, Detections, TaskTargets
from itkd_cli.distill.autoencoder import build_adapter
from itkd_cli.distill.itkd import build_distiller, check_compatible
from itkd_cli.distill.losses import KDTerms, check_same_grid, zero_terms
from itkd_cli.recipe.schema import DistillConfig, ModelConfig


def hinton_loss(hm_s: Sequence[Tensor], hm_t: Sequence[Tensor], temperature: float) -> Tensor:
    """Temperature KD on heatmap logits, pooled over all task heads.

    Per element: KL(Bern(p_t) || Bern(p_s)) with p = sigmoid(logit / T); times T^2; mean over every
    element of every task head (so splitting classes over more heads does not scale it).

    Args:
        hm_s: Student heatmap logits, one (B, n_k, H, W) per task.
        hm_t: Teacher heatmap logits, same shapes (detached here).
        temperature: T > 0.

    Returns:
        Scalar tensor (0 when the heatmaps agree).
    """
    total, count = hm_s[0].new_zeros((), dtype=torch.float32), 0
    for s, t in zip(hm_s, hm_t):
        s, t = s.float() / temperature, t.detach().float() / temperature
        p_t = torch.sigmoid(t)
        kl = (F.binary_cross_entropy_with_logits(s, p_t, reduction="none")
              - F.binary_cross_entropy_with_logits(t, p_t, reduction="none"))
        total, count = total + kl.sum(), count + kl.numel()
    return total / count * temperature ** 2


def fitnet_loss(adapted_s: Tensor, m_t: Tensor) -> Tensor:
    """FitNet hint loss: MSE(A(M_s), M_t) averaged over the map.

    Args:
        adapted_s: Adapter output A(M_s) (B, C_t, H, W).
        m_t: Teacher map (B, C_t, H, W) (detached here).

    Returns:
        Scalar tensor.
    """
    return F.mse_loss(adapted_s, m_t.detach())


def sparsekd_hm_loss(hm_s: Sequence[Tensor], hm_t: Sequence[Tensor], fg_threshold: float) -> Tensor:
    """Foreground heatmap KD: MSE of sigmoid probabilities where sigmoid(hm_t) > fg_threshold.

    Summed over the foreground elements of all task heads and divided by their count (0 when there
    is no foreground).

    Args:
        hm_s: Student heatmap logits, one (B, n_k, H, W) per task.
        hm_t: Teacher heatmap logits, same shapes (detached here).
        fg_threshold: Teacher probability marking foreground.

    Returns:
        Scalar tensor.
    """
    total = count = hm_s[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(hm_s, hm_t):
        p_t = torch.sigmoid(t.detach().float())  # float32: sums run over whole maps
        fg = (p_t > fg_threshold).float()
        total = total + ((torch.sigmoid(s.float()) - p_t).pow(2) * fg).sum()
        count = count + fg.sum()
    return total / count.clamp(min=1)


def teacher_label_mask(scores: Tensor, label_score: float) -> Tensor:
    """Which teacher detections become SparseKD labels: (K,) scores -> (K,) bool (score > label_score)."""
    return scores > label_score


def filter_teacher_detections(dets: Sequence[Detections], label_score: float) -> list[Detections]:
    """Keep the confident teacher boxes of each frame (to be turned into targets by the data stage)."""
    out = []
    for d in dets:
        keep = teacher_label_mask(d.scores, label_score)
        out.append(Detections(d.boxes[keep], d.scores[keep], d.labels[keep]))
    return out


class NoKD(nn.Module):
    """No distillation: every term 0 (the student trains on the detection loss alone; no teacher needed)."""

    def forward(self, student: DetectorOutput, teacher: Optional[DetectorOutput],
                targets: Sequence[TaskTargets]) -> KDTerms:
        return zero_terms(student.bev)


class HintonKD(nn.Module):
    """Heatmap temperature KD (see ``hinton_loss``)."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, student: DetectorOutput, teacher: DetectorOutput, targets: Sequence[TaskTargets]) -> KDTerms:
        hm = hinton_loss([t.hm for t in student.tasks], [t.hm for t in teacher.tasks], self.temperature)
        return zero_terms(student.bev, hm=hm, total=hm)


class FitNetKD(nn.Module):
    """BEV feature mimic through an adapter 1x1 conv C_s -> C_t (see ``fitnet_loss``)."""

    def __init__(self, c_s: int, c_t: int) -> None:
        super().__init__()
        self.adapter = build_adapter(c_s, c_t)

    def forward(self, student: DetectorOutput, teacher: DetectorOutput, targets: Sequence[TaskTargets]) -> KDTerms:
        check_same_grid(student.bev, teacher.bev, "bev")
        feat = fitnet_loss(self.adapter(student.bev), teacher.bev)
        return zero_terms(student.bev, feat=feat, total=feat)


class SparseKD(nn.Module):
    """Foreground heatmap KD of SparseKD (see ``sparsekd_hm_loss``); label KD lives in training."""

    def __init__(self, fg_threshold: float, label_score: float) -> None:
        super().__init__()
        self.fg_threshold = fg_threshold
        self.label_score = label_score

    def forward(self, student: DetectorOutput, teacher: DetectorOutput, targets: Sequence[TaskTargets]) -> KDTerms:
        hm = sparsekd_hm_loss([t.hm for t in student.tasks], [t.hm for t in teacher.tasks], self.fg_threshold)
        return zero_terms(student.bev, hm=hm, total=hm)


def kd_lambda(cfg: DistillConfig, pooled: bool) -> float:
    """lambda of ``combine`` for the chosen method; 0 for ``none`` (detection loss unscaled). ``pooled``: the
    run mixes ``dataset.unlabeled`` into its batches (itKD's default form then weighs KD more)."""
    if cfg.method == "none":
        return 0.0
    return cfg.itkd.lam_value(pooled) if cfg.method == "itkd" else cfg.baseline.lam


def kd_term_weights(cfg: DistillConfig) -> dict[str, float]:
    """The weight of each KDTerms field in ``total`` for the chosen method (empty for ``none``)."""
    if cfg.method == "itkd":
        return {"cr": cfg.itkd.w_cr, "it": cfg.itkd.w_it, "head": cfg.itkd.w_head}
    return {"none": {}, "fitnet": {"feat": 1.0}}.get(cfg.method, {"hm": 1.0})


def build_kd(cfg: DistillConfig, teacher_cfg: ModelConfig, student_cfg: ModelConfig) -> nn.Module:
    """The KD module of ``cfg.method``; forward(student, teacher, targets) -> KDTerms.

    Args:
        cfg: ``distill`` recipe section.
        teacher_cfg: Teacher ModelConfig.
        student_cfg: Student ModelConfig.

    Returns:
        ItkdDistiller, NoKD, HintonKD, FitNetKD or SparseKD.
    """
    if cfg.method == "itkd":
        return build_distiller(cfg.itkd, teacher_cfg, student_cfg)
    if cfg.method == "none":
        return NoKD()
    check_compatible(teacher_cfg, student_cfg)
    b = cfg.baseline
    if cfg.method == "hinton":
        return HintonKD(b.temperature)
    if cfg.method == "fitnet":
        return FitNetKD(student_cfg.bev_out_channels, teacher_cfg.bev_out_channels)
    return SparseKD(b.fg_threshold, b.label_score)
