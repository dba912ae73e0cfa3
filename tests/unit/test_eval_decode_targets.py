"""Round trip: the data pipeline's CenterPoint targets, read as a perfect head output, decode to the GT boxes.

Pins the contract between data/targets.py (encode) and models/decode.py (decode): cell + offset,
stride, voxel size, z, log dims, (cos, sin) and velocity must agree exactly.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from itkd_cli.core.types import DetectorOutput, TaskHeadOutput
from itkd_cli.models.decode import decode
from itkd_cli.recipe import load_recipe


def _scatter(values: torch.Tensor, ind: torch.Tensor, mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, M, C) slot values -> (B, C, H, W) maps holding each object's values at its centre cell."""
    b, _, c = values.shape
    maps = torch.zeros(b, c, h * w)
    for i in range(b):
        maps[i][:, ind[i][mask[i]]] = values[i][mask[i]].T
    return maps.view(b, c, h, w)


def _oracle_output(targets, h: int, w: int) -> DetectorOutput:
    """FrameTargets of one frame read as a perfect head output (batch of 1)."""
    tasks = []
    for t in targets:
        heat = torch.from_numpy(t.heatmap)[None]
        logits = torch.logit(heat.clamp(1e-6, 1 - 1e-6))
        ind, mask = torch.from_numpy(t.ind)[None], torch.from_numpy(t.mask)[None]
        box = _scatter(torch.from_numpy(t.box)[None], ind, mask, h, w)
        tasks.append(TaskHeadOutput(hm=logits, center=box[:, 0:2], center_z=box[:, 2:3], dim=box[:, 3:6],
                                    rot=box[:, 6:8], vel=box[:, 8:10] if box.shape[1] > 8 else None))
    return DetectorOutput(bev=torch.zeros(1, 1, h, w), tasks=tuple(tasks))


def test_targets_decode_to_gt(tmp_path: Path) -> None:
    from itkd_cli.data import synth
    from itkd_cli.data.dataset import FrameDataset
    from itkd_cli.data.targets import assign_targets

    synth.generate(tmp_path / "synth", preset="small")
    recipe = load_recipe("synth-pillar", [f"dataset.root={tmp_path / 'synth'}", "dataset.workers=0",
                                          "model.post.nms=none", "model.post.score_threshold=0.999",
                                          "model.post.post_max=500"])
    ds = FrameDataset(recipe, recipe.dataset.val_split, train=False)
    h, w = recipe.model.head_map_size
    x0, y0, _, x1, y1, _ = recipe.model.grid.point_range
    checked = 0
    for i in range(len(ds)):
        boxes, labels = ds.annotations(i)
        (det,) = decode(_oracle_output(assign_targets(boxes, labels, recipe), h, w), recipe.model,
                        recipe.dataset.class_names)
        inside = (boxes[:, 0] >= x0) & (boxes[:, 0] < x1) & (boxes[:, 1] >= y0) & (boxes[:, 1] < y1)
        gt = torch.from_numpy(boxes[inside]).float()
        gt_labels = torch.from_numpy(labels[inside]) - 1
        # Objects sharing a centre cell keep one slot: compare every decoded box to its GT.
        assert det.boxes.shape[0] >= 0.95 * gt.shape[0]
        dist = torch.cdist(det.boxes[:, :2], gt[:, :2], compute_mode="donot_use_mm_for_euclid_dist")
        j = dist.argmin(dim=1)
        assert dist.min(dim=1).values.max().item() < 1e-4
        match = gt[j]
        assert torch.equal(det.labels, gt_labels[j])
        assert torch.allclose(det.boxes[:, 2:6], match[:, 2:6], atol=1e-4)
        dyaw = torch.remainder(det.boxes[:, 6] - match[:, 6] + math.pi, 2 * math.pi) - math.pi
        assert dyaw.abs().max().item() < 1e-4
        assert torch.allclose(det.boxes[:, 7:9], match[:, 7:9], atol=1e-4)
        checked += det.boxes.shape[0]
    assert checked > 20
