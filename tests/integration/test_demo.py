"""The README's main job, reduced: `itkd demo` on the small world writes every artifact and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from typer.testing import CliRunner

    from itkd_cli.cli.main import app

    out = tmp_path_factory.mktemp("demo") / "run"
    args = ["demo", "--out", str(out), "--preset", "small", "--teacher-epochs", "1", "--student-epochs", "1",
            "--set", "train.batch_size=2", "--set", "dataset.workers=0"]
    runner = CliRunner()
    first = runner.invoke(app, args, catch_exceptions=False)
    return out, first, runner, args


def test_demo_writes_every_artifact(demo_run) -> None:
    out, result, _, _ = demo_run
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "demo.json").read_text())
    paths = {k: Path(v) for k, v in summary["paths"].items()}
    for name, path in paths.items():
        assert path.exists(), f"{name}: {path} missing"
    student = torch.load(paths["student"], weights_only=True, map_location="cpu")
    assert student["role"] == "student" and student["format"] == "itkd"
    onnx.checker.check_model(str(paths["onnx"]))
    report = json.loads((paths["report"].with_suffix(".json")).read_text())
    assert report["student"]["params"] < report["teacher"]["params"]
    for side in ("teacher", "student"):
        for key in ("params", "gmacs", "torch_ms", "onnxruntime_ms", "mAP", "NDS"):
            assert summary[side][key] is not None, f"{side}.{key}"
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]"):
        assert step in result.output  # each step announces its stand-alone command
    assert "itkd compress --recipe synth-pillar-itkd-1-4 --teacher" in result.output
    # a 1-epoch teacher on the small world learns nothing: the demo says so instead of a silent table of zeros
    assert summary["teacher"]["mAP"] < 0.05
    assert len(summary["notes"]) == 1 and "preset 'small' is a smoke test" in summary["notes"][0]
    assert "note: the teacher scored mAP" in result.output


def test_demo_rerun_reuses_finished_steps(demo_run) -> None:
    out, _, runner, args = demo_run
    from itkd_cli.cli.main import app

    before = (out / "student" / "student.pth").stat().st_mtime_ns
    again = runner.invoke(app, args, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert "reusing the finished teacher" in again.output
    assert "reusing the finished student" in again.output
    assert (out / "student" / "student.pth").stat().st_mtime_ns == before


def test_demo_rerun_with_another_schedule_redoes_the_steps_it_changes(demo_run) -> None:
    """Reuse is keyed on inputs: a new teacher schedule retrains the teacher (the old one moved aside, not
    resumed against the wrong schedule), and so redoes the student and both exports made from the old one."""
    out, _, runner, args = demo_run
    from itkd_cli.cli.main import app

    old_teacher = (out / "teacher" / "last.pth").read_bytes()
    changed = [a if a != "1" or args[i - 1] != "--teacher-epochs" else "2" for i, a in enumerate(args)]
    again = runner.invoke(app, changed, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    text = " ".join(again.output.split())  # rich wraps long lines
    assert "the teacher in" in text and "made from other inputs (recipe_sha256)" in text
    assert "the student in" in text and "teacher_sha256)" in text
    assert "reusing the finished" not in text
    asides = sorted(p.name for p in out.iterdir() if ".replaced-" in p.name)
    assert [n.split(".replaced-")[0] for n in asides] == ["export", "export_teacher", "student", "teacher"]
    aside_teacher = next(out.glob("teacher.replaced-*")) / "last.pth"
    assert aside_teacher.read_bytes() == old_teacher  # nothing lost
    summary = json.loads((out / "demo.json").read_text())
    assert torch.load(summary["paths"]["teacher"], weights_only=True)["epoch"] == 2
