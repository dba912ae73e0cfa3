"""Official Waymo metrics through the Waymo venv: the official test inputs, frames read from TFRecords
with real range images, and `itkd eval --dataset waymo` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.types import Detections
from itkd_cli.core import waymo_env
from itkd_cli.evaluate import waymo_eval

import make_waymo_frames  # tests/reference/, beside this file

# The official tool's printout for fake_predictions.bin vs the ground truths of its folder
# (waymo_open_dataset/metrics/tools/compute_detection_metrics_main.cc, header comment).
OFFICIAL = {
    "OBJECT_TYPE_TYPE_VEHICLE_LEVEL_1": (0.208277, 0.162823), "OBJECT_TYPE_TYPE_VEHICLE_LEVEL_2": (0.20542, 0.160523),
    "OBJECT_TYPE_TYPE_PEDESTRIAN_LEVEL_1": (0.129258, 0.0984962),
    "OBJECT_TYPE_TYPE_PEDESTRIAN_LEVEL_2": (0.125136, 0.0953438),
    "OBJECT_TYPE_TYPE_SIGN_LEVEL_1": (0.0926278, 0.0635938), "OBJECT_TYPE_TYPE_SIGN_LEVEL_2": (0.067927, 0.0466355),
    "OBJECT_TYPE_TYPE_CYCLIST_LEVEL_1": (0.0, 0.0), "OBJECT_TYPE_TYPE_CYCLIST_LEVEL_2": (0.0, 0.0),
    "RANGE_TYPE_VEHICLE_[0, 30)_LEVEL_1": (0.154727, 0.129927), "RANGE_TYPE_VEHICLE_[0, 30)_LEVEL_2": (0.154727, 0.129927),
    "RANGE_TYPE_VEHICLE_[30, 50)_LEVEL_1": (0.27302, 0.230956), "RANGE_TYPE_VEHICLE_[30, 50)_LEVEL_2": (0.270492, 0.228818),
    "RANGE_TYPE_VEHICLE_[50, +inf)_LEVEL_1": (0.218596, 0.155501),
    "RANGE_TYPE_VEHICLE_[50, +inf)_LEVEL_2": (0.212188, 0.150963),
    "RANGE_TYPE_PEDESTRIAN_[0, 30)_LEVEL_1": (0.19352, 0.155428),
    "RANGE_TYPE_PEDESTRIAN_[30, 50)_LEVEL_2": (0.134931, 0.0966024),
    "RANGE_TYPE_PEDESTRIAN_[50, +inf)_LEVEL_1": (0.0985548, 0.0779858),
    "RANGE_TYPE_SIGN_[0, 30)_LEVEL_2": (0.0651952, 0.0439717), "RANGE_TYPE_SIGN_[30, 50)_LEVEL_1": (0.15528, 0.117763),
    "RANGE_TYPE_SIGN_[50, +inf)_LEVEL_2": (0.0596342, 0.040206),
}
# The C++ tool matches boxes in double precision; the TF op behind the Python API takes float32
# boxes. On these inputs that moves one vehicle match at 30-50 m (IoU near 0.7): those rows agree to
# 0.004, every other row to the printed digits.
FLOAT32_ROWS = {"OBJECT_TYPE_TYPE_VEHICLE_LEVEL_1", "OBJECT_TYPE_TYPE_VEHICLE_LEVEL_2",
                "RANGE_TYPE_VEHICLE_[30, 50)_LEVEL_1", "RANGE_TYPE_VEHICLE_[30, 50)_LEVEL_2"}


@pytest.fixture(scope="module")
def segment(waymo_python: Path, tmp_path_factory) -> tuple[Path, list[dict]]:
    """Two frames with a ray-cast range image and three labelled objects (make_waymo_frames.py), written
    as a TFRecord by the worker's `write`."""
    out = tmp_path_factory.mktemp("waymo")
    facts = make_waymo_frames.metrics_segment(out / "arrays")
    waymo_env.run_tool("write", out / "segment.tfrecord", out / "arrays")
    return out / "segment.tfrecord", facts


@pytest.fixture(scope="module")
def frames(segment, tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("frames")
    waymo_eval.run_tool("frames", out, segment[0])
    return out, json.loads((out / "frames.json").read_text())


def test_official_inputs_reproduce_the_official_tool(waymo_python: Path, shared_dir: Path, tmp_path: Path) -> None:
    src = shared_dir / "fixtures" / "waymo"
    metrics = waymo_eval.score_objects(src / "fake_predictions.bin", src / "fake_ground_truths.bin", tmp_path)
    rows = metrics["breakdowns"]
    assert len(rows) == 32  # 4 types x 2 levels, + 4 types x 3 ranges x 2 levels
    for name, (ap, aph) in OFFICIAL.items():
        tol = 0.005 if name in FLOAT32_ROWS else 1e-5
        assert rows[name]["mAP"] == pytest.approx(ap, abs=tol), name
        assert rows[name]["mAPH"] == pytest.approx(aph, abs=tol), name
    assert metrics["frames"] == 20 and metrics["predictions"] == 2263
    assert metrics["mAPH_L2"] == pytest.approx(np.mean([rows[f"OBJECT_TYPE_TYPE_{t}_LEVEL_2"]["mAPH"]
                                                                     for t in ("VEHICLE", "PEDESTRIAN", "CYCLIST")]))
    assert json.loads((tmp_path / "metrics.json").read_text())["mAPH_L2"] == metrics["mAPH_L2"]


def test_real_frame_labels(waymo_python: Path, shared_dir: Path, tmp_path: Path) -> None:
    """The real Frame of the fixtures carries labels but no range image (stripped to 8 KB)."""
    waymo_eval.run_tool("frames", tmp_path, shared_dir / "fixtures" / "waymo" / "val.tfrecord")
    (entry,) = json.loads((tmp_path / "frames.json").read_text())
    assert entry["context"] == "1071392229495085036_1844_790_1864_790" and entry["timestamp"] == 1507315488219118
    assert entry["points"] == 0 and entry["labels"] == 18
    data = np.load(tmp_path / entry["file"])
    assert np.bincount(data["gt_types"]).tolist() == [0, 1, 0, 17]  # one vehicle, 17 signs
    # difficulty by the official rule: unlabelled boxes with <= 5 points are LEVEL_2
    assert ((data["gt_difficulty"] == 2) == (data["gt_num_points"] <= 5)).all()


def test_frames_points_land_on_their_boxes(frames) -> None:
    from itkd_cli.data.points import points_in_boxes

    folder, index = frames
    for entry in index:
        data = np.load(folder / entry["file"])
        pts, boxes = data["points"], data["gt_boxes"].copy()
        assert pts.shape == (entry["points"], 5)
        boxes[:, 3:6] += 0.02  # ray hits lie on the faces
        inside = points_in_boxes(pts[:, :3], np.concatenate([boxes, np.zeros((3, 2))], 1))
        assert inside.any(axis=1).all()  # every point on a labelled box: the reader's geometry is right
        assert np.allclose(pts[:, 4], 0.1) and np.isin(np.round(pts[:, 3], 5), np.round(np.tanh([2, 3, 4]), 5)).all()


def test_frames_match_what_was_written(segment, frames) -> None:
    _, facts = segment
    folder, index = frames
    assert [(e["context"], e["timestamp"]) for e in index] == [(f["context"], f["timestamp"]) for f in facts]
    for entry, fact in zip(index, facts):
        data = np.load(folder / entry["file"])
        assert entry["points"] == fact["points"]  # hits minus the no-label-zone pixels
        assert data["gt_num_points"].tolist() == fact["points_per_object"]
        assert np.allclose(data["gt_boxes"], fact["boxes"]) and data["gt_types"].tolist() == fact["types"]


def _as_detections(folder: Path, index: list[dict], class_names: list[str], yaw_offset: float = 0.0) -> list[Detections]:
    types = waymo_eval.class_types(class_names).tolist()
    out = []
    for entry in index:
        data = np.load(folder / entry["file"])
        boxes = np.concatenate([data["gt_boxes"], np.zeros((len(data["gt_boxes"]), 2))], 1)
        boxes[:, 6] += yaw_offset
        labels = torch.tensor([types.index(t) for t in data["gt_types"]])
        out.append(Detections(torch.from_numpy(boxes).float(), torch.full((len(labels),), 0.9), labels))
    return out


@pytest.mark.parametrize("yaw_offset, expect_aph", [(0.0, 1.0), (np.pi, 0.0)])
def test_ground_truth_through_our_writer(frames, tmp_path: Path, monkeypatch, yaw_offset: float,
                                         expect_aph: float) -> None:
    """GT boxes fed back as predictions through evaluate_waymo score 1; turned by pi, mAPH is 0."""
    from itkd_cli.recipe import load_recipe

    folder, index = frames
    recipe = load_recipe("centerpoint-pillar-waymo")
    dets = _as_detections(folder, index, recipe.dataset.class_names, yaw_offset)
    monkeypatch.setattr(waymo_eval, "predict_frames", lambda *a, **k: dets)
    segment_file = folder.parent / "none.tfrecord"
    monkeypatch.setattr(waymo_eval, "tfrecord_files", lambda root: [segment_file])
    monkeypatch.setattr(waymo_eval, "run_tool", _tool_reusing(folder))
    metrics = waymo_eval.evaluate_waymo(recipe, torch.nn.Linear(1, 1), segment_file, tmp_path)
    for name in ("Vehicle", "Pedestrian", "Cyclist"):
        row = metrics["per_class"][name]
        assert row["mAP_L1"] == pytest.approx(1.0) and row["mAP_L2"] == pytest.approx(1.0)
        assert row["mAPH_L1"] == pytest.approx(expect_aph, abs=1e-6)
    assert metrics["frames"] == 2 and metrics["predictions"] == 6
    assert (tmp_path / "predictions_waymo.npz").is_file() and not list(tmp_path.glob("tmp*"))


def test_segments_are_read_one_at_a_time_up_to_max_frames(segment, tmp_path: Path, monkeypatch) -> None:
    """A folder of two segments and --max-frames 3: both files read, the second for one frame only."""
    import shutil

    from itkd_cli.recipe import load_recipe

    folder = tmp_path / "segments"
    folder.mkdir()
    for name in ("a.tfrecord", "b.tfrecord"):
        shutil.copy(segment[0], folder / name)
    seen = []
    monkeypatch.setattr(waymo_eval, "predict_frames",
                        lambda model, cfg, names, frame_dir, index, progress: seen.append(len(index)) or
                        [Detections(torch.zeros(0, 9), torch.zeros(0), torch.zeros(0, dtype=torch.long))] * len(index))
    metrics = waymo_eval.evaluate_waymo(load_recipe("centerpoint-pillar-waymo"), torch.nn.Linear(1, 1), folder,
                                        tmp_path / "ev", max_frames=3)
    assert seen == [2, 1] and metrics["tfrecords_read"] == 2
    assert metrics["frames"] == 2  # distinct (segment, timestamp) keys: b.tfrecord repeats a.tfrecord's
    assert metrics["ground_truths"] == 9 and metrics["predictions"] == 0 and metrics["mAP_L1"] == 0.0
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == ["metrics.json", "predictions_waymo.npz",
                                                                   "waymo_metrics_raw.json"]


def _tool_reusing(folder: Path):
    """run_tool, except that `frames` copies the frames already read (one TFRecord read per module)."""
    import shutil

    real = waymo_eval.run_tool

    def run(cmd: str, *args):
        if cmd == "frames":
            shutil.copytree(folder, args[0])
            return None
        return real(cmd, *args)

    return run


def test_eval_cli_on_a_checkpoint(segment, tmp_path: Path, cli) -> None:
    """`itkd eval --dataset waymo -c CKPT --data-root SEGMENT`: inference + official metrics, exit 0."""
    from itkd_cli.models.build import build_model
    from itkd_cli.models.checkpoint import save_checkpoint
    from itkd_cli.recipe import load_recipe

    recipe = load_recipe("centerpoint-pillar-waymo", ["model.grid.point_range=[-20.48,-20.48,-2,20.48,20.48,4]",
                                                      "model.post.score_threshold=0.0"])
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "ckpt.pth", build_model(recipe.model), recipe, "teacher")
    res = cli("eval", "--dataset", "waymo", "-c", ckpt, "--data-root", segment[0], "--out", tmp_path / "ev", "--json")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"Vehicle", "Pedestrian", "Cyclist"}
    assert metrics["frames"] == 2 and metrics["ground_truths"] == 6 and metrics["predictions"] > 0
    assert all(0.0 <= v <= 1.0 for row in metrics["per_class"].values() for v in row.values())
    pred = np.load(tmp_path / "ev" / "predictions_waymo.npz")
    assert pred["boxes"].shape == (metrics["predictions"], 7) and set(pred["types"].tolist()) <= {1, 2, 4}


def test_eval_cli_user_errors(tmp_path: Path, cli, waymo_python: Path) -> None:
    res = cli("eval", "--dataset", "waymo", "--predictions", tmp_path / "p.bin")
    assert res.exit_code == 2 and "--predictions and --ground-truth go together" in res.output
    (tmp_path / "p.bin").write_bytes(b"\x00garbage\xff" * 10)
    res = cli("eval", "--dataset", "waymo", "--predictions", tmp_path / "p.bin", "--ground-truth", tmp_path / "p.bin",
              "--out", tmp_path / "ev")
    assert res.exit_code == 2 and "p.bin: not a Waymo Objects proto" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "ev" / "metrics.json").exists()
    res = cli("eval", "--dataset", "waymo", "-c", tmp_path / "x.pth", "--version", "v1")
    assert res.exit_code == 2 and "--version: nuScenes only" in res.output


def test_a_file_that_is_not_a_tfrecord(tmp_path: Path, waymo_python: Path) -> None:
    bad = tmp_path / "bad.tfrecord"
    bad.write_bytes(b"not a tfrecord at all" * 20)
    with pytest.raises(ItkdError, match="bad.tfrecord: not a readable TFRecord of Waymo frames"):
        waymo_eval.run_tool("frames", tmp_path / "out", bad)
