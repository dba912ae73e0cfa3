"""Rotated bird's-eye-view IoU and greedy NMS, vectorised in torch (CPU and CUDA).

The intersection of two rectangles is a convex polygon whose vertices are the corners of each
rectangle lying inside the other plus the crossings of their edges (at most 8 distinct points).
All 24 candidates are computed for every pair at once, the valid ones are ordered by angle around
their mean and the shoelace formula gives the area: no per-pair Python loop.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# Slack for "point inside box" and "edges cross" tests; duplicates it admits add zero area.
_EPS = 1e-6
# Pairs evaluated per chunk (bounds the (P, 24, 2) temporaries).
_CHUNK = 65536


def bev_corners(boxes: Tensor) -> Tensor:
    """Corners of BEV rectangles, counter-clockwise.

    Args:
        boxes: (N, 5) x, y, dx, dy, yaw.

    Returns:
        (N, 4, 2) corner coordinates.
    """
    cos, sin = torch.cos(boxes[:, 4]), torch.sin(boxes[:, 4])
    hx, hy = boxes[:, 2] / 2, boxes[:, 3] / 2
    sx = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=boxes.dtype, device=boxes.device)
    sy = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=boxes.dtype, device=boxes.device)
    lx, ly = sx[None] * hx[:, None], sy[None] * hy[:, None]  # (N, 4) in the box frame
    x = boxes[:, None, 0] + lx * cos[:, None] - ly * sin[:, None]
    y = boxes[:, None, 1] + lx * sin[:, None] + ly * cos[:, None]
    return torch.stack([x, y], dim=-1)


def _inside(points: Tensor, boxes: Tensor) -> Tensor:
    """Whether points lie inside (or on) rectangles.

    Args:
        points: (P, K, 2).
        boxes: (P, 5) x, y, dx, dy, yaw, one rectangle per row.

    Returns:
        (P, K) bool.
    """
    d = points - boxes[:, None, :2]
    cos, sin = torch.cos(boxes[:, 4])[:, None], torch.sin(boxes[:, 4])[:, None]
    lx = d[..., 0] * cos + d[..., 1] * sin
    ly = -d[..., 0] * sin + d[..., 1] * cos
    tol_x = boxes[:, 2:3] / 2 * (1 + _EPS) + _EPS
    tol_y = boxes[:, 3:4] / 2 * (1 + _EPS) + _EPS
    return (lx.abs() <= tol_x) & (ly.abs() <= tol_y)


def _edge_crossings(ca: Tensor, cb: Tensor) -> tuple[Tensor, Tensor]:
    """Crossing points of every edge of A with every edge of B.

    Args:
        ca: (P, 4, 2) corners of A.
        cb: (P, 4, 2) corners of B.

    Returns:
        points (P, 16, 2) and valid (P, 16) bool.
    """
    p1, q1 = ca[:, :, None], cb[:, None]  # (P, 4, 1, 2), (P, 1, 4, 2)
    d1 = (torch.roll(ca, -1, dims=1) - ca)[:, :, None]
    d2 = (torch.roll(cb, -1, dims=1) - cb)[:, None]
    denom = d1[..., 0] * d2[..., 1] - d1[..., 1] * d2[..., 0]  # (P, 4, 4)
    w = q1 - p1
    t_num = w[..., 0] * d2[..., 1] - w[..., 1] * d2[..., 0]
    u_num = w[..., 0] * d1[..., 1] - w[..., 1] * d1[..., 0]
    parallel = denom.abs() < 1e-12
    safe = torch.where(parallel, torch.ones_like(denom), denom)
    t, u = t_num / safe, u_num / safe
    valid = ~parallel & (t >= -_EPS) & (t <= 1 + _EPS) & (u >= -_EPS) & (u <= 1 + _EPS)
    pts = p1 + t[..., None] * d1
    return pts.flatten(1, 2), valid.flatten(1)


def _polygon_area(points: Tensor, valid: Tensor) -> Tensor:
    """Area of the convex hull-ordered polygon of the valid points of each row.

    Args:
        points: (P, K, 2) candidate vertices (a convex set once invalid ones are removed).
        valid: (P, K) bool.

    Returns:
        (P,) area (0 where fewer than 3 points are valid).
    """
    n = valid.sum(dim=1)
    w = valid.to(points.dtype)[..., None]
    centre = (points * w).sum(dim=1) / n.clamp(min=1)[:, None].to(points.dtype)
    rel = points - centre[:, None]
    angle = torch.atan2(rel[..., 1], rel[..., 0])
    angle = torch.where(valid, angle, torch.full_like(angle, 10.0))  # invalid points sort last
    order = angle.argsort(dim=1)
    rel = torch.gather(rel, 1, order[..., None].expand_as(rel))
    ok = torch.gather(valid, 1, order)
    # Invalid slots repeat the first vertex: their edges have zero cross product.
    rel = torch.where(ok[..., None], rel, rel[:, :1].expand_as(rel))
    nxt = torch.roll(rel, -1, dims=1)
    cross = rel[..., 0] * nxt[..., 1] - rel[..., 1] * nxt[..., 0]
    area = cross.sum(dim=1).abs() / 2
    return torch.where(n >= 3, area, torch.zeros_like(area))


def paired_bev_iou(a: Tensor, b: Tensor) -> Tensor:
    """Rotated BEV IoU of matching rows of ``a`` and ``b``.

    Args:
        a: (P, 5) x, y, dx, dy, yaw.
        b: (P, 5) x, y, dx, dy, yaw.

    Returns:
        (P,) IoU in [0, 1].
    """
    out = []
    for start in range(0, a.shape[0], _CHUNK):
        ea, eb = a[start:start + _CHUNK].clone(), b[start:start + _CHUNK].clone()
        # Work relative to A's centre: keeps float32 exact far from the sensor.
        origin = ea[:, :2].clone()
        ea[:, :2] -= origin
        eb[:, :2] -= origin
        ca, cb = bev_corners(ea), bev_corners(eb)
        cross_pts, cross_ok = _edge_crossings(ca, cb)
        pts = torch.cat([ca, cb, cross_pts], dim=1)
        ok = torch.cat([_inside(ca, eb), _inside(cb, ea), cross_ok], dim=1)
        inter = _polygon_area(pts, ok)
        union = ea[:, 2] * ea[:, 3] + eb[:, 2] * eb[:, 3] - inter
        out.append((inter / union.clamp(min=1e-12)).clamp(0, 1))
    if not out:
        return a.new_zeros(0)
    return torch.cat(out)


def bev_iou_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Rotated BEV IoU of every box in ``a`` with every box in ``b``.

    Pairs whose circumscribed circles do not touch are 0 without computing a polygon.

    Args:
        a: (N, 5) x, y, dx, dy, yaw.
        b: (M, 5) x, y, dx, dy, yaw.

    Returns:
        (N, M) IoU.
    """
    iou = a.new_zeros(a.shape[0], b.shape[0])
    if iou.numel() == 0:
        return iou
    ra = torch.hypot(a[:, 2], a[:, 3]) / 2
    rb = torch.hypot(b[:, 2], b[:, 3]) / 2
    dist = torch.cdist(a[:, :2], b[:, :2], compute_mode="donot_use_mm_for_euclid_dist")
    ia, ib = torch.nonzero(dist <= ra[:, None] + rb[None] + _EPS, as_tuple=True)
    if ia.numel():
        iou[ia, ib] = paired_bev_iou(a[ia], b[ib])
    return iou


def greedy_nms(overlap: Tensor, scores: Tensor, max_keep: int | None = None) -> Tensor:
    """Greedy NMS on a precomputed suppression matrix.

    Args:
        overlap: (N, N) bool, True where box j is suppressed by a kept box i.
        scores: (N,) box scores.
        max_keep: stop after this many kept boxes.

    Returns:
        (K,) int64 indices of kept boxes, best score first.
    """
    order = scores.argsort(descending=True)
    over = overlap[order][:, order].cpu().numpy()
    removed = np.zeros(len(order), dtype=bool)
    keep: list[int] = []
    for i in range(len(order)):
        if removed[i]:
            continue
        keep.append(i)
        if max_keep is not None and len(keep) >= max_keep:
            break
        removed[i + 1:] |= over[i, i + 1:]
    idx = torch.as_tensor(keep, dtype=torch.long, device=scores.device)
    return order[idx]


def rotated_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, max_keep: int | None = None) -> Tensor:
    """Greedy NMS with rotated BEV IoU (OpenPCDet's nms_gpu semantics: suppress IoU > threshold).

    Args:
        boxes: (N, 7+) x, y, z, dx, dy, dz, yaw, ...
        scores: (N,).
        iou_threshold: boxes overlapping a kept box by more than this are dropped.
        max_keep: keep at most this many.

    Returns:
        (K,) int64 indices into ``boxes``, best score first.
    """
    bev = boxes[:, [0, 1, 3, 4, 6]]
    return greedy_nms(bev_iou_matrix(bev, bev) > iou_threshold, scores, max_keep)


def circle_nms(boxes: Tensor, scores: Tensor, radius: float, max_keep: int | None = None) -> Tensor:
    """Greedy NMS on BEV centre distance: a box within ``radius`` metres of a kept box is dropped.

    Args:
        boxes: (N, 2+) x, y, ...
        scores: (N,).
        radius: centre distance (m).
        max_keep: keep at most this many.

    Returns:
        (K,) int64 indices into ``boxes``, best score first.
    """
    dist = torch.cdist(boxes[:, :2], boxes[:, :2], compute_mode="donot_use_mm_for_euclid_dist")
    return greedy_nms(dist <= radius, scores, max_keep)
