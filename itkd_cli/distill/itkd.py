"""ItkdDistiller: the learned KD modules of itKD and the one-call KD loss for a whole model.

Holds the shared channel autoencoder (E, D), the student adapter A and one head-attention fusion
per task head. The autoencoder terms read the map ``cfg.tap`` names (``feature_map``): the neck
output M (the method) or the head's shared-conv output. ``forward`` returns KDTerms computed ONCE for
the model (defect 6 of the public code counted the KD loss once per task head):
  - L_cr and L_it use the BEV maps, which are shared by all task heads; MSE_gt pools the objects of
    all task heads (each object listed once) and averages over valid ones;
  - the head loss sums the per-object L1 over all task heads and divides by the total number of
    valid objects of all task heads.
A weight of 0 skips its term's compute (ablation switch).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.types import DetectorOutput, TaskTargets
from itkd_cli.distill.autoencoder import ChannelAutoencoder, build_adapter
from itkd_cli.distill.head_attention import HeadFusion, head_attention_sum, head_splits
from itkd_cli.distill.losses import (
    KDTerms, check_centres, check_same_grid, cr_loss, it_loss, pooled_centres, zero_terms)
from itkd_cli.models.student import bev_channel_index
from itkd_cli.recipe.schema import ItkdLossConfig, ModelConfig


class ItkdDistiller(nn.Module):
    """The trainable itKD modules (never part of the exported student).

    Args:
        cfg: ``distill.itkd`` recipe section (weights, autoencoder shape, fusion guard).
        c_t: Teacher width of the tapped map (``tap_width``).
        c_s: Student width of the tapped map.
        task_splits: Channel blocks of every task head (see ``head_splits``).
        with_velocity: Whether heads have a velocity branch.
        adapter_index: Teacher channel of each student channel of the tapped map; needed by
            ``adapter_init: selection`` (see ``tap_channel_index``).
    """

    def __init__(self, cfg: ItkdLossConfig, c_t: int, c_s: int, task_splits: Sequence[Sequence[int]],
                 with_velocity: bool, adapter_index: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.c_t, self.c_s = c_t, c_s
        self.task_splits = tuple(tuple(s) for s in task_splits)
        self.with_velocity = with_velocity
        self.autoencoder = ChannelAutoencoder(c_t, c_s, cfg.latent_ratio, cfg.hidden_layers)
        self.adapter = build_adapter(c_s, c_t)
        if cfg.adapter_init == "selection":
            init_adapter_as_selection(self.adapter, adapter_index)
        self.head_fusion = nn.ModuleList(HeadFusion(sum(s), cfg.head_fusion_guard) for s in self.task_splits)

    def forward(self, student: DetectorOutput, teacher: DetectorOutput,
                targets: Sequence[TaskTargets]) -> KDTerms:
        """Weighted itKD terms for one batch.

        Args:
            student: Student outputs; the tapped map (B, C_s, H, W), one TaskHeadOutput per task.
            teacher: Teacher outputs; the tapped map (B, C_t, H, W); detached here whatever the caller did.
            targets: One TaskTargets per task (ind, mask (B, M)).

        Returns:
            KDTerms(cr, it, head, hm=0, feat=0, total = w_cr*cr + w_it*it + w_head*head).
        """
        m_s, m_t = self._check(student, teacher, targets)
        cfg, m_t = self.cfg, m_t.detach()
        zero = m_s.new_zeros(())
        cr = it = head = zero
        if cfg.w_cr > 0 or cfg.w_it > 0:
            ae, adapter = self.autoencoder, self.adapter
            z_t = ae.encode(m_t)
            # E(A(M_s)) with E trainable, only where a term trains the encoder through it
            z_s = ae.encode(m_s, adapter) if cfg.w_it > 0 or cfg.cr_trains_encoder else None
            if cfg.w_cr > 0:
                if cfg.cr_trains_encoder:
                    cr = cr_loss(z_s, z_t, normalize=cfg.cr_normalize)
                else:  # E learns from L_it only; L_cr pulls the student's code onto the teacher's
                    cr = cr_loss(ae.encode(m_s, adapter, fixed=True), z_t.detach(), normalize=cfg.cr_normalize)
            if cfg.w_it > 0:
                ind, mask = pooled_centres(targets)
                s2t = adapter(ae.decode(z_s))
                t2s = ae.decode(z_t)
                it = it_loss(s2t, m_t, t2s, m_s, ind, mask, cfg.detach_student_target)
        if cfg.w_head > 0:
            head = self.head_loss(student, teacher, targets)
        total = cfg.w_cr * cr + cfg.w_it * it + cfg.w_head * head
        return zero_terms(m_s, cr=cr, it=it, head=head, total=total)

    def head_loss(self, student: DetectorOutput, teacher: DetectorOutput,
                  targets: Sequence[TaskTargets]) -> Tensor:
        """Head attention L1 summed over all task heads / total valid objects of all task heads."""
        total = student.bev.new_zeros(())
        for k, (s, t, tg) in enumerate(zip(student.tasks, teacher.tasks, targets)):
            total = total + head_attention_sum(s, t, tg.ind, tg.mask, self.head_fusion[k],
                                               self.task_splits[k], self.with_velocity, self.cfg.head_standardize,
                                               self.cfg.head_smooth_beta)
        n_objects = sum(tg.mask.sum() for tg in targets).clamp(min=1)
        return total / n_objects.to(total.dtype)

    def _check(self, student: DetectorOutput, teacher: DetectorOutput,
               targets: Sequence[TaskTargets]) -> tuple[Tensor, Tensor]:
        """Validate shapes against the distiller; returns the tapped maps (student, teacher)."""
        n = len(self.task_splits)
        if not (len(student.tasks) == len(teacher.tasks) == len(targets) == n):
            raise ItkdError(f"model.head.tasks: distiller built for {n} task heads, got student "
                            f"{len(student.tasks)}, teacher {len(teacher.tasks)}, targets {len(targets)}")
        m_s, m_t = feature_map(student, self.cfg.tap), feature_map(teacher, self.cfg.tap)
        if m_s.shape[1] != self.c_s or m_t.shape[1] != self.c_t:
            raise ItkdError(f"distill.itkd.tap: distiller built for {self.cfg.tap} widths student {self.c_s} / "
                            f"teacher {self.c_t}, got {m_s.shape[1]} / {m_t.shape[1]}")
        check_same_grid(m_s, m_t, self.cfg.tap)
        h, w = m_s.shape[-2:]
        if any(t.hm.shape[-2:] != (h, w) for t in (*student.tasks, *teacher.tasks)):
            raise ItkdError(f"model.head: head maps do not match the {h}x{w} {self.cfg.tap} map they index")
        check_centres(*pooled_centres(targets), h, w)
        return m_s, m_t


def feature_map(out: DetectorOutput, tap: str) -> Tensor:
    """The map the autoencoder terms read: the neck output M, or the head's shared-conv output."""
    if tap == "neck":
        return out.bev
    if out.shared is None:
        raise ItkdError("distill.itkd.tap: 'head_shared' needs the model's shared-conv output (CenterPoint.forward)")
    return out.shared


def init_adapter_as_selection(adapter: nn.Conv2d, index: Optional[Sequence[int]]) -> None:
    """A(x)[index[j]] = x[j] and 0 on the teacher channels no student channel was cut from."""
    c_t, c_s = adapter.weight.shape[:2]
    if index is None or len(index) != c_s or not all(0 <= i < c_t for i in index) or len(set(index)) != c_s:
        got = ("no channel map" if index is None
               else f"{len(index)} channels, {len(set(index))} distinct, max {max(index, default=-1)}")
        raise ItkdError(f"distill.itkd.adapter_init: 'selection' needs {c_s} distinct teacher channels below {c_t}, "
                        f"got {got}")
    with torch.no_grad():
        adapter.weight.zero_()
        adapter.weight[list(index), list(range(c_s)), 0, 0] = 1.0
        if adapter.bias is not None:
            adapter.bias.zero_()


def tap_channel_index(teacher_cfg: ModelConfig, student_cfg: ModelConfig, tap: str) -> list[int]:
    """Teacher channel each student channel of the tapped map was cut from by channel selection."""
    if tap == "neck":
        return bev_channel_index(teacher_cfg, student_cfg)
    return list(range(student_cfg.head.shared_conv_channels))  # the leading channels of the shared conv


def tap_width(cfg: ModelConfig, tap: str) -> int:
    """Channels of the tapped map of a network built from ``cfg``."""
    return cfg.bev_out_channels if tap == "neck" else cfg.head.shared_conv_channels


def check_compatible(teacher_cfg: ModelConfig, student_cfg: ModelConfig) -> None:
    """Teacher and student must share task heads, velocity branch and map size (pixel alignment)."""
    if teacher_cfg.head.tasks != student_cfg.head.tasks:
        raise ItkdError("model.head.tasks: teacher and student task heads differ",
                        hint="derive the student from the teacher recipe (itkd compress)")
    if teacher_cfg.head.with_velocity != student_cfg.head.with_velocity:
        raise ItkdError("model.head.with_velocity: teacher and student differ")
    if teacher_cfg.head_map_size != student_cfg.head_map_size:
        raise ItkdError(f"model.grid: head maps differ, teacher {teacher_cfg.head_map_size} vs "
                        f"student {student_cfg.head_map_size}")


def build_distiller(cfg: ItkdLossConfig, teacher_cfg: ModelConfig, student_cfg: ModelConfig) -> ItkdDistiller:
    """ItkdDistiller with every width derived from the two model configs.

    Args:
        cfg: ``distill.itkd`` section.
        teacher_cfg: Teacher ModelConfig (C_t = width of the tapped map, see ``tap_width``).
        student_cfg: Student ModelConfig (C_s likewise).

    Returns:
        The distiller (train it with the student; never with the teacher).
    """
    check_compatible(teacher_cfg, student_cfg)
    vel = teacher_cfg.head.with_velocity
    splits = [head_splits(len(task), vel) for task in teacher_cfg.head.tasks]
    return ItkdDistiller(cfg, tap_width(teacher_cfg, cfg.tap), tap_width(student_cfg, cfg.tap), splits, vel,
                         tap_channel_index(teacher_cfg, student_cfg, cfg.tap))
