"""ItkdDistiller: the learned KD modules of itKD and the one-call KD loss for a whole model.

Holds the shared channel autoencoder (E, D), the student adapter A and one head-attention fusion
per task head. The autoencoder terms read the neck output M. ``forward`` returns KDTerms computed ONCE
for the model (defect 6 of the public code counted the KD loss once per task head):
  - L_cr and L_it use the BEV maps, which are shared by all task heads; MSE_gt pools the objects of
    all task heads (each object listed once);
  - the head loss sums the per-object L1 over all task heads and divides by the total number of
    valid objects of all task heads.
``distill.itkd.form`` picks the formulas: 'paper' is the public code's, 'default' departs from it where
a departure measured better (see ``ItkdLossConfig.form``). A weight of 0 skips its term's compute.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.types import DetectorOutput, TaskTargets
from itkd_cli.distill.autoencoder import ChannelAutoencoder, build_adapter
from itkd_cli.distill.head_attention import HeadFusion, head_attention_sum, head_features, head_splits
from itkd_cli.distill.losses import (
    KDTerms, check_centres, check_same_grid, cr_loss, gather_at_centres, it_loss, pooled_centres, zero_terms)
from itkd_cli.models.student import bev_channel_index
from itkd_cli.recipe.schema import ItkdLossConfig, ModelConfig


class ItkdDistiller(nn.Module):
    """The trainable itKD modules (never part of the exported student).

    Args:
        cfg: ``distill.itkd`` recipe section (form, weights, autoencoder shape).
        c_t: Teacher BEV width (neck output).
        c_s: Student BEV width.
        task_splits: Channel blocks of every task head (see ``head_splits``).
        with_velocity: Whether heads have a velocity branch.
        max_objects: Object slots per frame and task (``model.head.max_objects``): the paper form's normaliser.
        adapter_index: Teacher channel of each student BEV channel (``models.student.bev_channel_index``);
            the default form starts the adapter as that selection.
    """

    def __init__(self, cfg: ItkdLossConfig, c_t: int, c_s: int, task_splits: Sequence[Sequence[int]],
                 with_velocity: bool, max_objects: int, adapter_index: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.c_t, self.c_s = c_t, c_s
        self.task_splits = tuple(tuple(s) for s in task_splits)
        self.with_velocity = with_velocity
        self.slots = max_objects if cfg.paper else None
        self.autoencoder = ChannelAutoencoder(c_t, c_s, cfg.latent_ratio, cfg.hidden_layers)
        self.adapter = build_adapter(c_s, c_t)
        if not cfg.paper:
            init_adapter_as_selection(self.adapter, adapter_index)
        self.head_fusion = nn.ModuleList(HeadFusion(sum(s), "normalize") for s in self.task_splits)

    def forward(self, student: DetectorOutput, teacher: DetectorOutput,
                targets: Sequence[TaskTargets]) -> KDTerms:
        """Weighted itKD terms for one batch.

        Args:
            student: Student outputs; bev (B, C_s, H, W), one TaskHeadOutput per task.
            teacher: Teacher outputs; bev (B, C_t, H, W); detached here whatever the caller did.
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
            z_s = ae.encode(m_s, adapter) if cfg.w_it > 0 or cfg.paper else None
            if cfg.w_cr > 0:
                if cfg.paper:  # the public code: plain mean L1, and L_cr trains the shared encoder too
                    cr = cr_loss(z_s, z_t, normalize=False)
                else:  # E learns from L_it only; L_cr pulls the student's code onto the teacher's
                    cr = cr_loss(ae.encode(m_s, adapter, fixed=True), z_t.detach(), normalize=True)
            if cfg.w_it > 0:
                ind, mask = pooled_centres(targets)
                it = it_loss(adapter(ae.decode(z_s)), m_t, ae.decode(z_t), m_s, ind, mask,
                             detach_student_target=not cfg.paper, slots=self.slots)
        if cfg.w_head > 0:
            head = self.head_loss(student, teacher, targets)
        total = cfg.w_cr * cr + cfg.w_it * it + cfg.w_head * head
        return zero_terms(m_s, cr=cr, it=it, head=head, total=total)

    def head_loss(self, student: DetectorOutput, teacher: DetectorOutput,
                  targets: Sequence[TaskTargets]) -> Tensor:
        """Head attention L1 summed over all task heads / total valid objects of all task heads."""
        total = student.bev.new_zeros(())
        for k, (s, t, tg) in enumerate(zip(student.tasks, teacher.tasks, targets)):
            x_s = gather_at_centres(head_features(s, self.with_velocity), tg.ind, tg.mask)
            x_t = gather_at_centres(head_features(t, self.with_velocity).detach(), tg.ind, tg.mask)
            total = total + head_attention_sum(x_s, x_t, tg.mask, self.head_fusion[k], self.task_splits[k],
                                               standardize=not self.cfg.paper, slots=self.slots)
        n_objects = sum(tg.mask.sum() for tg in targets).clamp(min=1)
        return total / n_objects.to(total.dtype)

    def _check(self, student: DetectorOutput, teacher: DetectorOutput,
               targets: Sequence[TaskTargets]) -> tuple[Tensor, Tensor]:
        """Validate shapes against the distiller; returns the BEV maps (student, teacher)."""
        n = len(self.task_splits)
        if not (len(student.tasks) == len(teacher.tasks) == len(targets) == n):
            raise ItkdError(f"model.head.tasks: distiller built for {n} task heads, got student "
                            f"{len(student.tasks)}, teacher {len(teacher.tasks)}, targets {len(targets)}")
        m_s, m_t = student.bev, teacher.bev
        if m_s.shape[1] != self.c_s or m_t.shape[1] != self.c_t:
            raise ItkdError(f"model.backbone_2d: distiller built for BEV widths student {self.c_s} / "
                            f"teacher {self.c_t}, got {m_s.shape[1]} / {m_t.shape[1]}")
        check_same_grid(m_s, m_t, "bev")
        h, w = m_s.shape[-2:]
        if any(t.hm.shape[-2:] != (h, w) for t in (*student.tasks, *teacher.tasks)):
            raise ItkdError(f"model.head: head maps do not match the {h}x{w} BEV map they index")
        check_centres(*pooled_centres(targets), h, w)
        return m_s, m_t


def init_adapter_as_selection(adapter: nn.Conv2d, index: Optional[Sequence[int]]) -> None:
    """A(x)[index[j]] = x[j] and 0 on the teacher channels no student channel was cut from."""
    c_t, c_s = adapter.weight.shape[:2]
    if index is None or len(index) != c_s or not all(0 <= i < c_t for i in index) or len(set(index)) != c_s:
        got = ("no channel map" if index is None
               else f"{len(index)} channels, {len(set(index))} distinct, max {max(index, default=-1)}")
        raise ItkdError(f"distill.itkd.form: the default form's adapter needs {c_s} distinct teacher channels "
                        f"below {c_t}, "
                        f"got {got}")
    with torch.no_grad():
        adapter.weight.zero_()
        adapter.weight[list(index), list(range(c_s)), 0, 0] = 1.0
        if adapter.bias is not None:
            adapter.bias.zero_()


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
        teacher_cfg: Teacher ModelConfig (C_t = ``bev_out_channels``).
        student_cfg: Student ModelConfig (C_s likewise).

    Returns:
        The distiller (train it with the student; never with the teacher).
    """
    check_compatible(teacher_cfg, student_cfg)
    vel = teacher_cfg.head.with_velocity
    splits = [head_splits(len(task), vel) for task in teacher_cfg.head.tasks]
    return ItkdDistiller(cfg, teacher_cfg.bev_out_channels, student_cfg.bev_out_channels, splits, vel,
                         teacher_cfg.head.max_objects, bev_channel_index(teacher_cfg, student_cfg))
