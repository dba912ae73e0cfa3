"""Teacher boxes as CenterPoint targets: SparseKD's label KD, and the object centres of unlabeled frames.

``TeacherTargets`` is the one piece that turns a teacher's decoded detections above a score into targets of
every task head (the data stage's target assigner is passed in: distill never imports data). ``LabelKD`` uses
it for sparsekd's extra labels on every frame; the distillation step uses it for the centres of the frames of
``dataset.unlabeled`` (``distill.pool``).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from itkd_cli.core.types import DetectorOutput, Detections, TaskTargets
from itkd_cli.distill.baselines import filter_teacher_detections
from itkd_cli.models.decode import decode
from itkd_cli.models.loss import centerpoint_loss
from itkd_cli.recipe.schema import ModelConfig

# (boxes (K, 9) float32, labels (K,) 1-based) -> per task head (heatmap, ind, mask, box, cls) arrays of
# one frame: the data stage's target assigner (``data.targets.assign_targets`` bound to the recipe).
AssignFn = Callable[[np.ndarray, np.ndarray], Sequence[Sequence[np.ndarray]]]


class TeacherTargets:
    """Targets of every task head from a teacher's decoded boxes scoring above ``score`` (after NMS).

    Args:
        teacher_cfg: the teacher's ModelConfig (decoding of its outputs; task heads of the targets).
        class_names: the dataset's classes, in label order.
        score: boxes scoring strictly above it become targets.
        assign: the target assigner (see ``AssignFn``).
    """

    def __init__(self, teacher_cfg: ModelConfig, class_names: Sequence[str], score: float, assign: AssignFn) -> None:
        self.teacher_cfg = teacher_cfg
        self.class_names = list(class_names)
        self.score = score
        self.assign = assign

    def detections(self, teacher_out: DetectorOutput) -> list[Detections]:
        """The teacher's boxes of each frame, decoded as for evaluation (every score above post.score_threshold)."""
        return decode(teacher_out, self.teacher_cfg, self.class_names)

    def from_detections(self, dets: Sequence[Detections], device: torch.device) -> tuple[TaskTargets, ...]:
        """Targets of B >= 1 frames from their detections: one TaskTargets (heatmap (B, n, H, W), ind / mask / cls
        (B, M), box (B, M, code)) per task head, on ``device``."""
        kept = filter_teacher_detections(dets, self.score)
        frames = [self.assign(d.boxes.cpu().numpy().astype(np.float32), d.labels.cpu().numpy() + 1) for d in kept]
        return tuple(
            TaskTargets(*(torch.from_numpy(np.stack([f[t][i] for f in frames])).to(device) for i in range(5)))
            for t in range(len(self.teacher_cfg.head.tasks)))

    def __call__(self, teacher_out: DetectorOutput, device: torch.device) -> tuple[TaskTargets, ...]:
        return self.from_detections(self.detections(teacher_out), device)


class LabelKD:
    """Detection loss of the student against targets built from the teacher's confident boxes (every frame).

    Args:
        teacher_cfg: the teacher's ModelConfig (decoding of its outputs).
        student_cfg: the student's ModelConfig (same head tasks and map size as the teacher).
        class_names: the dataset's classes, in label order.
        label_score: teacher boxes scoring above it become labels (``distill.baseline.label_score``).
        assign: the target assigner (see ``AssignFn``).
    """

    def __init__(self, teacher_cfg: ModelConfig, student_cfg: ModelConfig, class_names: Sequence[str],
                 label_score: float, assign: AssignFn) -> None:
        self.boxes = TeacherTargets(teacher_cfg, class_names, label_score, assign)
        self.student_cfg = student_cfg

    def teacher_targets(self, teacher_out: DetectorOutput, device: torch.device) -> tuple[TaskTargets, ...]:
        """Targets of every task head from the teacher's boxes above ``label_score`` (after NMS)."""
        return self.boxes(teacher_out, device)

    def __call__(self, student_out: DetectorOutput, teacher_out: DetectorOutput,
                 dets: Optional[Sequence[Detections]] = None) -> Tensor:
        """The loss; ``dets``: the teacher's decoded boxes of every frame when the caller has them already."""
        device = student_out.bev.device
        targets = self.boxes.from_detections(dets if dets is not None else self.boxes.detections(teacher_out), device)
        return centerpoint_loss(student_out, targets, self.student_cfg.head).total
