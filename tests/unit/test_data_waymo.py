"""A converted Waymo root read as a dataset (infos, points, splits, sampling) and `itkd data prepare --dataset
waymo`'s orchestration (sources, manifest, parallel workers, resume, errors) with the worker faked: the real
worker runs in tests/reference/test_waymo_convert.py and the slow end-to-end test."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner
from waymo_tiny import OBJECTS, make_root

from itkd_cli.cli.main import app
from itkd_cli.core.errors import ItkdError
from itkd_cli.data import waymo_prepare
from itkd_cli.data.cache import load_infos
from itkd_cli.data.dataset import FrameDataset
from itkd_cli.data.waymo import MANIFEST, read_waymo_points, waymo_infos

runner = CliRunner()


def waymo_recipe(root: Path, *overrides: str):
    from itkd_cli.recipe.load import load_recipe

    return load_recipe("synth-pillar-waymo", [f"dataset.root={root}", "dataset.workers=0", *overrides])


def test_infos_carry_boxes_labels_and_poses(tmp_path: Path) -> None:
    root = make_root(tmp_path / "w")
    infos = waymo_infos(root, "train")
    assert [i["token"] for i in infos[:4]] == ["seg-a_1000000", "seg-a_1100000", "seg-a_1200000", "seg-b_1000000"]
    assert len(infos) == 5 and len(waymo_infos(root, "val")) == 2
    first = infos[0]
    assert first["gt_names"] == ["Vehicle", "Pedestrian", "Cyclist", "Sign"] and first["sweeps"] == []
    # (x, y, z, l, w, h, heading) then the speed: OpenPCDet's box layout
    assert first["gt_boxes"][0] == [12.0, 3.0, 0.8, 4.5, 2.0, 1.6, 0.3, 5.0, 0.5]
    assert first["lidar_to_global"][0][3] == 100.0 and infos[1]["lidar_to_global"][0][3] == 102.0
    assert first["lidar_path"] == "segments/seg-a/0000.npy" and first["difficulty"] == [0, 0, 2, 0]


def test_points_are_squashed_like_openpcdet(tmp_path: Path) -> None:
    root = make_root(tmp_path / "w")
    raw = np.load(root / "segments" / "seg-a" / "0000.npy")
    pts = read_waymo_points(root / "segments" / "seg-a" / "0000.npy")
    np.testing.assert_array_equal(pts[:, [0, 1, 2, 4]], raw[:, [0, 1, 2, 4]])
    np.testing.assert_allclose(pts[:, 3], np.tanh(raw[:, 3]), rtol=1e-6)
    assert raw[:, 3].max() > 1.5 and pts[:, 3].max() < 1.0


def test_dataset_reads_a_converted_root(tmp_path: Path) -> None:
    root = make_root(tmp_path / "w")
    ds = FrameDataset(waymo_recipe(root), "train", train=False)
    assert len(ds) == 5
    boxes, labels = ds.annotations(0)
    assert labels.tolist() == [1, 2, 3]  # Vehicle, Pedestrian, Cyclist; the sign is no recipe class
    sample = ds[0]
    assert sample.voxels.shape[2] == 5 and len(sample.gt_boxes) == 3 and sample.token == "seg-a_1000000"
    assert len(sample.targets) == 2  # [[Vehicle], [Pedestrian, Cyclist]]
    assert int(sample.targets[0][2].sum()) == 1 and int(sample.targets[1][2].sum()) == 2
    train = FrameDataset(waymo_recipe(root), "train", train=True)
    assert train[(0, 1)].voxels.shape[2] == 5


def test_sampled_interval_takes_every_nth_frame(tmp_path: Path) -> None:
    root = make_root(tmp_path / "w")
    every = [i["token"] for i in waymo_infos(root, "train")]
    cfg = waymo_recipe(root, "dataset.sampled_interval.train=2").dataset
    assert [i["token"] for i in load_infos(cfg, "train")] == every[::2]
    assert len(load_infos(cfg, "val")) == 2  # val keeps its own interval (1)


def test_gt_database_of_a_converted_root(tmp_path: Path) -> None:
    root = make_root(tmp_path / "w")
    res = runner.invoke(app, ["data", "prepare", "--recipe", "synth-pillar-waymo", "--set", f"dataset.root={root}",
                              "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["splits"]["train"]["frames"] == 5 and out["splits"]["val"]["boxes"]["Sign"] == 2
    # 5 training frames, each with one object of every recipe class (the sign is not one)
    assert out["gt_database"]["objects"] == {"Cyclist": 5, "Pedestrian": 5, "Vehicle": 5}
    from itkd_cli.data.gt_database import GTDatabase

    db = GTDatabase.load(Path(out["gt_database"]["path"]), ["Vehicle", "Pedestrian", "Cyclist"])
    counts = sorted({len(db.object_points(i)) for i in range(len(db))})
    assert counts == sorted({o[3] for o in OBJECTS if o[1] != 3})  # every point placed inside each box


@pytest.mark.parametrize("damage, expected", [
    (lambda r: (r / MANIFEST).unlink(), "is not a converted Waymo root"),
    (lambda r: (r / MANIFEST).write_text(json.dumps({**json.loads((r / MANIFEST).read_text()), "format_version": 99})),
     "converted by another itkd version"),
    (lambda r: (r / "segments" / "seg-b" / "segment.json").unlink(), "segment seg-b is not converted"),
    (lambda r: np.save(r / "segments" / "seg-a" / "0000.npy", np.zeros((4, 3), np.float32)),
     r"expected float32 \(N, 5\) points"),
    (lambda r: np.save(r / "segments" / "seg-a" / "0000.npy", np.full((4, 5), np.nan, np.float32)),
     "non-finite values"),
    (lambda r: (r / "segments" / "seg-a" / "0000.npy").unlink(), "point file not found"),
])
def test_damaged_roots_are_one_line_errors(tmp_path: Path, damage, expected: str) -> None:
    root = make_root(tmp_path / "w")
    damage(root)
    with pytest.raises(ItkdError, match=expected) as info:
        FrameDataset(waymo_recipe(root), "train", train=False)[0]
    assert "\n" not in info.value.message


def test_unknown_split_names_the_converted_ones(tmp_path: Path) -> None:
    root = make_root(tmp_path / "w")
    with pytest.raises(ItkdError, match=r"split 'test': not in the converted Waymo root .* \(it holds: train, val\)"):
        waymo_infos(root, "test")


def test_train_refuses_a_root_that_was_never_converted(tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", "--recipe", "synth-pillar-waymo", "--set", f"dataset.root={tmp_path / 'none'}",
                              "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "is not a converted Waymo root" in res.output
    assert "itkd data prepare --dataset waymo" in res.output and not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- prepare --dataset waymo
def _records(folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.tfrecord").write_bytes(b"x" * 10)
    return sorted(folder.glob("*.tfrecord"))


def test_sources_from_waymo_split_folders_or_a_named_split(tmp_path: Path) -> None:
    train = _records(tmp_path / "raw" / "training", ["s1", "s2"])
    val = _records(tmp_path / "raw" / "validation", ["s3"])
    assert waymo_prepare.sources_by_split(tmp_path / "raw", None) == {"train": train, "val": val}
    assert waymo_prepare.sources_by_split(tmp_path / "raw" / "training", "mine") == {"mine": train}
    with pytest.raises(ItkdError, match="no training/, validation/ or unlabeled/ folder, and no --split"):
        waymo_prepare.sources_by_split(tmp_path / "raw" / "training", None)
    with pytest.raises(ItkdError, match="folder holds no .tfrecord file"):
        waymo_prepare.sources_by_split(tmp_path, "train")
    # `itkd data synth --format waymo --unlabeled-scenes N` writes unlabeled/: converted as split `unlabeled`
    pool = _records(tmp_path / "raw" / "unlabeled", ["s9"])
    assert waymo_prepare.sources_by_split(tmp_path / "raw", None) == {"train": train, "val": val, "unlabeled": pool}


class FakeWorker:
    """`run_tool("convert", ...)` without the Waymo venv: writes a finished segment (or fails on a name)."""

    def __init__(self, fail_on: str = "") -> None:
        self.fail_on, self.calls, self.lock = fail_on, [], threading.Lock()

    def __call__(self, command: str, record: Path, folder: Path, *options: str, on_line=None) -> None:
        assert command == "convert" and options == ("--lidars", "top", "--returns", "1")
        with self.lock:
            self.calls.append(Path(record).stem)
        if Path(record).stem == self.fail_on:
            raise ItkdError(f"{record}: not a readable TFRecord of Waymo frames (truncated)")
        if (Path(folder) / "segment.json").is_file():
            on_line("skipped")
            return
        Path(folder).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            on_line(f"frame {i}")
        (Path(folder) / "segment.json").write_text(json.dumps({"format_version": 1, "context": Path(record).stem,
                                                               "frames": [{}, {}, {}]}))


def test_prepare_converts_every_segment_and_resumes(tmp_path: Path, monkeypatch) -> None:
    _records(tmp_path / "raw" / "training", ["s1", "s2", "s3"])
    _records(tmp_path / "raw" / "validation", ["s4"])
    monkeypatch.setattr(waymo_prepare, "waymo_python", lambda: Path("/venv/python"))
    worker = FakeWorker()
    monkeypatch.setattr(waymo_prepare, "run_tool", worker)
    seen = []
    out = waymo_prepare.prepare_waymo(tmp_path / "raw", tmp_path / "root", lidars="top", returns=1, workers=2,
                                      progress=lambda *a: seen.append(a))
    assert out["splits"] == {"train": {"segments": 3, "frames": 9}, "val": {"segments": 1, "frames": 3}}
    assert sorted(worker.calls) == ["s1", "s2", "s3", "s4"] and seen[-1] == (4, 4, 12)
    manifest = json.loads((tmp_path / "root" / MANIFEST).read_text())
    assert manifest["splits"] == {"train": ["s1", "s2", "s3"], "val": ["s4"]}
    again = waymo_prepare.prepare_waymo(tmp_path / "raw", tmp_path / "root", lidars="top", returns=1)
    assert again["skipped"] == 4
    with pytest.raises(ItkdError, match="converted with other options"):
        waymo_prepare.prepare_waymo(tmp_path / "raw", tmp_path / "root", lidars="all", returns=2)


def test_a_failing_segment_stops_the_run_and_keeps_the_others(tmp_path: Path, monkeypatch) -> None:
    _records(tmp_path / "raw", ["s1", "s2", "s3", "s4"])
    monkeypatch.setattr(waymo_prepare, "waymo_python", lambda: Path("/venv/python"))
    monkeypatch.setattr(waymo_prepare, "run_tool", FakeWorker(fail_on="s1"))
    with pytest.raises(ItkdError, match="s1.tfrecord: not a readable TFRecord") as info:
        waymo_prepare.prepare_waymo(tmp_path / "raw", tmp_path / "root", split="train", lidars="top", returns=1,
                                    workers=1)
    assert "run the same command again" in info.value.hint
    with pytest.raises(ItkdError, match="segment s1 is not converted"):  # the reader names what is missing
        waymo_infos(tmp_path / "root", "train")


def test_prepare_refuses_a_foreign_folder_and_a_segment_in_two_splits(tmp_path: Path, monkeypatch) -> None:
    _records(tmp_path / "raw", ["s1"])
    monkeypatch.setattr(waymo_prepare, "waymo_python", lambda: Path("/venv/python"))
    monkeypatch.setattr(waymo_prepare, "run_tool", FakeWorker())
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ItkdError, match="exists and is not a converted Waymo root"):
        waymo_prepare.prepare_waymo(tmp_path / "raw", tmp_path / "busy", split="train", lidars="top", returns=1)
    waymo_prepare.prepare_waymo(tmp_path / "raw", tmp_path / "root", split="train", lidars="top", returns=1)
    with pytest.raises(ItkdError, match="already converted into split 'train'"):
        waymo_prepare.prepare_waymo(tmp_path / "raw", tmp_path / "root", split="val", lidars="top", returns=1)


def test_prepare_cli_user_errors(tmp_path: Path, monkeypatch) -> None:
    _records(tmp_path / "raw", ["s1"])
    res = runner.invoke(app, ["data", "prepare", "--dataset", "waymo", "--src", str(tmp_path / "raw")])
    assert res.exit_code == 2 and "--out: required with --src" in res.output
    res = runner.invoke(app, ["data", "prepare", "--out", str(tmp_path / "root")])
    assert res.exit_code == 2 and "--src/--out/--split: convert Waymo TFRecords" in res.output
    res = runner.invoke(app, ["data", "prepare", "--dataset", "waymo", "--src", str(tmp_path / "raw"), "--out",
                              str(tmp_path / "root"), "--split", "train", "--returns", "3"])
    assert res.exit_code == 2 and "--returns 3: expected 1 or 2" in res.output
    monkeypatch.setenv("ITKD_WAYMO_PYTHON", str(tmp_path / "no-venv" / "python"))
    res = runner.invoke(app, ["data", "prepare", "--dataset", "waymo", "--src", str(tmp_path / "raw"), "--out",
                              str(tmp_path / "root"), "--split", "train"])
    assert res.exit_code == 2 and "no Waymo environment" in res.output and "make waymo-env" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "root").exists()
