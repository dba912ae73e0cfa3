"""Frames of the unlabeled pool (``dataset.unlabeled``) in a distillation batch: tensors in, tensors out.

A batch marks its pool frames with ``Batch.labeled`` False (no boxes, empty targets). The detection loss reads the
other frames (``take_frames``, ``take_targets``); the KD terms read every frame, an unlabeled frame's object centres
from the teacher's own boxes above ``dataset.unlabeled.score_threshold`` (``kd_targets``). ``check_pool`` is the
pre-flight of ``itkd compress``: how many centres the teacher gives a few frames of the pool.
"""

from __future__ import annotations

from typing import Callable, Iterable, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.types import Batch, DetectorOutput, Detections, TaskHeadOutput, TaskTargets
from itkd_cli.distill.label_kd import TeacherTargets


def take_frames(out: DetectorOutput, frames: Tensor) -> DetectorOutput:
    """The outputs of some frames of the batch: every map (B, *, H, W) -> (U, *, H, W), ``frames`` (U,) int64."""
    def take(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.index_select(0, frames.to(t.device))

    return DetectorOutput(take(out.bev), tuple(TaskHeadOutput(*(take(t) for t in task)) for task in out.tasks))


def take_targets(targets: Sequence[TaskTargets], frames: Tensor) -> tuple[TaskTargets, ...]:
    """The targets of some frames of the batch: every field (B, ...) -> (U, ...), ``frames`` (U,) int64."""
    return tuple(TaskTargets(*(f.index_select(0, frames.to(f.device)) for f in t)) for t in targets)


def merge_targets(real: Sequence[TaskTargets], teacher: Sequence[TaskTargets],
                  frames: Tensor) -> tuple[TaskTargets, ...]:
    """The batch's targets with those of ``frames`` replaced by targets from the teacher's boxes.

    Args:
        real: One TaskTargets per task head for the whole batch (B frames).
        teacher: The same for the U frames listed in ``frames`` (``TeacherTargets``), in that order.
        frames: (U,) int64 indices of those frames in the batch.

    Returns:
        One TaskTargets per task head (B frames), each field in the dtype and on the device of ``real``'s.
    """
    out = []
    for r, t in zip(real, teacher):
        fields = []
        for rf, tf in zip(r, t):
            merged = rf.clone()
            merged[frames.to(rf.device)] = tf.to(device=rf.device, dtype=rf.dtype)
            fields.append(merged)
        out.append(TaskTargets(*fields))
    return tuple(out)


def centre_counts(targets: Sequence[TaskTargets]) -> Tensor:
    """(B,) object centres per frame over every task head (each object is in one task head)."""
    return sum(t.mask.sum(dim=1) for t in targets)


def kd_targets(batch: Batch, teacher_out: DetectorOutput, pool: Optional[TeacherTargets],
               dets: Optional[Sequence[Detections]] = None) -> tuple[tuple[TaskTargets, ...], dict[str, float]]:
    """The object centres the KD terms read: the batch's targets, those of its unlabeled frames from the
    teacher's boxes above ``pool.score``.

    Args:
        batch: the batch (``labeled`` None: every frame labeled, its targets as they are).
        teacher_out: the teacher's outputs of the whole batch.
        pool: boxes -> targets at ``dataset.unlabeled.score_threshold``; None when the run has no pool.
        dets: the teacher's decoded boxes of every frame when already decoded (sparsekd), else None.

    Returns:
        (targets, logs). With a pool, logs ``unlabeled_frames`` (their number in the batch) and ``unlabeled_boxes``
        (teacher boxes per unlabeled frame that became centres; 0 without unlabeled frames) every step, so that
        data-parallel ranks average the same keys; without one, no logs.

    Raises:
        ItkdError: the batch holds unlabeled frames and ``pool`` is None.
    """
    frames = (torch.nonzero(~batch.labeled.bool(), as_tuple=True)[0] if batch.labeled is not None
              else torch.zeros(0, dtype=torch.long))
    n = int(frames.numel())
    if n and pool is None:
        raise ItkdError("dataset.unlabeled: the batch holds frames of the unlabeled pool, but the distillation step "
                        "was built without the pool's score_threshold")
    if pool is None:
        return tuple(batch.targets), {}
    if n == 0:
        return tuple(batch.targets), {"unlabeled_frames": 0.0, "unlabeled_boxes": 0.0}
    device = batch.targets[0].ind.device
    picked = ([dets[i] for i in frames.tolist()] if dets is not None
              else pool.detections(take_frames(teacher_out, frames)))
    teacher = pool.from_detections(picked, device)
    boxes = float(centre_counts(teacher).sum()) / n
    return merge_targets(batch.targets, teacher, frames), {"unlabeled_frames": float(n), "unlabeled_boxes": boxes}


class PoolCheck(NamedTuple):
    """What the teacher makes of some frames of the pool.

    frames: the frames' tokens.
    boxes: teacher boxes above the threshold that became centres, per frame.
    best_score: the teacher's highest heatmap probability over those frames (every class, every cell).
    """

    frames: tuple[str, ...]
    boxes: tuple[int, ...]
    best_score: float

    @property
    def mean_boxes(self) -> float:
        """Centres per frame (0 without frames)."""
        return sum(self.boxes) / len(self.boxes) if self.boxes else 0.0


def check_pool(teacher: Callable[..., DetectorOutput], batches: Iterable[Batch], pool: TeacherTargets) -> PoolCheck:
    """Run the frozen teacher on batches of pool frames and count the centres it would give them.

    Args:
        teacher: the frozen teacher (``freeze_teacher``): forward(voxels, num_points, coords, batch_size).
        batches: batches of pool frames, on the teacher's device (every frame is counted, labeled or not).
        pool: boxes -> targets at ``dataset.unlabeled.score_threshold``.

    Returns:
        PoolCheck over every frame of ``batches``.
    """
    tokens: list[str] = []
    boxes: list[int] = []
    best = 0.0
    for batch in batches:
        with torch.no_grad():
            out = teacher(batch.voxels, batch.num_points, batch.coords, batch.batch_size)
        targets = pool(out, batch.targets[0].ind.device)
        tokens += list(batch.tokens)
        boxes += [int(c) for c in centre_counts(targets).tolist()]
        best = max(best, *(float(torch.sigmoid(t.hm.float()).max()) for t in out.tasks))
    return PoolCheck(tuple(tokens), tuple(boxes), best)
