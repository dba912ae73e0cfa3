"""CenterPoint decoding: heatmap peaks -> boxes -> per-task NMS -> Detections per frame.

Follows OpenPCDet's CenterHead.generate_predicted_boxes, per task: the post.top_k best peaks over classes x
cells (centernet_utils.decode_bbox_from_heatmap, K = MAX_OBJ_PER_SAMPLE) decoded into boxes; score threshold
and centre range limit; the post.pre_max best of those (NMS_PRE_MAXSIZE); class-agnostic NMS; the first
post.post_max kept (NMS_POST_MAXSIZE) (model_nms_utils.class_agnostic_nms). With circle NMS, as OpenPCDet's
circle_nms branch: only 3x3 heatmap maxima compete for top_k and no pre_max cut (class_agnostic_nms is skipped).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.types import DetectorOutput, Detections, TaskHeadOutput
from itkd_cli.models.nms import circle_nms, rotated_nms
from itkd_cli.recipe.schema import ModelConfig, PostProcessConfig


def _gather(maps: Tensor, cell: Tensor) -> Tensor:
    """Values of maps at flat cells.

    Args:
        maps: (B, C, H, W).
        cell: (B, K) int64 flat index y * W + x.

    Returns:
        (B, K, C).
    """
    b, c = maps.shape[:2]
    flat = maps.reshape(b, c, -1)
    return torch.gather(flat, 2, cell[:, None].expand(b, c, cell.shape[1])).transpose(1, 2)


def decode_task(task: TaskHeadOutput, model_cfg: ModelConfig, peak_filter: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """The post.top_k best heatmap peaks of one task head decoded into boxes (before threshold and NMS).

    Args:
        task: raw head maps, heatmap (B, n, H, W).
        model_cfg: gives the grid origin, voxel size, head stride and post (top_k, nms).
        peak_filter: keep only 3x3 local maxima of the heatmap (CenterNet-style) before top-K; always on
            with circle NMS (OpenPCDet max-pools the heatmap in its circle_nms branch).

    Returns:
        boxes (B, K, 9) x, y, z, dx, dy, dz, yaw, vx, vy; scores (B, K), best first; cls (B, K) index in the
        task. K = min(post.top_k, n * H * W).
    """
    heat = torch.sigmoid(task.hm.float())
    if peak_filter or model_cfg.post.nms == "circle":
        heat = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    bsz, n_cls, h, w = heat.shape
    k = min(model_cfg.post.top_k, n_cls * h * w)
    scores, idx = heat.reshape(bsz, -1).topk(k, dim=1)
    cls, cell = idx // (h * w), idx % (h * w)
    ys, xs = (cell // w).to(heat.dtype), (cell % w).to(heat.dtype)

    stride = model_cfg.feature_map_stride
    x0, y0 = model_cfg.grid.point_range[:2]
    vx, vy = model_cfg.grid.voxel_size[:2]
    center = _gather(task.center.float(), cell)
    x = (xs + center[..., 0]) * stride * vx + x0
    y = (ys + center[..., 1]) * stride * vy + y0
    z = _gather(task.center_z.float(), cell)[..., 0]
    dims = _gather(task.dim.float(), cell).exp()
    rot = _gather(task.rot.float(), cell)
    yaw = torch.atan2(rot[..., 1], rot[..., 0])  # rot = (cos, sin)
    vel = _gather(task.vel.float(), cell) if task.vel is not None else heat.new_zeros(bsz, k, 2)
    boxes = torch.cat([x[..., None], y[..., None], z[..., None], dims, yaw[..., None], vel], dim=-1)
    return boxes, scores, cls


def _select(boxes: Tensor, scores: Tensor, post: PostProcessConfig) -> Tensor:
    """Indices kept for one frame of one task, in OpenPCDet's order: score threshold and range limit, then
    the pre_max best (not for circle NMS), then NMS, then the first post_max.

    Args:
        boxes: (K, 9) top_k decoded peaks.
        scores: (K,).
        post: thresholds and NMS settings.

    Returns:
        (K',) int64 indices, best score first.
    """
    lim = torch.tensor(post.limit_range, dtype=boxes.dtype, device=boxes.device)
    ok = (scores > post.score_threshold) & (boxes[:, :3] >= lim[:3]).all(1) & (boxes[:, :3] <= lim[3:]).all(1)
    cand = torch.nonzero(ok, as_tuple=True)[0]
    if post.nms != "circle":  # OpenPCDet's circle branch never calls class_agnostic_nms, which makes this cut
        cand = cand[scores[cand].argsort(descending=True, stable=True)[: post.pre_max]]
    if post.nms == "rotated":
        keep = rotated_nms(boxes[cand], scores[cand], post.nms_iou, post.post_max)
    elif post.nms == "circle":
        keep = circle_nms(boxes[cand], scores[cand], post.circle_radius, post.post_max)
    else:
        keep = scores[cand].argsort(descending=True)[: post.post_max]
    return cand[keep]


def task_label_maps(model_cfg: ModelConfig, class_names: Sequence[str]) -> list[list[int]]:
    """For each task, the 0-based index into class_names of each of its classes.

    Raises:
        ItkdError: a task class is not in class_names.
    """
    out = []
    for t, task in enumerate(model_cfg.head.tasks):
        missing = [c for c in task if c not in class_names]
        if missing:
            raise ItkdError(f"model.head.tasks.{t}: classes {missing} not in dataset.class_names {list(class_names)}")
        out.append([list(class_names).index(c) for c in task])
    return out


@torch.no_grad()
def decode(output: DetectorOutput, model_cfg: ModelConfig, class_names: Sequence[str],
           peak_filter: bool = False) -> list[Detections]:
    """Decode a batch of head outputs into boxes per frame (LiDAR frame).

    Args:
        output: DetectorOutput with one TaskHeadOutput per task in model_cfg.head.tasks.
        model_cfg: model recipe (grid, head tasks, post-processing).
        class_names: dataset class names; labels index into it (0-based).
        peak_filter: apply a 3x3 max-pool peak filter before top-K (always on with circle NMS).

    Returns:
        B Detections: boxes (K, 9), scores (K,), labels (K,) int64, on the output's device.
    """
    if len(output.tasks) != len(model_cfg.head.tasks):
        raise ItkdError(f"model.head.tasks: recipe has {len(model_cfg.head.tasks)} tasks, output has {len(output.tasks)}")
    label_maps = task_label_maps(model_cfg, class_names)
    bsz = output.tasks[0].hm.shape[0]
    per_frame: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in range(bsz)]
    for task, labels in zip(output.tasks, label_maps):
        boxes, scores, cls = decode_task(task, model_cfg, peak_filter)
        lut = torch.tensor(labels, dtype=torch.long, device=boxes.device)
        for b in range(bsz):
            keep = _select(boxes[b], scores[b], model_cfg.post)
            per_frame[b].append((boxes[b, keep], scores[b, keep], lut[cls[b, keep]]))
    return [Detections(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                       torch.cat([p[2] for p in parts])) for parts in per_frame]
