"""CenterPoint target assignment: gaussian heatmaps and regression targets per task head.

Follows OpenPCDet's CenterHead.assign_target_of_single_head (CenterNet gaussian radius, draw with max).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from itkd_cli.recipe.schema import Recipe


class FrameTargets(NamedTuple):
    """Targets of one task head for ONE frame (numpy; collate stacks them into TaskTargets).

    heatmap: (n_task_classes, H, W) float32. ind: (M,) int64 y*W+x. mask: (M,) bool.
    box: (M, code_size) float32. cls: (M,) int64 class index within the task.
    """

    heatmap: np.ndarray
    ind: np.ndarray
    mask: np.ndarray
    box: np.ndarray
    cls: np.ndarray


def gaussian_radius(height: float, width: float, min_overlap: float = 0.5) -> float:
    """CenterNet/CenterPoint radius (in cells) keeping IoU >= min_overlap for a box of height x width cells."""
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2 ** 2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def gaussian_2d(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) gaussian with sigma = diameter / 6, peak 1, tiny tails zeroed."""
    sigma = (2 * radius + 1) / 6
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < np.finfo(h.dtype).eps * h.max()] = 0
    return h


def draw_gaussian(heatmap: np.ndarray, cx: int, cy: int, radius: int) -> None:
    """Max-blend a gaussian of ``radius`` centred on cell (cx, cy) into (H, W) ``heatmap`` in place."""
    g = gaussian_2d(radius)
    h, w = heatmap.shape
    left, right = min(cx, radius), min(w - cx, radius + 1)
    top, bottom = min(cy, radius), min(h - cy, radius + 1)
    region = heatmap[cy - top:cy + bottom, cx - left:cx + right]
    patch = g[radius - top:radius + bottom, radius - left:radius + right]
    np.maximum(region, patch, out=region)


def assign_targets(boxes: np.ndarray, labels: np.ndarray, recipe: Recipe) -> tuple[FrameTargets, ...]:
    """Targets of every task head for one frame.

    Args:
        boxes: (K, 9) x, y, z, dx, dy, dz, yaw, vx, vy in the LiDAR frame.
        labels: (K,) 1-based into recipe.dataset.class_names.
        recipe: grid, head tasks, stride, gaussian settings, code size, max objects.

    Returns:
        One FrameTargets per recipe.model.head.tasks entry.
    """
    model, names = recipe.model, recipe.dataset.class_names
    head = model.head
    h, w = model.head_map_size
    cell = np.asarray(model.grid.voxel_size[:2]) * model.feature_map_stride  # metres per head cell (x, y)
    origin = np.asarray(model.grid.point_range[:2])
    out = []
    for task in head.tasks:
        class_ids = [names.index(c) + 1 for c in task]
        hm = np.zeros((len(task), h, w), np.float32)
        ind = np.zeros(head.max_objects, np.int64)
        mask = np.zeros(head.max_objects, bool)
        box = np.zeros((head.max_objects, head.code_size), np.float32)
        cls = np.zeros(head.max_objects, np.int64)
        k = 0
        for b, label in zip(boxes, labels):
            if label not in class_ids or k >= head.max_objects:
                continue
            size = b[3:5] / cell  # box extent in head cells (x, y)
            if size[0] <= 0 or size[1] <= 0:
                continue
            centre = (b[:2] - origin) / cell
            cx, cy = int(np.floor(centre[0])), int(np.floor(centre[1]))
            if not (0 <= cx < w and 0 <= cy < h):
                continue
            radius = max(head.min_radius, int(gaussian_radius(size[0], size[1], head.gaussian_overlap)))
            c = class_ids.index(int(label))
            draw_gaussian(hm[c], cx, cy, radius)
            ind[k], mask[k], cls[k] = cy * w + cx, True, c
            code = [centre[0] - cx, centre[1] - cy, b[2], *np.log(b[3:6]), np.cos(b[6]), np.sin(b[6])]
            if head.with_velocity:
                code += [b[7], b[8]]
            box[k] = code
            k += 1
        out.append(FrameTargets(hm, ind, mask, box, cls))
    return tuple(out)
