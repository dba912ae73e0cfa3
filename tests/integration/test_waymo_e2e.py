"""The whole Waymo path as a user runs it, on CPU: the synthetic world written as Waymo segments (TFRecords
with range images, built in the Waymo venv) -> `itkd data prepare --dataset waymo` -> a tiny teacher trained
with `itkd train` -> `itkd compress` to a 1/4 student scored with the official Waymo metrics -> ONNX verified
in onnxruntime -> `itkd eval --dataset waymo` on the converted root and on the TFRecords themselves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


pytestmark = pytest.mark.slow

# synth-pillar-waymo shrunken to 64 x 64 pillars and narrow layers so that every step stays cheap on CPU.
TINY = ("model.grid.point_range=[-20.48, -20.48, -2.0, 20.48, 20.48, 4.0]", "model.vfe.filters=[16]",
        "model.backbone_2d.num_filters=[16, 16, 16]", "model.backbone_2d.num_upsample_filters=[16, 16, 16]",
        "model.head.shared_conv_channels=8", "model.head.head_conv_channels=8", "dataset.workers=0",
        "train.batch_size=2")
CLASSES = ["Vehicle", "Pedestrian", "Cyclist"]
LEVELS = ("mAP_L1", "mAPH_L1", "mAP_L2", "mAPH_L2")


def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="module")
def run(waymo_python, tmp_path_factory):
    """Invoke `itkd ARGS --json` in-process; returns the parsed JSON (the exit code must be 0)."""
    from typer.testing import CliRunner

    from itkd_cli.cli.main import app

    def invoke(*args: str) -> dict:
        result = CliRunner().invoke(app, ["--quiet", *map(str, args), "--json"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    return invoke


@pytest.fixture(scope="module")
def converted(run, tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("waymo")
    raw, root = base / "raw", base / "root"
    synth = run("data", "synth", "--format", "waymo", "--preset", "small", "--out", raw)
    assert synth["splits"] == {"training": 1, "validation": 1} and synth["annotations"] > 0
    assert sorted(p.name for p in (raw / "training").iterdir()) == ["segment-synth-0-0001.tfrecord"]
    prepared = run("data", "prepare", "--dataset", "waymo", "--src", raw, "--out", root)
    assert prepared["splits"]["train"] == {"segments": 1, "frames": synth["waymo_frames"] // 2}
    assert run("data", "prepare", "--dataset", "waymo", "--src", raw, "--out", root)["skipped"] == 2  # resumable
    return raw, root


@pytest.fixture(scope="module")
def compressed(run, converted, tmp_path_factory) -> Path:
    _, root = converted
    base = tmp_path_factory.mktemp("runs")
    run("train", "--recipe", "synth-pillar-waymo", "--out", base / "teacher", "--no-eval",
        *_sets(f"dataset.root={root}", "train.max_steps=4", *TINY))
    run("compress", "--teacher", base / "teacher" / "last.pth", "--ratio", "0.25", "--out", base / "compress",
        *_sets("train.max_steps=2"))
    return base / "compress"


def test_compress_reports_official_waymo_metrics_for_both(compressed: Path) -> None:
    report = json.loads((compressed / "report.json").read_text())
    for side in ("teacher", "student"):
        metrics = report[side]
        assert metrics["dataset"] == "waymo" and metrics["split"] == "val"
        assert all(0.0 <= metrics[k] <= 1.0 for k in LEVELS) and sorted(metrics["per_class"]) == sorted(CLASSES)
        assert metrics["ground_truths"] > 0 and metrics["frames"] > 0
    assert report["student"]["params"] < report["teacher"]["params"]
    md = (compressed / "report.md").read_text()
    assert "mAPH (LEVEL_2)" in md and "official Waymo detection metrics" in md and "NDS" not in md


def test_student_exports_and_verifies(run, compressed: Path, tmp_path: Path) -> None:
    out = run("export", "--onnx", "--checkpoint", compressed / "student.pth", "--out", tmp_path / "onnx")
    assert out["verified"] is True and Path(out["onnx"]).is_file()


def test_eval_of_the_converted_root_and_of_the_tfrecords_agree(run, converted, compressed: Path,
                                                              tmp_path: Path) -> None:
    """The same student on the same frames, read once from the converted root and once straight from the
    segments' range images: the same points, so the same official metrics as compress reported."""
    raw, _ = converted
    student = compressed / "student.pth"
    reported = json.loads((compressed / "report.json").read_text())["student"]
    on_root = run("eval", "--dataset", "waymo", "--checkpoint", student, "--out", tmp_path / "root")
    on_records = run("eval", "--dataset", "waymo", "--checkpoint", student, "--data-root", raw / "validation",
                     "--out", tmp_path / "records")
    for key in LEVELS:
        assert on_root[key] == pytest.approx(reported[key], abs=1e-6)
        assert on_records[key] == pytest.approx(reported[key], abs=1e-6)
    assert on_root["predictions"] == on_records["predictions"] == reported["predictions"]
