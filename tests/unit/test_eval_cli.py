"""`itkd eval` user errors: one line, exit 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from itkd_cli.recipe import load_recipe


def _run(*args: str):
    from typer.testing import CliRunner

    from itkd_cli.cli.main import app

    return CliRunner().invoke(app, ["eval", *args])


def test_waymo_without_its_venv_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ITKD_WAYMO_PYTHON", str(tmp_path / "no-venv" / "python"))
    (tmp_path / "p.bin").write_bytes(b"")
    res = _run("--dataset", "waymo", "--predictions", str(tmp_path / "p.bin"), "--ground-truth", str(tmp_path / "p.bin"),
               "--out", str(tmp_path / "ev"))
    assert res.exit_code == 2
    assert "no Waymo environment at" in res.output and "make waymo-env" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "ev" / "metrics.json").exists()


def test_waymo_needs_a_checkpoint_or_objects_files() -> None:
    res = _run("--dataset", "waymo")
    assert res.exit_code == 2 and "--checkpoint: required (or --predictions" in res.output


def test_objects_files_are_waymo_only(tmp_path: Path) -> None:
    res = _run("--predictions", str(tmp_path / "p.bin"), "--ground-truth", str(tmp_path / "g.bin"))
    assert res.exit_code == 2 and "used with --dataset waymo" in res.output


def test_unknown_dataset(tmp_path: Path) -> None:
    res = _run("--dataset", "kitti", "--checkpoint", str(tmp_path / "x.pth"))
    assert res.exit_code == 2 and "expected one of nuscenes, waymo" in res.output


def test_missing_checkpoint(tmp_path: Path) -> None:
    res = _run("--checkpoint", str(tmp_path / "missing.pth"))
    assert res.exit_code == 2
    assert "missing.pth: checkpoint not found" in res.output and "Traceback" not in res.output


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    from itkd_cli.models.build import build_model
    from itkd_cli.models.checkpoint import save_checkpoint

    recipe = load_recipe("synth-pillar", [f"dataset.root={tmp_path / 'nowhere'}"])
    return save_checkpoint(tmp_path / "ckpt.pth", build_model(recipe.model), recipe, "teacher")


def test_missing_dataset(tmp_path: Path, checkpoint: Path) -> None:
    res = _run("--checkpoint", str(checkpoint), "--data-root", str(tmp_path / "absent"), "--out", str(tmp_path / "ev"))
    assert res.exit_code == 2
    assert "absent/v1.0-synth" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_builtin_split_on_custom_version(tmp_path: Path, checkpoint: Path) -> None:
    """'val' is a built-in devkit split that only exists for *trainval versions."""
    from itkd_cli.evaluate.nuscenes_eval import check_split

    class FakeNusc:
        dataroot, version = str(tmp_path), "v1.0-synth"

    from itkd_cli.core.errors import ItkdError

    with pytest.raises(ItkdError, match="only valid for a \\*trainval version"):
        check_split(FakeNusc(), "val")
    with pytest.raises(ItkdError, match="not found"):
        check_split(FakeNusc(), "synth_val")


def test_waymo_objects_file_missing(tmp_path: Path) -> None:
    res = _run("--dataset", "waymo", "--predictions", str(tmp_path / "p.bin"), "--ground-truth",
               str(tmp_path / "g.bin"), "--out", str(tmp_path / "ev"))
    assert res.exit_code == 2 and "p.bin: file not found" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "ev").exists()


def test_waymo_rejects_a_checkpoint_of_other_classes(tmp_path: Path, checkpoint: Path) -> None:
    res = _run("--dataset", "waymo", "--checkpoint", str(checkpoint), "--data-root", str(tmp_path))
    assert res.exit_code == 2 and "dataset.class_names: 'car'" in res.output and "not a Waymo object type" in res.output


def test_waymo_data_root_without_tfrecords(tmp_path: Path) -> None:
    from itkd_cli.core.errors import ItkdError
    from itkd_cli.data.waymo import tfrecord_files

    with pytest.raises(ItkdError, match="folder holds no .tfrecord file"):
        tfrecord_files(tmp_path)
    (tmp_path / "a.tfrecord").write_bytes(b"")
    assert tfrecord_files(tmp_path) == [tmp_path / "a.tfrecord"]
