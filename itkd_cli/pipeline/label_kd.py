"""SparseKD's label KD: confident teacher boxes become extra CenterPoint targets for the student."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from itkd_cli.core.types import Batch, DetectorOutput, TaskTargets
from itkd_cli.data.targets import assign_targets
from itkd_cli.distill.baselines import filter_teacher_detections
from itkd_cli.evaluate.decode import decode
from itkd_cli.recipe.schema import ModelConfig, Recipe
from itkd_cli.train.loss import centerpoint_loss


class LabelKD:
    """Detection loss of the student against targets built from the teacher's confident boxes.

    Args:
        recipe: the run's recipe (class names, target settings; model = teacher config).
        student_cfg: the student's ModelConfig (same head tasks and map size as the teacher).
    """

    def __init__(self, recipe: Recipe, student_cfg: ModelConfig) -> None:
        self.recipe = recipe
        self.student_cfg = student_cfg
        self.label_score = recipe.distill.baseline.label_score

    def teacher_targets(self, teacher_out: DetectorOutput, device: torch.device) -> tuple[TaskTargets, ...]:
        """Targets of every task head from the teacher's boxes above ``label_score`` (after NMS)."""
        dets = decode(teacher_out, self.recipe.model, self.recipe.dataset.class_names)
        dets = filter_teacher_detections(dets, self.label_score)
        frames = [assign_targets(d.boxes.cpu().numpy().astype(np.float32), d.labels.cpu().numpy() + 1, self.recipe)
                  for d in dets]
        return tuple(
            TaskTargets(*(torch.from_numpy(np.stack([f[t][i] for f in frames])).to(device) for i in range(5)))
            for t in range(len(self.recipe.model.head.tasks)))

    def __call__(self, student_out: DetectorOutput, teacher_out: DetectorOutput, batch: Batch) -> Tensor:
        targets = self.teacher_targets(teacher_out, student_out.bev.device)
        return centerpoint_loss(student_out, targets, self.student_cfg.head).total
