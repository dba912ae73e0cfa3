"""Bad data never trains silently (issues #44/#45): non-finite points, empty keyframes, and classes the training
split does not hold are refused (or warned about, with counts) before or as the frame is met."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from data_tiny import VERSION, make_world, tiny_recipe

from itkd_cli.core.errors import ItkdError
from itkd_cli.data.dataset import FrameDataset
from itkd_cli.data.validate import check_training_classes

WAYMO = ["dataset.class_names=[Vehicle,Pedestrian,Cyclist]", "model.head.tasks=[[Vehicle],[Pedestrian,Cyclist]]"]


@pytest.fixture()
def world(tmp_path):
    return make_world(tmp_path / "world")


def _damage(world, name: str, row: int, col: int, value: float) -> None:
    folder = "samples" if name.endswith("key") else "sweeps"
    path = world / folder / "LIDAR_TOP" / f"{name}.pcd.bin"
    pts = np.fromfile(path, np.float32).reshape(-1, 5)
    pts[row, col] = value
    pts.tofile(path)


def _errors(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("workers", [0, 1])
def test_nan_in_a_keyframe_is_one_error_naming_the_file_and_count(world, workers):
    from itkd_cli.data.loader import build_loader

    _damage(world, "f0_key", 3, 0, np.nan)
    _damage(world, "f0_key", 9, 3, np.nan)  # intensity counts too
    loader = build_loader(tiny_recipe(world, f"dataset.workers={workers}"), "tiny_train", train=True, batch_size=1,
                          shuffle=False, seed=0)
    with pytest.raises(ItkdError) as err:
        list(loader)
    assert "\n" not in err.value.message and "Traceback" not in err.value.message
    assert "f0_key.pcd.bin (sample_data sd_key0): 2 non-finite values (NaN/Inf)" in err.value.message
    assert err.value.exit_code == 2 and "itkd data synth --out" in err.value.hint


def test_inf_in_a_sweep_is_refused_in_training_and_in_data_inspect(world, cli):
    _damage(world, "f1_sweep", 0, 2, np.inf)
    ds = FrameDataset(tiny_recipe(world), "tiny_train", train=True)
    ds[0]  # frame 0 is clean
    with pytest.raises(ItkdError, match=r"f1_sweep\.pcd\.bin \(sample_data sd_sweep1\): 1 non-finite values"):
        ds[1]
    _damage(world, "f1_sweep", 0, 2, 0.0)
    _damage(world, "f1_key", 5, 1, -np.inf)  # inspect reads keyframes only
    result = cli("data", "inspect", "--data-root", world, "--version", VERSION)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(_errors(result)) == 1 and "f1_key.pcd.bin (sample_data sd_key1): 1 non-finite values" in _errors(result)[0]


def test_empty_keyframe_is_one_error_naming_the_file(world):
    (world / "samples/LIDAR_TOP/f0_key.pcd.bin").write_bytes(b"")
    for train in (True, False):  # training and evaluation alike
        with pytest.raises(ItkdError, match=r"f0_key\.pcd\.bin \(sample_data sd_key0\): keyframe point file holds "
                                            r"no points") as err:
            FrameDataset(tiny_recipe(world), "tiny_val", train=train)[0]
        assert err.value.exit_code == 2 and err.value.hint


def test_recipe_classes_none_in_the_split_refuse_training_naming_both_lists(world, tmp_path, cli):
    sets = [f"dataset.root={world}", f"dataset.version={VERSION}", "dataset.workers=0",
            f"dataset.cache_dir={world / 'cache'}", "dataset.train_split=tiny_train", *WAYMO, "train.max_steps=1"]
    with pytest.raises(ItkdError) as err:
        check_training_classes(tiny_recipe(world, *WAYMO))
    assert "dataset.class_names: none of its classes (Vehicle, Pedestrian, Cyclist) occurs in split 'tiny_train'" \
        in err.value.message
    assert "whose boxes are: animal 2, car 2, pedestrian 2" in err.value.message
    out = tmp_path / "run"
    result = cli("train", "--recipe", "synth-pillar", "--out", out, *[a for s in sets for a in ("--set", s)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(_errors(result)) == 1 and "(Vehicle, Pedestrian, Cyclist)" in _errors(result)[0]
    assert "car 2, pedestrian 2" in _errors(result)[0] and not (out / "last.pth").exists()


def test_some_recipe_classes_absent_warn_with_counts_and_training_goes_on(world, tmp_path, monkeypatch):
    import itkd_cli.train.train as train_mod

    recipe = tiny_recipe(world)  # ten nuScenes classes; the tiny world holds a car and a pedestrian
    warnings = check_training_classes(recipe)
    assert len(warnings) == 1 and "for 8 of 10 classes (truck, construction_vehicle, bus" in warnings[0]
    assert warnings[0].endswith("training goes on with car 2, pedestrian 2")
    fitted, logged = [], []
    monkeypatch.setattr(train_mod, "fit", lambda *a, **k: fitted.append(1) or SimpleNamespace(last=tmp_path / "x"))
    train_mod.train(recipe, tmp_path / "run", quiet=True, log=logged.append)
    assert fitted == [1] and logged == [f"warning: {warnings[0]}"]


def test_compress_against_data_without_the_teachers_classes_fails_before_any_step(world, tmp_path, monkeypatch, cli):
    """Issue #44: a teacher of nuScenes classes on data labelled Vehicle/Pedestrian trained on zero boxes."""
    import torch

    import itkd_cli.pipeline.compress as compress_mod
    from itkd_cli.models.build import build_model
    from itkd_cli.models.checkpoint import save_checkpoint

    recipe = tiny_recipe(world)
    torch.manual_seed(0)
    teacher = save_checkpoint(tmp_path / "teacher.pth", build_model(recipe.model), recipe, "teacher")
    table = world / VERSION / "category.json"
    rows = json.loads(table.read_text())
    for row, name in zip(rows, ("Vehicle", "Pedestrian")):
        row["name"] = name
    table.write_text(json.dumps(rows))

    def no_training(*args, **kwargs):
        raise AssertionError("a training step ran")

    monkeypatch.setattr(compress_mod, "fit", no_training)
    out = tmp_path / "c"
    result = cli("compress", "--teacher", teacher, "--out", out, "--set", "train.max_steps=1")
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = _errors(result)
    assert len(errors) == 1 and f"teacher {teacher}: none of its classes (car, truck," in errors[0]
    assert "whose boxes are: Pedestrian 2, Vehicle 2, animal 2" in errors[0]
    assert not (out / "train" / "last.pth").exists()
