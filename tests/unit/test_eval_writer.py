"""nuScenes result writer: LiDAR -> global boxes, wlh, quaternion, velocity, attributes, limits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pyquaternion import Quaternion

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.types import Detections
from itkd_cli.evaluate.nuscenes_eval import attribute_name, frame_results, summarise, write_results
from itkd_cli.recipe.schema import NUSCENES_CLASSES

NAMES = list(NUSCENES_CLASSES)


def _pose(yaw: float, t: tuple[float, float, float], tilt: float = 0.0) -> np.ndarray:
    q = Quaternion(axis=[0, 0, 1], radians=yaw) * Quaternion(axis=[1, 0, 0], radians=tilt)
    pose = np.eye(4)
    pose[:3, :3] = q.rotation_matrix
    pose[:3, 3] = t
    return pose


def _det(rows: list[list[float]], scores: list[float], labels: list[str]) -> Detections:
    return Detections(torch.tensor(rows, dtype=torch.float32), torch.tensor(scores),
                      torch.tensor([NAMES.index(n) for n in labels]))


def test_hand_computed_quarter_turn() -> None:
    det = _det([[1.0, 2.0, 0.5, 4.0, 2.0, 1.5, 0.3, 1.0, 0.0]], [0.8], ["car"])
    (box,) = frame_results(det, _pose(math.pi / 2, (100.0, 200.0, 1.0)), "tok", NAMES)
    assert box["translation"] == pytest.approx([98.0, 201.0, 1.5], abs=1e-5)
    assert box["size"] == pytest.approx([2.0, 4.0, 1.5])  # wlh = (dy, dx, dz)
    half = (0.3 + math.pi / 2) / 2
    assert box["rotation"] == pytest.approx([math.cos(half), 0.0, 0.0, math.sin(half)], abs=1e-6)
    assert box["velocity"] == pytest.approx([0.0, 1.0], abs=1e-6)
    assert box["detection_name"] == "car" and box["attribute_name"] == "vehicle.moving"
    assert type(box["detection_score"]) is float and box["sample_token"] == "tok"


def test_matches_devkit_box_transform() -> None:
    """Same result as the devkit's Box.rotate/translate (OpenPCDet's writer) under a tilted pose."""
    from nuscenes.utils.data_classes import Box

    rng = np.random.default_rng(0)
    rows = np.column_stack([rng.uniform(-40, 40, (20, 2)), rng.uniform(-2, 2, 20), rng.uniform(0.5, 10, (20, 3)),
                            rng.uniform(-math.pi, math.pi, 20), rng.normal(0, 3, (20, 2))])
    pose = _pose(2.1, (411.3, 1180.9, 0.7), tilt=0.02)
    det = _det(rows.tolist(), list(np.linspace(0.9, 0.1, 20)), ["truck"] * 20)
    ours = frame_results(det, pose, "tok", NAMES)
    for row, box in zip(rows.astype(np.float32).astype(np.float64), ours):
        ref = Box(row[:3], [row[4], row[3], row[5]], Quaternion(axis=[0, 0, 1], radians=row[6]),
                  velocity=(row[7], row[8], 0.0))
        ref.rotate(Quaternion(matrix=pose[:3, :3]))
        ref.translate(pose[:3, 3])
        assert box["translation"] == pytest.approx(ref.center.tolist(), abs=1e-4)
        q = Quaternion(box["rotation"])
        assert abs(abs(np.dot(q.elements, ref.orientation.elements)) - 1) < 1e-9
        assert box["velocity"] == pytest.approx(ref.velocity[:2].tolist(), abs=1e-4)


def test_attributes_follow_openpcdet() -> None:
    assert attribute_name("car", 0.1) == "vehicle.parked"
    assert attribute_name("truck", 3.0) == "vehicle.moving"
    assert attribute_name("bus", 0.0) == "vehicle.stopped"
    assert attribute_name("bus", 5.0) == "vehicle.moving"
    assert attribute_name("construction_vehicle", 0.0) == "vehicle.parked"
    assert attribute_name("pedestrian", 1.2) == "pedestrian.moving"
    assert attribute_name("pedestrian", 0.1) == "pedestrian.standing"
    assert attribute_name("bicycle", 2.0) == "cycle.with_rider"
    assert attribute_name("motorcycle", 0.0) == "cycle.without_rider"
    assert attribute_name("barrier", 4.0) == "" and attribute_name("traffic_cone", 0.0) == ""


def test_write_results_all_samples_top_500(tmp_path: Path) -> None:
    n = 620
    rows = [[float(i % 50), 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0] for i in range(n)]
    scores = list(np.random.default_rng(1).permutation(n) / n)
    det = _det(rows, scores, ["barrier"] * n)
    path = write_results(tmp_path / "r.json", {"a": det}, {"a": np.eye(4)}, NAMES, ["a", "b"])
    data = json.loads(path.read_text())
    assert data["meta"]["use_lidar"] is True and data["meta"]["use_camera"] is False
    assert set(data["results"]) == {"a", "b"} and data["results"]["b"] == []
    got = [b["detection_score"] for b in data["results"]["a"]]
    assert len(got) == 500 and got == sorted(scores, reverse=True)[:500]
    with pytest.raises(ItkdError, match="outside the split"):
        write_results(tmp_path / "r2.json", {"zz": det}, {"zz": np.eye(4)}, NAMES, ["a"])
    with pytest.raises(ItkdError, match="not nuScenes detection classes"):
        write_results(tmp_path / "r3.json", {}, {}, ["car", "tram"], ["a"])


def test_summarise_turns_nan_into_null() -> None:
    errs = {"trans_err": 0.1, "scale_err": 0.2, "orient_err": float("nan"), "vel_err": 0.4, "attr_err": float("nan")}
    summary = {"mean_dist_aps": {"traffic_cone": 0.5}, "label_tp_errors": {"traffic_cone": errs},
               "mean_ap": 0.5, "nd_score": 0.4, "tp_errors": errs, "eval_time": 1.0}
    out = summarise(summary, n_samples=3)
    assert out["mAP"] == 0.5 and out["NDS"] == 0.4 and out["mAOE"] is None and out["mATE"] == 0.1
    assert out["per_class"]["traffic_cone"] == {"AP": 0.5, "ATE": 0.1, "ASE": 0.2, "AOE": None, "AVE": 0.4, "AAE": None}
    json.dumps(out, allow_nan=False)
