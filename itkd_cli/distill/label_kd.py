"""SparseKD's label KD: confident teacher boxes become extra CenterPoint targets for the student."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from itkd_cli.core.types import DetectorOutput, TaskTargets
from itkd_cli.distill.baselines import filter_teacher_detections
from itkd_cli.models.decode import decode
from itkd_cli.models.loss import centerpoint_loss
from itkd_cli.recipe.schema import ModelConfig

# (boxes (K, 9) float32, labels (K,) 1-based) -> per task head (heatmap, ind, mask, box, cls) arrays of
# one frame: the data stage's target assigner (``data.targets.assign_targets`` bound to the recipe).
AssignFn = Callable[[np.ndarray, np.ndarray], Sequence[Sequence[np.ndarray]]]


class LabelKD:
    """Detection loss of the student against targets built from the teacher's confident boxes.

    Args:
        teacher_cfg: the teacher's ModelConfig (decoding of its outputs).
        student_cfg: the student's ModelConfig (same head tasks and map size as the teacher).
        class_names: the dataset's classes, in label order.
        label_score: teacher boxes scoring above it become labels (``distill.baseline.label_score``).
        assign: the target assigner (see ``AssignFn``).
    """

    def __init__(self, teacher_cfg: ModelConfig, student_cfg: ModelConfig, class_names: Sequence[str],
                 label_score: float, assign: AssignFn) -> None:
        self.teacher_cfg, self.student_cfg = teacher_cfg, student_cfg
        self.class_names = list(class_names)
        self.label_score = label_score
        self.assign = assign

    def teacher_targets(self, teacher_out: DetectorOutput, device: torch.device) -> tuple[TaskTargets, ...]:
        """Targets of every task head from the teacher's boxes above ``label_score`` (after NMS)."""
        dets = filter_teacher_detections(decode(teacher_out, self.teacher_cfg, self.class_names), self.label_score)
        frames = [self.assign(d.boxes.cpu().numpy().astype(np.float32), d.labels.cpu().numpy() + 1) for d in dets]
        return tuple(
            TaskTargets(*(torch.from_numpy(np.stack([f[t][i] for f in frames])).to(device) for i in range(5)))
            for t in range(len(self.teacher_cfg.head.tasks)))

    def __call__(self, student_out: DetectorOutput, teacher_out: DetectorOutput) -> Tensor:
        targets = self.teacher_targets(teacher_out, student_out.bev.device)
        return centerpoint_loss(student_out, targets, self.student_cfg.head).total
