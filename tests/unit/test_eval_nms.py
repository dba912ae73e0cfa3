"""Rotated BEV IoU against shapely; greedy rotated and circle NMS on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from itkd_cli.models.nms import bev_corners, bev_iou_matrix, circle_nms, paired_bev_iou, rotated_nms

shapely = pytest.importorskip("shapely.geometry")


def _shapely_iou(a: np.ndarray, b: np.ndarray) -> float:
    pa = shapely.Polygon(bev_corners(torch.tensor(a[None], dtype=torch.float64))[0].numpy())
    pb = shapely.Polygon(bev_corners(torch.tensor(b[None], dtype=torch.float64))[0].numpy())
    inter = pa.intersection(pb).area
    return inter / (pa.area + pb.area - inter)


def _random_pairs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = np.column_stack([rng.uniform(-50, 50, n), rng.uniform(-50, 50, n),
                         rng.uniform(0.3, 6, n), rng.uniform(0.3, 3, n), rng.uniform(-math.pi, math.pi, n)])
    # B near A so most pairs overlap partly.
    b = np.column_stack([a[:, 0] + rng.normal(0, 1.5, n), a[:, 1] + rng.normal(0, 1.5, n),
                         rng.uniform(0.3, 6, n), rng.uniform(0.3, 3, n), rng.uniform(-math.pi, math.pi, n)])
    return a, b


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_paired_iou_matches_shapely(dtype: torch.dtype) -> None:
    a, b = _random_pairs(600, seed=0)
    ours = paired_bev_iou(torch.tensor(a, dtype=dtype), torch.tensor(b, dtype=dtype)).double().numpy()
    ref = np.array([_shapely_iou(x, y) for x, y in zip(a, b)])
    assert (ref > 0).sum() > 300 and (ref == 0).sum() > 10  # both cases exercised
    assert np.abs(ours - ref).max() < 1e-4


def test_special_cases() -> None:
    box = torch.tensor([[10.0, -3.0, 4.0, 2.0, 0.3]], dtype=torch.float64)
    assert paired_bev_iou(box, box).item() == pytest.approx(1.0, abs=1e-9)
    # Same box turned by pi: same rectangle.
    flipped = box.clone()
    flipped[0, 4] += math.pi
    assert paired_bev_iou(box, flipped).item() == pytest.approx(1.0, abs=1e-9)
    # Axis-aligned half overlap: inter 2x2=4, union 8+8-4 -> 1/3.
    a = torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[2.0, 0.0, 4.0, 2.0, 0.0]], dtype=torch.float64)
    assert paired_bev_iou(a, b).item() == pytest.approx(1 / 3, abs=1e-9)
    # Square and the same square turned 45 deg: octagon area 8 (sqrt2 - 1) for side 2.
    s = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0]], dtype=torch.float64)
    r = torch.tensor([[0.0, 0.0, 2.0, 2.0, math.pi / 4]], dtype=torch.float64)
    inter = 8 * (math.sqrt(2) - 1)
    assert paired_bev_iou(s, r).item() == pytest.approx(inter / (8 - inter), abs=1e-9)
    # Far apart.
    far = torch.tensor([[30.0, 0.0, 2.0, 2.0, 0.0]], dtype=torch.float64)
    assert paired_bev_iou(s, far).item() == 0.0


def test_iou_matrix_matches_pairs() -> None:
    a, b = _random_pairs(40, seed=1)
    ta, tb = torch.tensor(a), torch.tensor(b)
    mat = bev_iou_matrix(ta, tb)
    ia, ib = torch.meshgrid(torch.arange(40), torch.arange(40), indexing="ij")
    full = paired_bev_iou(ta[ia.flatten()], tb[ib.flatten()]).view(40, 40)
    assert torch.allclose(mat, full, atol=1e-12)
    assert torch.allclose(mat.diagonal(), paired_bev_iou(ta, tb), atol=1e-12)


def _box(x: float, y: float, dx: float = 4.0, dy: float = 2.0, yaw: float = 0.0) -> list[float]:
    return [x, y, 0.0, dx, dy, 1.5, yaw, 0.0, 0.0]


def test_rotated_nms_hand_made() -> None:
    boxes = torch.tensor([
        _box(0, 0), _box(0.5, 0),            # IoU 7/9: box 1 (higher score) suppresses box 0
        _box(2, 0),                           # IoU 5/11 with box 1 -> suppressed
        _box(10, 0), _box(10, 0, yaw=math.pi / 2),  # crossing boxes: IoU 4/12 = 1/3
        _box(20, 0), _box(23.5, 0),          # IoU 0.5*2/(16-1) = 1/15 < 0.2 -> both kept
    ])
    scores = torch.tensor([0.9, 0.95, 0.5, 0.3, 0.4, 0.8, 0.7])
    keep = rotated_nms(boxes, scores, iou_threshold=0.2)
    assert keep.tolist() == [1, 5, 6, 4]  # 1 suppresses 0 (IoU 7/9) and 2 (IoU 5/11); 4 suppresses 3
    assert rotated_nms(boxes, scores, 0.2, max_keep=2).tolist() == [1, 5]
    assert rotated_nms(boxes[:0], scores[:0], 0.2).numel() == 0


def test_circle_nms_hand_made() -> None:
    boxes = torch.tensor([_box(0, 0), _box(3, 0), _box(0, 4.5), _box(8, 0), _box(6.5, 0)])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    # radius 4: 1 (3 m from 0) dropped, 2 (4.5 m) kept, 3 (8 m) kept, 4 (1.5 m from 3) dropped.
    assert circle_nms(boxes, scores, radius=4.0).tolist() == [0, 2, 3]
    assert circle_nms(boxes, scores, radius=1.0).tolist() == [0, 1, 2, 3, 4]
