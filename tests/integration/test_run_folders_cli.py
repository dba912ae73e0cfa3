"""Every command that writes owns its output: an existing run is refused (exit 2, nothing changed) unless
--resume or --force, a locked folder is refused, eval's default folder cannot collide with compress's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from itkd_cli.cli.compress_cmd import resume_command
from itkd_cli.cli.eval_cmd import default_out
from itkd_cli.core.run_dir import LOCK


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def finished_train(tmp_path) -> Path:
    run = tmp_path / "teacher"
    (run / "tb").mkdir(parents=True)
    (run / "last.pth").write_bytes(b"finished weights")
    (run / "metrics.jsonl").write_text('{"step": 50}\n')
    (run / "tb" / "events.out.tfevents.1").write_bytes(b"old events")
    return run


def test_train_refuses_a_folder_holding_a_run(cli, finished_train):
    before = _snapshot(finished_train)
    result = cli("train", "--out", finished_train, "--set", "train.epochs=1")
    assert result.exit_code == 2
    (line,) = _errors(result.output)
    assert "already holds a run (last.pth, metrics.jsonl, tb); nothing was changed" in line
    assert "--resume" in result.output and "--force" in result.output
    assert _snapshot(finished_train) == before  # no replaced last.pth, no new events mixed with the old


def test_train_force_moves_the_old_run_aside_and_never_mixes(cli, finished_train, tmp_path):
    before = _snapshot(finished_train)
    result = cli("train", "--out", finished_train, "--force", "--set", f"dataset.root={tmp_path / 'no-data'}")
    assert result.exit_code == 2 and "not found (nothing to train on)" in result.output
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("teacher.replaced-")]
    assert _snapshot(aside) == before
    assert not finished_train.exists()  # the new run failed before writing anything: no empty folder left


def test_compress_refuses_an_existing_run_before_reading_the_teacher(cli, tmp_path):
    out = tmp_path / "c25"
    out.mkdir()
    (out / "report.json").write_text("{}")
    teacher = tmp_path / "teacher.pth"
    teacher.write_bytes(b"not read: the refusal comes first")
    result = cli("compress", "--teacher", teacher, "--out", out, "--json")
    assert result.exit_code == 2
    (line,) = _errors(result.output)
    assert "c25: already holds a run (report.json)" in line
    assert json.loads(result.stdout)["exit_code"] == 2


def test_a_locked_folder_is_refused_while_its_owner_lives(cli, tmp_path):
    out = tmp_path / "c25"
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out.mkdir()
        (out / LOCK).write_text(json.dumps({"pid": owner.pid, "host": socket.gethostname(),
                                            "command": "itkd compress", "started": "now"}))
        teacher = tmp_path / "teacher.pth"
        teacher.write_bytes(b"x")
        result = cli("compress", "--teacher", teacher, "--out", out)
        assert result.exit_code == 2
        assert f"in use by a running `itkd compress` (pid {owner.pid}" in _errors(result.output)[0]
    finally:
        owner.kill()
        owner.wait()


def test_eval_default_folder_cannot_collide_with_compress_or_train():
    student = Path("runs/c25/student.pth")
    assert default_out(student, "synth_val") == Path("runs/c25/student_eval_synth_val")
    taken = {"eval_student", "eval_teacher", "eval", "train"}  # compress's and train's own folders
    assert default_out(student, "synth_val").name not in taken
    assert default_out(Path("runs/t/last.pth"), "waymo").name == "last_eval_waymo"


def test_eval_refuses_an_existing_evaluation(cli, tiny_checkpoint, tmp_path):
    out = tmp_path / "ev"
    out.mkdir()
    (out / "metrics.json").write_text('{"mAP": 0.5}')
    result = cli("eval", "-c", tiny_checkpoint, "--out", out)
    assert result.exit_code == 2 and "ev: already holds a run (metrics.json)" in _errors(result.output)[0]
    assert "--resume" not in result.output and (out / "metrics.json").read_text() == '{"mAP": 0.5}'


def test_export_refuses_to_replace_an_onnx_without_force(cli, tmp_path):
    checkpoint = tmp_path / "student.pth"
    checkpoint.write_bytes(b"x")
    (tmp_path / "student.onnx").write_bytes(b"verified earlier")
    result = cli("export", "--onnx", "-c", checkpoint)
    assert result.exit_code == 2
    assert "student.onnx: already exists; nothing was changed" in _errors(result.output)[0]
    assert (tmp_path / "student.onnx").read_bytes() == b"verified earlier"


def test_compress_resume_command_repeats_the_flags():
    cmd = resume_command(Path("t.pth"), Path("runs/c 25"), "synth-pillar-itkd-1-4", 0.25, None, "itkd", None,
                         ["train.epochs=2"])
    assert cmd == ("itkd compress --teacher t.pth --out 'runs/c 25' --recipe synth-pillar-itkd-1-4 --ratio 0.25 "
                   "--method itkd --set train.epochs=2 --resume")
    from itkd_cli.recipe.schema import GatesConfig

    gated = resume_command(Path("t.pth"), Path("r"), None, None, None, None, 3, [], GatesConfig(min_map=0.3, max_params=9))
    assert gated == "itkd compress --teacher t.pth --out r --max-eval-frames 3 --min-map 0.3 --max-params 9 --resume"


@pytest.fixture()
def tiny_checkpoint(tmp_path) -> Path:
    from itkd_cli.models.build import build_model
    from itkd_cli.models.checkpoint import save_checkpoint
    from itkd_cli.recipe.load import load_recipe

    recipe = load_recipe("synth-pillar", [f"dataset.root={tmp_path / 'data'}", "model.vfe.filters=[8]",
                                          "model.backbone_2d.num_filters=[8, 8, 8]",
                                          "model.backbone_2d.num_upsample_filters=[8, 8, 8]"])
    return save_checkpoint(tmp_path / "ckpt" / "teacher.pth", build_model(recipe.model), recipe, "teacher")


def test_no_lock_is_left_behind_by_a_refused_or_failed_run(cli, finished_train):
    cli("train", "--out", finished_train)
    assert not (finished_train / LOCK).exists()
    assert os.listdir(finished_train)  # untouched
