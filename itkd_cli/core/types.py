"""Typed tensors passed between stages: tensors in, tensors out (no dicts through forward)."""

from __future__ import annotations

from typing import NamedTuple, Optional

from torch import Tensor

# Regression heads of a CenterPoint task head, in OpenPCDet's order, with their channel counts.
# 'vel' only exists when the dataset has velocities (nuScenes).
REG_HEADS: tuple[tuple[str, int], ...] = (("center", 2), ("center_z", 1), ("dim", 3), ("rot", 2))
VEL_HEAD: tuple[str, int] = ("vel", 2)


class TaskHeadOutput(NamedTuple):
    """Raw outputs of one task head, all maps (B, *, H, W) at the head's resolution.

    hm: class heatmap LOGITS (B, n_classes_of_task, H, W) (sigmoid is applied by consumers).
    center: sub-cell offset of the box centre (B, 2, H, W), in cells.
    center_z: box centre height in metres (B, 1, H, W).
    dim: log box size (dx, dy, dz) (B, 3, H, W).
    rot: (cos(yaw), sin(yaw)) (B, 2, H, W).
    vel: (vx, vy) in m/s (B, 2, H, W), or None when the model predicts no velocity.
    """

    hm: Tensor
    center: Tensor
    center_z: Tensor
    dim: Tensor
    rot: Tensor
    vel: Optional[Tensor]


class DetectorOutput(NamedTuple):
    """What a CenterPoint forward returns.

    bev: the neck output M (B, C, H, W), after upsample+concat, before the head's shared conv:
        the tap point of feature distillation (the method's).
    tasks: one TaskHeadOutput per task head, in recipe order.
    """

    bev: Tensor
    tasks: tuple[TaskHeadOutput, ...]


class TaskTargets(NamedTuple):
    """CenterPoint training targets for one task head (M = max objects, e.g. 500).

    heatmap: gaussian class heatmaps (B, n_classes_of_task, H, W), float in [0, 1].
    ind: flat index y * W + x of each object centre cell (B, M), int64.
    mask: which of the M slots hold an object (B, M), bool.
    box: regression target (B, M, code_size): [dx_off, dy_off, z, log dx, log dy, log dz,
        cos yaw, sin yaw(, vx, vy)].
    cls: class index within the task (B, M), int64 (0-based; padded slots 0).
    """

    heatmap: Tensor
    ind: Tensor
    mask: Tensor
    box: Tensor
    cls: Tensor


class Batch(NamedTuple):
    """A collated training/eval batch.

    voxels: point features per voxel/pillar (V, P, F), zero-padded; F = recipe num_point_features.
    num_points: real points per voxel (V,), int32.
    coords: voxel index (V, 4) int32 as (batch_idx, z, y, x).
    batch_size: number of frames B.
    gt_boxes: (B, N, 9) LiDAR-frame boxes x, y, z, dx, dy, dz, yaw, vx, vy; zero-padded.
    gt_labels: (B, N) int64 class index into the recipe's class_names, 1-based; 0 = padding.
    targets: one TaskTargets per task head.
    tokens: sample token of each frame (dataset's own id).
    labeled: (B,) bool, False for a frame of the unlabeled pool (``dataset.unlabeled``: no boxes, empty targets;
        only the KD terms learn from it); None when every frame is labeled.
    """

    voxels: Tensor
    num_points: Tensor
    coords: Tensor
    batch_size: int
    gt_boxes: Tensor
    gt_labels: Tensor
    targets: tuple[TaskTargets, ...]
    tokens: tuple[str, ...]
    labeled: Optional[Tensor] = None


class Detections(NamedTuple):
    """Decoded boxes of ONE frame in the LiDAR frame.

    boxes: (K, 9) x, y, z, dx, dy, dz, yaw, vx, vy.
    scores: (K,) in [0, 1].
    labels: (K,) int64, 0-based index into the recipe's class_names.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
