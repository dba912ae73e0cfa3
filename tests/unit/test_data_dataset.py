"""FrameDataset on a tiny hand-built world: boxes, sweeps, splits, cache and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_tiny import OBJECTS, VERSION, ego_pose, expected_box, make_world, matrix, SENSOR, tiny_recipe

from itkd_cli.core.errors import ItkdError
from itkd_cli.data import cache
from itkd_cli.data.dataset import FrameDataset


@pytest.fixture()
def world(tmp_path):
    return make_world(tmp_path / "world")


def test_boxes_in_keyframe_lidar_frame(world):
    ds = FrameDataset(tiny_recipe(world), "tiny_val", train=False)
    assert ds.tokens == ["s0", "s1"]
    for frame in range(2):
        info = ds.infos[frame]
        assert info["gt_names"] == ["car", "pedestrian", "animal"]
        for obj in range(3):
            np.testing.assert_allclose(info["gt_boxes"][obj], expected_box(frame, obj), atol=1e-6)
    # The car moves 1 m per 0.5 s along global x: 2 m/s, seen rotated into the LiDAR frame.
    assert np.hypot(*ds.infos[0]["gt_boxes"][0][7:9]) == pytest.approx(2.0)
    boxes, labels = ds.annotations(0)  # animal is not a detection class
    names = ds.recipe.dataset.class_names
    assert [names[i - 1] for i in labels] == ["car", "pedestrian"]


def test_lidar_to_global(world):
    ds = FrameDataset(tiny_recipe(world), "tiny_val", train=False)
    np.testing.assert_allclose(ds.lidar_to_global("s1"), matrix(ego_pose(1)) @ matrix(SENSOR), atol=1e-9)
    with pytest.raises(ItkdError, match="sample token 'nope': not in split 'tiny_val'"):
        ds.lidar_to_global("nope")


def test_sweep_lands_on_keyframe_points(world):
    ds = FrameDataset(tiny_recipe(world), "tiny_val", train=False)
    pts = ds.points(1)
    n = len(pts) // 2  # the sweep holds the same global points as its keyframe
    np.testing.assert_allclose(pts[n:, :3], pts[:n, :3], atol=1e-4)
    assert np.all(pts[:n, 4] == 0) and np.allclose(pts[n:, 4], 0.05)
    assert np.all(pts[:, 3] == 7.0)


def test_sweep_lag_limit_and_single_sweep(world):
    short = FrameDataset(tiny_recipe(world, "dataset.max_sweep_lag=0.01",
                                        f"dataset.cache_dir={world / 'c2'}"), "tiny_val", train=False)
    assert short.infos[1]["sweeps"] == []
    one = FrameDataset(tiny_recipe(world, "dataset.sweeps=1", f"dataset.cache_dir={world / 'c3'}"),
                          "tiny_val", train=False)
    assert len(one.points(1)) == len(short.points(1))


def test_cache_is_reused(world, monkeypatch):
    recipe = tiny_recipe(world)
    FrameDataset(recipe, "tiny_val", train=False)
    assert cache.info_path(recipe.dataset, "tiny_val").is_file()

    def boom(*_a, **_k):
        raise AssertionError("devkit re-indexed")

    monkeypatch.setattr(cache, "open_nuscenes", boom)
    assert len(FrameDataset(recipe, "tiny_val", train=False)) == 2


def test_cache_rebuilt_when_tables_change(world):
    recipe = tiny_recipe(world)
    assert len(FrameDataset(recipe, "tiny_val", train=False).annotations(0)[0]) == 2
    path = world / VERSION / "sample_annotation.json"
    anns = json.loads(path.read_text())
    anns[0]["size"] = [2.0, 5.0, 1.5]  # a regenerated dataset in the same root
    path.write_text(json.dumps(anns))
    assert FrameDataset(recipe, "tiny_val", train=False).infos[0]["gt_boxes"][0][3] == 5.0


def test_training_drops_boxes_without_points(world):
    path = world / VERSION / "sample_annotation.json"
    anns = json.loads(path.read_text())
    anns[1]["num_lidar_pts"] = 0  # pedestrian of frame 0
    path.write_text(json.dumps(anns))
    recipe = tiny_recipe(world)
    assert len(FrameDataset(recipe, "tiny_val", train=True).annotations(0)[0]) == 1
    assert len(FrameDataset(recipe, "tiny_val", train=False).annotations(0)[0]) == 2


def test_unknown_split_lists_available(world):
    with pytest.raises(ItkdError, match=r"split 'bogus': unknown .*available: tiny_train, tiny_val, mini_train"):
        FrameDataset(tiny_recipe(world), "bogus", train=False)


def test_builtin_split_without_scenes(world):
    with pytest.raises(ItkdError, match="split 'mini_val': no scene of"):
        FrameDataset(tiny_recipe(world), "mini_val", train=False)


def test_missing_table(world):
    (world / VERSION / "ego_pose.json").unlink()
    with pytest.raises(ItkdError, match=r"missing nuScenes tables: ego_pose\.json"):
        FrameDataset(tiny_recipe(world), "tiny_val", train=False)


def test_dangling_token(world):
    path = world / VERSION / "sample_data.json"
    rows = json.loads(path.read_text())
    rows[3]["prev"] = "ghost"  # frame 1 keyframe points to a sample_data that does not exist
    path.write_text(json.dumps(rows))
    with pytest.raises(ItkdError, match=r"sample_data token 'ghost' \(referenced by sample_data sd_key1 \(prev\)\)"):
        FrameDataset(tiny_recipe(world), "tiny_val", train=False)


def test_truncated_point_file(world):
    path = world / "samples/LIDAR_TOP/f0_key.pcd.bin"
    path.write_bytes(path.read_bytes()[:-6])
    ds = FrameDataset(tiny_recipe(world), "tiny_val", train=False)
    with pytest.raises(ItkdError, match=r"f0_key\.pcd\.bin \(sample_data sd_key0\): .* not a multiple of 20"):
        ds[0]


def test_empty_sweep_passes_through(world):
    """An empty sweep only gives less context (an empty keyframe is an error: test_data_validate.py)."""
    ds = FrameDataset(tiny_recipe(world), "tiny_val", train=True)
    keyframe_only = int((ds.points(0)[:, 4] == 0).sum())
    (world / "sweeps" / "LIDAR_TOP" / "f0_sweep.pcd.bin").write_bytes(b"")
    assert len(ds.points(0)) == keyframe_only
    sample = ds[0]
    assert len(sample.voxels) > 0 and len(sample.gt_boxes) == 2


def test_every_object_kind_is_counted(world):
    assert len(OBJECTS) == 3
    assert cache.describe(cache.load_infos(tiny_recipe(world).dataset, "tiny_val"))["boxes"] == {
        "animal": 2, "car": 2, "pedestrian": 2}


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_bad_point_file_met_in_a_worker_is_the_users_error_not_a_traceback(world, damage):
    """Raised inside a DataLoader worker, the ItkdError reaches the main process with its one-line message and
    hint, as in a run without workers."""
    from itkd_cli.data.loader import build_loader

    path = world / "samples/LIDAR_TOP/f0_key.pcd.bin"
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:-6])
    errors = []
    for workers in (0, 1):
        loader = build_loader(tiny_recipe(world, f"dataset.workers={workers}"), "tiny_val", train=False, batch_size=1,
                              shuffle=False, seed=0)
        with pytest.raises(ItkdError) as err:
            list(loader)
        errors.append((err.value.message, err.value.hint, err.value.exit_code))
    assert errors[0] == errors[1]
    message, hint, code = errors[1]
    assert "\n" not in message and "Traceback" not in message and "f0_key.pcd.bin (sample_data sd_key0)" in message
    assert code == 2 and (hint == "check dataset.root and the samples/ sweeps/ folders") is (damage == "missing")


def test_worker_text_without_a_hint_keeps_the_message():
    from itkd_cli.core.errors import WORKER_HINT, JobFailed

    text = ("Caught ItkdError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
            '  File "x.py", line 1, in <module>\nitkd_cli.core.errors.ItkdError: a.bin: bad')
    assert (ItkdError(text).message, ItkdError(text).hint) == ("a.bin: bad", None)
    failed = JobFailed(text.replace("ItkdError: a.bin: bad", f"JobFailed: parity 2e-3{WORKER_HINT}raise --atol"))
    assert (failed.message, failed.hint, failed.exit_code) == ("parity 2e-3", "raise --atol", 1)
