"""The synthetic world read back with the official nuScenes devkit (small preset, one generation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from nuscenes import NuScenes
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import points_in_box
from pyquaternion import Quaternion

from itkd_cli.data.synth import TRAIN_SPLIT, VAL_SPLIT, VERSION, generate

DETECTION_CLASSES = {"car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle",
                     "bicycle", "pedestrian", "traffic_cone"}
VALID_ATTRIBUTES = {
    "car": {"vehicle.moving", "vehicle.stopped", "vehicle.parked"},
    "truck": {"vehicle.moving", "vehicle.stopped", "vehicle.parked"},
    "bus": {"vehicle.moving", "vehicle.stopped", "vehicle.parked"},
    "trailer": {"vehicle.moving", "vehicle.stopped", "vehicle.parked"},
    "construction_vehicle": {"vehicle.moving", "vehicle.stopped", "vehicle.parked"},
    "pedestrian": {"pedestrian.moving", "pedestrian.standing"},
    "motorcycle": {"cycle.with_rider", "cycle.without_rider"},
    "bicycle": {"cycle.with_rider", "cycle.without_rider"},
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict, NuScenes]:
    root = tmp_path_factory.mktemp("synth") / "data"
    summary = generate(root, preset="small", seed=3)
    return root, summary, NuScenes(version=VERSION, dataroot=str(root), verbose=False)


def test_tables_and_splits(dataset):
    root, summary, nusc = dataset
    assert len(nusc.scene) == summary["scenes"] == 2
    assert len(nusc.sample) == summary["keyframes"] == 6
    splits = json.loads((root / VERSION / "splits.json").read_text())
    assert set(splits) == {TRAIN_SPLIT, VAL_SPLIT}
    assert sorted(splits[TRAIN_SPLIT] + splits[VAL_SPLIT]) == sorted(s["name"] for s in nusc.scene)
    assert len(nusc.calibrated_sensor) == 1 and nusc.sensor[0]["channel"] == "LIDAR_TOP"
    assert nusc.map[0]["log_tokens"] == [log["token"] for log in nusc.log]


def test_keyframes_sweeps_and_timestamps(dataset):
    root, _, nusc = dataset
    for sample in nusc.sample:
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        assert sd["is_key_frame"] and sd["timestamp"] == sample["timestamp"]
        raw = np.fromfile(root / sd["filename"], dtype=np.float32)
        assert raw.size > 1000 and raw.size % 5 == 0
        ring = raw.reshape(-1, 5)[:, 4]
        assert ring.min() >= 0 and ring.max() <= 31 and np.all(ring == np.round(ring))
        assert sd["prev"], "every keyframe has an earlier sweep (multi-sweep loading)"
        prev = nusc.get("sample_data", sd["prev"])
        assert not prev["is_key_frame"] and prev["filename"].startswith("sweeps/LIDAR_TOP/")
        assert 0 < sd["timestamp"] - prev["timestamp"] < 500_000
        if sample["next"]:
            assert nusc.get("sample", sample["next"])["timestamp"] - sample["timestamp"] == 500_000


def test_num_lidar_pts_matches_points_in_box(dataset):
    root, _, nusc = dataset
    checked = 0
    for sample in nusc.sample:
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        pc = LidarPointCloud.from_file(str(root / sd["filename"]))
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        pc.rotate(Quaternion(cs["rotation"]).rotation_matrix)
        pc.translate(np.array(cs["translation"]))
        pc.rotate(Quaternion(pose["rotation"]).rotation_matrix)
        pc.translate(np.array(pose["translation"]))
        for ann_token in sample["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            inside = int(points_in_box(nusc.get_box(ann_token), pc.points[:3]).sum())
            assert inside == ann["num_lidar_pts"] >= 1
            assert np.hypot(*(np.array(ann["translation"][:2]) - pose["translation"][:2])) <= 40.0
            checked += 1
    assert checked > 50


def test_categories_attributes_and_tracks(dataset):
    from nuscenes.eval.detection.utils import category_to_detection_name

    _, _, nusc = dataset
    seen = set()
    for ann in nusc.sample_annotation:
        name = category_to_detection_name(ann["category_name"])
        assert name in DETECTION_CLASSES
        seen.add(name)
        attrs = {nusc.get("attribute", t)["name"] for t in ann["attribute_tokens"]}
        assert attrs <= VALID_ATTRIBUTES.get(name, set()) and len(attrs) == (name in VALID_ATTRIBUTES)
        assert ann["visibility_token"] in {"1", "2", "3", "4"} and ann["num_radar_pts"] == 0
        if ann["prev"]:
            assert nusc.get("sample_annotation", ann["prev"])["instance_token"] == ann["instance_token"]
    assert seen == DETECTION_CLASSES
    moving_token = next(a["token"] for a in nusc.attribute if a["name"] == "vehicle.moving")
    moving = [a for a in nusc.sample_annotation if a["next"] and a["attribute_tokens"] == [moving_token]]
    speeds = [np.linalg.norm(nusc.box_velocity(a["token"])[:2]) for a in moving]
    assert speeds and 2.0 <= max(speeds) <= 14.0


def gt_as_predictions_map(nusc: NuScenes, tmp_path: Path) -> float:
    """mAP of DetectionEval on the val split with the ground truth submitted as predictions."""
    from nuscenes.eval.detection.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval
    from nuscenes.eval.detection.utils import category_to_detection_name

    val_scenes = set(json.loads((Path(nusc.dataroot) / VERSION / "splits.json").read_text())[VAL_SPLIT])
    results = {}
    for sample in nusc.sample:
        if nusc.get("scene", sample["scene_token"])["name"] not in val_scenes:
            continue
        boxes = []
        for ann_token in sample["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            vel = np.nan_to_num(nusc.box_velocity(ann_token)[:2]).tolist()
            attrs = [nusc.get("attribute", t)["name"] for t in ann["attribute_tokens"]]
            boxes.append({"sample_token": sample["token"], "translation": ann["translation"], "size": ann["size"],
                          "rotation": ann["rotation"], "velocity": vel,
                          "detection_name": category_to_detection_name(ann["category_name"]),
                          "detection_score": 1.0, "attribute_name": attrs[0] if attrs else ""})
        results[sample["token"]] = boxes
    path = tmp_path / "results.json"
    meta = {"use_lidar": True, "use_camera": False, "use_radar": False, "use_map": False, "use_external": False}
    path.write_text(json.dumps({"meta": meta, "results": results}))
    ev = DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(path), eval_set=VAL_SPLIT,
                       output_dir=str(tmp_path / "eval"), verbose=False)
    metrics, _ = ev.evaluate()
    return metrics.mean_ap


def test_detection_eval_gt_as_predictions(dataset, tmp_path):
    assert gt_as_predictions_map(dataset[2], tmp_path) > 0.99


@pytest.mark.slow
def test_default_preset_gt_as_predictions(tmp_path):
    """The demo dataset (default preset): loads, splits 10/2, and scores every class (about a minute)."""
    summary = generate(tmp_path / "default", preset="default", seed=0)
    assert summary["splits"] == {TRAIN_SPLIT: 10, VAL_SPLIT: 2}
    nusc = NuScenes(version=VERSION, dataroot=str(tmp_path / "default"), verbose=False)
    assert gt_as_predictions_map(nusc, tmp_path) > 0.99
