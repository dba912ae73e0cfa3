"""`itkd data prepare` and `itkd data inspect` on the tiny world, and their user errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from data_tiny import VERSION, make_world, tiny_recipe
from typer.testing import CliRunner

from itkd_cli.cli.main import app
from itkd_cli.data.gt_database import GTDatabase
from itkd_cli.data.dataset import FrameDataset

runner = CliRunner()


@pytest.fixture()
def world(tmp_path):
    return make_world(tmp_path / "world")


def sets(world):
    return ["--set", f"dataset.root={world}", "--set", f"dataset.version={VERSION}",
            "--set", "dataset.sweeps=2", "--set", f"dataset.cache_dir={world / 'cache'}",
            "--set", "dataset.train_split=tiny_train", "--set", "dataset.val_split=tiny_val"]


def test_prepare_writes_caches_and_gt_database(world):
    res = runner.invoke(app, ["data", "prepare", "--recipe", "synth-pillar", *sets(world), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["splits"]["tiny_train"]["frames"] == 2 and out["splits"]["tiny_val"]["boxes"]["car"] == 2
    assert out["gt_database"]["objects"] == {"car": 2, "pedestrian": 2}  # animal is not a class
    db = GTDatabase.load(world / "cache" / f"{VERSION}_tiny_train_gtdb.npz", ["car", "pedestrian"])
    # every object's keyframe points and the sweep's copies of them (2 sweeps)
    assert [len(db.object_points(i)) for i in range(len(db))] == [80, 24, 80, 24]
    # the training dataset then pastes objects from it
    recipe = tiny_recipe(world, "dataset.augment.gt_sampling=true", "dataset.augment.gt_sampling_per_class=2")
    ds = FrameDataset(recipe, "tiny_train", train=True)
    assert ds.db is not None and len(ds[(0, 0)].gt_boxes) >= 2


def test_gt_sampling_without_database_is_a_user_error(world):
    recipe = tiny_recipe(world, "dataset.augment.gt_sampling=true")
    with pytest.raises(Exception, match="GT database not found"):
        FrameDataset(recipe, "tiny_train", train=True)


def test_inspect_counts_points_in_boxes(world):
    res = runner.invoke(app, ["data", "inspect", "--data-root", str(world), "--version", VERSION,
                              "--split", "tiny_train", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["frames"] == 2 and out["boxes"] == {"animal": 2, "car": 2, "pedestrian": 2}
    assert out["exact"] == out["exact_global"] == out["total"] == 6
    assert {a["token"] for a in out["annotations"]} == {f"ann{i}_{f}" for i in range(3) for f in range(2)}
    table = runner.invoke(app, ["data", "inspect", "--data-root", str(world), "--version", VERSION])
    assert table.exit_code == 0 and "(as trained) 6/6 exact" in table.output.replace("\n", " ")


def test_inspect_finds_the_only_version_folder(world):
    res = runner.invoke(app, ["data", "inspect", "--data-root", str(world), "--split", "tiny_train", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["frames"] == 2


def test_inspect_without_version_lists_the_candidates(world, tmp_path):
    shutil.copytree(world / VERSION, world / "v1.0-copy")
    res = runner.invoke(app, ["data", "inspect", "--data-root", str(world)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"several version folders (v1.0-copy, {VERSION})" in res.output and "--version" in res.output
    res = runner.invoke(app, ["data", "inspect", "--data-root", str(tmp_path)])
    assert res.exit_code == 2 and "no version folder" in res.output
    res = runner.invoke(app, ["data", "inspect", "--data-root", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "folder not found" in res.output


@pytest.mark.parametrize("args,message", [
    (["--split", "nope"], "split 'nope': unknown"),
    (["--version", "v9"], f"nuScenes version folder not found\nhint: {{root}} holds {VERSION};"),
    (["--dataset", "kitti"], "--dataset: 'kitti' is not supported"),
])
def test_inspect_user_errors_are_one_line(world, args, message):
    base = {"--data-root": str(world), "--version": VERSION}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    res = runner.invoke(app, ["data", "inspect", *[x for kv in base.items() for x in kv]])
    assert res.exit_code == 2
    assert message.format(root=world) in res.output and "Traceback" not in res.output
    assert res.output.splitlines()[0].startswith("error:")


def test_inspect_bad_point_file(world):
    (world / "samples/LIDAR_TOP/f1_key.pcd.bin").write_bytes(np.zeros(3, np.float32).tobytes())
    res = runner.invoke(app, ["data", "inspect", "--data-root", str(world), "--version", VERSION])
    assert res.exit_code == 2 and "f1_key.pcd.bin (sample_data sd_key1): 12 bytes" in res.output


def test_quiet_keeps_what_prepare_and_inspect_found(world):
    """--quiet drops the status lines but not the results: the GT database's size and the point-count summary."""
    res = runner.invoke(app, ["--quiet", "data", "prepare", "--recipe", "synth-pillar", *sets(world)])
    assert res.exit_code == 0, res.output
    text = res.output.replace("\n", " ")
    assert "indexing split" not in text and "GT database: 4 objects ->" in text
    res = runner.invoke(app, ["--quiet", "data", "inspect", "--data-root", str(world), "--version", VERSION])
    assert res.exit_code == 0 and "(as trained) 6/6 exact" in res.output.replace("\n", " ")
