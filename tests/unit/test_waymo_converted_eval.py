"""Official Waymo metrics of a converted root's split (`evaluate_converted`'s ground truth and predictions):
the ground truth given back as predictions scores 1, a shifted copy scores 0 at LEVEL_1 and LEVEL_2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from waymo_tiny import make_root

from itkd_cli.core.types import Detections
from itkd_cli.data.waymo import waymo_infos
from itkd_cli.evaluate import waymo_eval

CLASSES = ["Vehicle", "Pedestrian", "Cyclist"]


def _score(infos: list[dict], out: Path, shift: float) -> dict:
    """Every ground-truth box of the recipe's classes as a prediction (score 1), moved by ``shift`` m in x."""
    dets = []
    for info in infos:
        keep = [k for k, name in enumerate(info["gt_names"]) if name in CLASSES]
        boxes = torch.tensor(np.asarray(info["gt_boxes"])[keep], dtype=torch.float32).reshape(-1, 9)
        boxes[:, 0] += shift
        labels = torch.tensor([CLASSES.index(info["gt_names"][k]) for k in keep])
        dets.append(Detections(boxes, torch.ones(len(keep)), labels))
    out.mkdir()
    pred = waymo_eval.write_predictions(out / "pred.npz", dets, infos, waymo_eval.class_types(CLASSES))
    gt = waymo_eval._converted_ground_truth(out / "gt.npz", infos)
    return waymo_eval._metrics(pred, gt, out, CLASSES)


def test_ground_truth_scores_one_and_a_shifted_copy_zero(waymo_python: Path, tmp_path: Path) -> None:
    infos = waymo_infos(make_root(tmp_path / "root"), "val")
    exact = _score(infos, tmp_path / "exact", 0.0)
    assert all(exact[k] == pytest.approx(1.0) for k in ("mAP_L1", "mAPH_L1", "mAP_L2", "mAPH_L2"))
    assert exact["ground_truths"] == 2 * 4  # 2 frames x 4 labelled boxes: the sign counts as ground truth too
    shifted = _score(infos, tmp_path / "shifted", 5.0)
    assert all(shifted[k] == 0.0 for k in ("mAP_L1", "mAPH_L1", "mAP_L2", "mAPH_L2"))
